package packagetest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
)

// installedBinary is where the packages put the daemon.
const installedBinary = "/usr/sbin/lmtpgate"

// requirePackageTest skips unless packaging/package-test.sh asked for the
// tests that need the installed package and a real Cyrus, and then fails
// (never skips) if what they need is missing.
func requirePackageTest(t *testing.T) {
	t.Helper()
	if os.Getenv("LMTPGATE_PACKAGE_TEST") != "1" {
		t.Skip("set LMTPGATE_PACKAGE_TEST=1 (packaging/package-test.sh does) to test the installed package")
	}
	if _, err := os.Stat(installedBinary); err != nil {
		t.Fatalf("package not installed: %v", err)
	}
}

// TestInstalledVersion checks that the installed binary carries the version
// the package was built with (build.sh stamps it with -X main.version).
func TestInstalledVersion(t *testing.T) {
	requirePackageTest(t)
	want := os.Getenv("LMTPGATE_PACKAGE_VERSION")
	if want == "" {
		t.Fatal("LMTPGATE_PACKAGE_VERSION not set")
	}
	out, err := exec.Command(installedBinary, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("lmtpgate version: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), want) {
		t.Errorf("lmtpgate version printed %q, want it to contain %q", out, want)
	}
}

// TestInstalledDelivers runs the installed binary against a real murder:
// one message to alice, routed through the frontend's mailboxes.db, must
// arrive in her INBOX on backend 1.
func TestInstalledDelivers(t *testing.T) {
	requirePackageTest(t)
	if err := murderlab.Available(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	dir := t.TempDir()
	lab, err := murderlab.Start(ctx, murderlab.Options{Dir: filepath.Join(dir, "lab")})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := lab.Close(); err != nil {
			t.Errorf("lab close: %v", err)
		}
	}()
	if err := lab.CreateMailbox(ctx, 1, "user/alice", nil); err != nil {
		t.Fatal(err)
	}
	if err := lab.WaitFrontend(ctx, "user.alice", true); err != nil {
		t.Fatal(err)
	}

	addr := freeLoopbackAddr(t)
	cr := lab.Creds()
	cfg := filepath.Join(dir, "lmtpgate.yaml")
	conf := fmt.Sprintf(`imapd_conf: %s
listen: ["tcp:%s"]
state_dir: %s
control_socket: %s
log:
  format: text
  level: debug
lookup:
  order: [mailboxes-db]
  mailboxes_db: %s
backends:
  authname: %s
  password: %s
  addresses: {%q: %q}
`, lab.FrontendImapdConf(), addr, dir, filepath.Join(dir, "control.sock"),
		lab.FrontendMailboxesDB(), cr.Proxy, cr.ProxyPassword,
		lab.BackendServer(1), lab.BackendLMTPAddr(1))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}

	if out, err := exec.CommandContext(ctx, installedBinary, "check", "-c", cfg).CombinedOutput(); err != nil {
		t.Fatalf("lmtpgate check: %v\n%s", err, out)
	}

	var logs bytes.Buffer
	cmd := exec.Command(installedBinary, "serve", "-c", cfg)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("lmtpgate log:\n%s", logs.String())
		}
	}()

	conn := dialUntil(ctx, t, addr, done)
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	if err := c.Hello("package-test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("sender@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("alice@example.org", nil); err != nil {
		t.Fatalf("RCPT alice: %v", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	msgid := fmt.Sprintf("<package-test-%d@example.org>", time.Now().UnixNano())
	fmt.Fprintf(w, "From: sender@example.org\r\nTo: alice@example.org\r\nSubject: package test\r\nMessage-ID: %s\r\n\r\nhello\r\n", msgid)
	resp, err := w.CloseWithLMTPResponse()
	if err != nil {
		t.Fatalf("DATA: %v (%v)", err, resp)
	}
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}

	// 250 means the backend has it; read it back to be sure it is the one.
	msgs, err := lab.Messages(ctx, 1, "user/alice")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range msgs {
		if m.MessageID == msgid {
			found = true
		}
	}
	if !found {
		t.Fatalf("message %s not in user/alice on backend 1 (%d messages there)", msgid, len(msgs))
	}
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// dialUntil connects to the daemon once it listens, failing early if it
// exits first.
func dialUntil(ctx context.Context, t *testing.T, addr string, exited <-chan error) net.Conn {
	t.Helper()
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return conn
		}
		select {
		case err := <-exited:
			t.Fatalf("lmtpgate exited before listening: %v", err)
		case <-ctx.Done():
			t.Fatalf("lmtpgate never listened on %s: %v", addr, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
