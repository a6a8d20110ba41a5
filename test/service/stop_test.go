package service

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/systemdtest"
	"github.com/lmtpgate/lmtpgate/internal/testbin"
)

// waitExit waits for the daemon to exit and returns its exit code.
func waitExit(t *testing.T, d *testbin.Daemon) int {
	t.Helper()
	select {
	case <-d.Done():
	case <-ctx(t).Done():
		t.Fatal("lmtpgate did not exit after SIGTERM")
	}
	return d.Cmd.ProcessState.ExitCode()
}

// TestGracefulStop sends SIGTERM while a delivery hangs in the backend's
// DATA: after shutdown_timeout the MTA must get a temporary failure (or
// lose the connection) — never 250 — and the daemon exits 0 having sent
// STOPPING=1. An idle daemon, with an MTA session open between
// transactions, stops without waiting for shutdown_timeout (10 minutes
// here, so waiting for it would hang the test).
func TestGracefulStop(t *testing.T) {
	f := newFakes(t)

	t.Run("stalled backend", func(t *testing.T) {
		nl := systemdtest.ListenNotify(t, t.TempDir())
		d := testbin.Start(t, f.config("order: [master-mupdate]", "shutdown_timeout: 1s"), env("NOTIFY_SOCKET="+nl.Path())...)
		f.be1.StallData(true)
		defer f.be1.StallData(false)
		type result struct {
			data map[string]string
			err  error
		}
		res := make(chan result, 1)
		go func() {
			_, dr, err := txn("tcp", d.LMTP, []string{"alice@example.org"}, "stalled")
			res <- result{dr, err}
		}()
		for len(f.be1.Messages()) == 0 {
			select {
			case r := <-res:
				t.Fatalf("transaction ended before the backend stalled: %v %v", r.data, r.err)
			case <-ctx(t).Done():
				t.Fatal("the backend never got the message")
			case <-time.After(20 * time.Millisecond):
			}
		}
		if err := d.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		var r result
		select {
		case r = <-res:
		case <-ctx(t).Done():
			t.Fatal("the MTA got no answer and no close")
		}
		rep, ok := r.data["alice@example.org"]
		switch {
		case ok && strings.HasPrefix(rep, "4"):
		case !ok && r.err != nil:
			t.Logf("connection closed without a reply: %v", r.err)
		default:
			t.Errorf("stalled delivery answered %q (present %v, err %v); want 4xx or no reply", rep, ok, r.err)
		}
		if code := waitExit(t, d); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
		if kinds(nl.All()) != "READY STOPPING" {
			t.Errorf("notifications %q, want READY STOPPING", kinds(nl.All()))
		}
	})

	t.Run("idle", func(t *testing.T) {
		nl := systemdtest.ListenNotify(t, t.TempDir())
		d := testbin.Start(t, f.config("order: [master-mupdate]", "shutdown_timeout: 40s"), env("NOTIFY_SOCKET="+nl.Path())...)
		mustDeliver(t, "tcp", d.LMTP, "alice@example.org")
		conn, err := net.Dial("tcp", d.LMTP)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c := smtp.NewClientLMTP(conn)
		if err := c.Hello("mta.test"); err != nil {
			t.Fatal(err)
		}
		if err := d.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := waitExit(t, d); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
		if err := c.Noop(); err == nil {
			t.Error("the idle session still answers after the daemon exited")
		}
		if kinds(nl.All()) != "READY STOPPING" {
			t.Errorf("notifications %q, want READY STOPPING", kinds(nl.All()))
		}
	})
}

