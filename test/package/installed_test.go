package packagetest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
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

// TestInstalledDelivers runs the installed binary against a real murder
// the way lmtpgate.service runs it: as user cyrus, group mail, with its
// control socket in a cyrus-owned runtime directory that still holds a
// stale socket from an earlier run. One message to alice, routed through
// the frontend's mailboxes.db (mode 0600, owner cyrus), must arrive in her
// INBOX on backend 1; the control socket must be the daemon's, mode 0600;
// `lmtpgate reload` as cyrus (ExecReload=) and `lmtpgate status` as root
// must reach it.
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

	cy, err := user.Lookup("cyrus")
	if err != nil {
		t.Fatal(err)
	}
	mail, err := user.LookupGroup("mail")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(cy.Uid)
	gid, _ := strconv.Atoi(mail.Gid)
	// The installed binary runs here as the service's user but outside
	// systemd, with the lab in a temporary directory: the installed unit's
	// sandbox (PrivateTmp= would hide the lab) does not apply to it, so
	// `check` is told there is no unit. The sandbox itself is proven by
	// the real-systemd suite (test/systemd).
	asCyrus := func(cmd *exec.Cmd) *exec.Cmd {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
		cmd.Env = append(os.Environ(), "LMTPGATE_UNIT=")
		return cmd
	}
	// RuntimeDirectory= and StateDirectory=: owned by the service's user.
	// dir itself was made searchable for cyrus by the lab.
	runDir, stateDir := filepath.Join(dir, "run"), filepath.Join(dir, "state")
	for _, d := range []string{runDir, stateDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	ctlPath := filepath.Join(runDir, "control.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: ctlPath, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if err := os.Chown(ctlPath, uid, gid); err != nil {
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
`, lab.FrontendImapdConf(), addr, stateDir, ctlPath,
		lab.FrontendMailboxesDB(), cr.Proxy, cr.ProxyPassword,
		lab.BackendServer(1), lab.BackendLMTPAddr(1))
	// As the package installs lmtpgate.yaml: 0640 root:mail.
	if err := os.WriteFile(cfg, []byte(conf), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(cfg, 0, gid); err != nil {
		t.Fatal(err)
	}

	if out, err := asCyrus(exec.CommandContext(ctx, installedBinary, "check", "-c", cfg)).CombinedOutput(); err != nil {
		t.Fatalf("lmtpgate check as cyrus: %v\n%s", err, out)
	}

	var logs bytes.Buffer
	cmd := asCyrus(exec.Command(installedBinary, "serve", "-c", cfg))
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

	// The daemon replaced the stale control socket by its own.
	fi, err := os.Stat(ctlPath)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 || int(st.Uid) != uid {
		t.Errorf("control socket %s: mode %v owner %d, want a socket 0600 owned by cyrus (%d)", ctlPath, fi.Mode(), st.Uid, uid)
	}
	// ExecReload= runs as the unit's user; MAINPID is left unset so that a
	// missing control socket fails instead of falling back to SIGHUP.
	reload := asCyrus(exec.CommandContext(ctx, installedBinary, "reload", "-c", cfg))
	reload.Env = []string{"PATH=/usr/bin:/bin"}
	if out, err := reload.CombinedOutput(); err != nil || !strings.Contains(string(out), "reloaded") {
		t.Errorf("lmtpgate reload as cyrus: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, installedBinary, "status", "-c", cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "recipients: 1 delivered") || !strings.Contains(string(out), "last reload:") {
		t.Errorf("lmtpgate status as root: %v\n%s", err, out)
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