// TestJournal runs the daemon with log.format: journal against a stand-in
// for journald's socket: a delivery and a rejected recipient are entries
// with the LMTPGATE_* fields operators match on, and a rejected reload is
// logged at PRIORITY=3 (err).
func TestJournal(t *testing.T) {
	f := newFakes(t)
	jl := systemdtest.ListenJournal(t, t.TempDir())
	d := testbin.Start(t, f.config("order: [master-mupdate]", "log: {level: info, format: journal}"),
		env("LMTPGATE_JOURNAL_SOCKET="+jl.Path())...)

	rr, dr, err := txn("tcp", d.LMTP, []string{"alice@example.org", "nosuch@example.org"}, "journal")
	if err != nil || rr["alice@example.org"] != "" || dr["alice@example.org"] != "" || rr["nosuch@example.org"] != "550 5.1.1" {
		t.Fatalf("transaction: %v, RCPT %v, DATA %v", err, rr, dr)
	}
	byRcpt := func(rcpt string) func(map[string]string) bool {
		return func(e map[string]string) bool { return e["LMTPGATE_RCPT"] == rcpt }
	}
	// The 550 is logged at RCPT time, before the delivery.
	rej, err := jl.WaitFor(ctx(t), byRcpt("nosuch@example.org"))
	if err != nil {
		t.Fatalf("no journal entry for the rejected recipient: %v", err)
	}
	if rej["LMTPGATE_CODE"] != "550" || rej["PRIORITY"] != "6" || !strings.HasPrefix(rej["MESSAGE"], "rejected") {
		t.Errorf("rejected recipient's entry: %v", rej)
	}
	e, err := jl.WaitFor(ctx(t), byRcpt("alice@example.org"))
	if err != nil {
		t.Fatalf("no journal entry for the delivery: %v", err)
	}
	want := map[string]string{
		"MESSAGE": "delivered alice@example.org → user.alice on be1", "PRIORITY": "6", "LMTPGATE_RCPT": "alice@example.org",
		"LMTPGATE_MAILBOX": "user.alice", "LMTPGATE_BACKEND": "be1", "LMTPGATE_SOURCE": "master-mupdate",
		"LMTPGATE_CODE": "250", "SYSLOG_IDENTIFIER": "lmtpgate",
	}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("delivery entry %s=%q, want %q", k, e[k], v)
		}
	}
	for _, k := range []string{"LMTPGATE_SESSION", "LMTPGATE_DURATION_MS"} {
		if e[k] == "" {
			t.Errorf("delivery entry lacks %s: %v", k, e)
		}
	}
	if e["LMTPGATE_SESSION"] != rej["LMTPGATE_SESSION"] {
		t.Errorf("one session, two LMTPGATE_SESSION values: %q, %q", e["LMTPGATE_SESSION"], rej["LMTPGATE_SESSION"])
	}

	good, err := os.ReadFile(d.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.Config, append(good, "bogus_key: 1\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := d.Run(t, "reload"); code == 0 || !strings.Contains(out, "bogus_key") {
		t.Errorf("reload of a broken file: exit %d\n%s", code, out)
	}
	wctx, cancel := context.WithTimeout(ctx(t), 5*time.Second)
	defer cancel()
	re, err := jl.WaitFor(wctx, func(e map[string]string) bool { return strings.HasPrefix(e["MESSAGE"], "reload rejected") })
	if err != nil {
		t.Fatalf("no journal entry for the rejected reload: %v\n%v", err, jl.Entries())
	}
	if re["PRIORITY"] != "3" || !strings.Contains(re["LMTPGATE_ERROR"], "bogus_key") {
		t.Errorf("rejected reload entry: %v", re)
	}
	if out := d.Output(); out != "" {
		t.Errorf("with journald taking every entry, stderr should stay empty:\n%s", out)
	}
}

// TestUnitsVerifyWithBinary runs packaging/verify-units.sh on the
// repository's units with the real binary at ExecStart=: systemd-analyze
// verify and an exposure score of at most 2.0.
func TestUnitsVerifyWithBinary(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed")
	}
	script := filepath.Join("..", "..", "packaging", "verify-units.sh")
	if _, err := os.Stat(script); err != nil {
		t.Skip("packaging/verify-units.sh not present")
	}
	cmd := exec.Command(script)
	cmd.Env = append(os.Environ(), "LMTPGATE_BIN="+testbin.Build(t))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("verify-units.sh: %v\n%s", err, out)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "exposure") {
			t.Log(sc.Text())
		}
	}
}
