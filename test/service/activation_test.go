package service

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/sys/unix"

	"github.com/lmtpgate/lmtpgate/internal/systemdtest"
	"github.com/lmtpgate/lmtpgate/internal/testbin"
)

func monotonicUsec(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}

// TestSocketActivation starts lmtpgate the way lmtpgate.socket does, with
// a unix socket named "lmtp" and a TCP socket named "lmtp-tcp", and the
// watchdog on. It checks what systemd sees over the daemon's life — READY,
// periodic STATUS, RELOADING with MONOTONIC_USEC then READY around a
// SIGHUP, STOPPING on SIGTERM, in that order, with WATCHDOG=1 throughout —
// that mail is delivered over both passed sockets before and after the
// reload (they are never closed or re-bound), and that the configured
// listen address is not bound.
func TestSocketActivation(t *testing.T) {
	bin := testbin.Build(t)
	f := newFakes(t)
	dir := shortDir(t)

	unixPath := filepath.Join(dir, "lmtp.sock")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: unixPath, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tcpAddr := tl.Addr().String()
	uf, err := ul.File()
	if err != nil {
		t.Fatal(err)
	}
	tf, err := tl.File()
	if err != nil {
		t.Fatal(err)
	}

	// listen: names a free port; socket activation must leave it alone.
	notBound := testbin.FreePort(t, "127.0.0.1")
	cfgPath := filepath.Join(dir, "lmtpgate.yaml")
	cfg := "listen: [\"tcp:" + notBound + "\"]\ncontrol_socket: " + filepath.Join(dir, "control.sock") +
		"\nstate_dir: " + dir + "\n" + f.config("order: [master-mupdate]", "")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	nl := systemdtest.ListenNotify(t, dir)
	cmd := exec.Command(bin, "serve", "-c", cfgPath)
	// WATCHDOG_PID is left unset, as systemd 252 does for the main process.
	cmd.Env = env("NOTIFY_SOCKET="+nl.Path(), "WATCHDOG_USEC=200000")
	out := &lockedWriter{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := systemdtest.StartActivated(t, cmd, []*os.File{uf, tf}, []string{"lmtp", "lmtp-tcp"}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if t.Failed() {
			t.Logf("lmtpgate output:\n%s", out.String())
		}
	}()
	// From now on only the daemon holds the sockets: a reload that closed
	// them would make every later connection fail.
	uf.Close()
	tf.Close()
	ul.SetUnlinkOnClose(false)
	ul.Close()
	tl.Close()

	ready, err := nl.WaitFor(ctx(t), "READY", "1")
	if err != nil {
		t.Fatalf("no READY=1: %v", err)
	}
	if !strings.HasPrefix(ready["STATUS"], "mode master; master-mupdate ok") {
		t.Errorf("READY's STATUS=%q, want the routing state", ready["STATUS"])
	}
	// The log comes through a pipe and may trail the READY datagram.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "socket_activated=true") && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if l := out.String(); !strings.Contains(l, "socket_activated=true") {
		t.Errorf("start-up log does not say socket_activated=true:\n%s", l)
	}

	t.Run("listen not bound", func(t *testing.T) {
		l, err := net.Listen("tcp", notBound)
		if err != nil {
			t.Fatalf("configured listen address %s is in use under socket activation: %v", notBound, err)
		}
		l.Close()
	})

	t.Run("delivery over both sockets", func(t *testing.T) {
		mustDeliver(t, "unix", unixPath, "alice@example.org")
		mustDeliver(t, "tcp", tcpAddr, "carol@example.org")
		if n1, n2 := len(f.be1.Messages()), len(f.be2.Messages()); n1 != 1 || n2 != 1 {
			t.Errorf("backends got %d and %d messages, want 1 and 1", n1, n2)
		}
	})

	// The periodic STATUS= comes every 10 s; watchdog pings pile up
	// meanwhile.
	if _, err := nl.WaitFor(ctx(t), "STATUS", ""); err != nil {
		t.Fatalf("no periodic STATUS=: %v", err)
	}
	t.Run("watchdog", func(t *testing.T) {
		// WATCHDOG_USEC=200000: a ping every 100 ms; the ten seconds
		// before the periodic STATUS leave room for far more than 5.
		if n := countNotify(nl.All(), "WATCHDOG", "1"); n < 5 {
			t.Errorf("%d WATCHDOG=1 messages before the first periodic STATUS, want many", n)
		}
	})

	// A session opened before the reload finishes its transaction after
	// it; new connections work over both sockets.
	conn, err := net.Dial("unix", unixPath)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("mta.test"); err != nil {
		t.Fatal(err)
	}
	before := monotonicUsec(t)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	rl, err := nl.WaitFor(ctx(t), "RELOADING", "1")
	if err != nil {
		t.Fatalf("no RELOADING=1 after SIGHUP: %v", err)
	}
	if _, err := nl.WaitFor(ctx(t), "READY", "1"); err != nil {
		t.Fatalf("no READY=1 after the reload: %v", err)
	}
	after := monotonicUsec(t)
	t.Run("reload", func(t *testing.T) {
		mu, err := strconv.ParseUint(rl["MONOTONIC_USEC"], 10, 64)
		if err != nil || mu < before || mu > after {
			t.Errorf("RELOADING MONOTONIC_USEC=%q, want CLOCK_MONOTONIC within [%d, %d]", rl["MONOTONIC_USEC"], before, after)
		}
		rr, dr, err := txnOn(c, []string{"alice@example.org"}, "session across reload")
		if err != nil || rr["alice@example.org"] != "" || dr["alice@example.org"] != "" {
			t.Errorf("session opened before the reload: %v RCPT %v DATA %v", err, rr, dr)
		}
		mustDeliver(t, "unix", unixPath, "alice@example.org")
		mustDeliver(t, "tcp", tcpAddr, "carol@example.org")
	})
	c.Quit()

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("lmtpgate exited with %v after SIGTERM, want 0", err)
		}
	case <-ctx(t).Done():
		t.Fatal("lmtpgate did not exit on SIGTERM")
	}
	if _, err := nl.WaitFor(ctx(t), "STOPPING", "1"); err != nil {
		t.Errorf("no STOPPING=1: %v", err)
	}
	all := nl.All()
	seq := kinds(all)
	if !regexp.MustCompile(`^READY( STATUS)+ RELOADING READY( STATUS)* STOPPING$`).MatchString(seq) {
		t.Errorf("notification sequence %q, want READY, STATUS..., RELOADING, READY, STOPPING", seq)
	}
	t.Logf("READY STATUS: %s", ready["STATUS"])
}

// lockedWriter collects a child's output; exec copies stdout and stderr
// from separate goroutines when they are not an *os.File.
type lockedWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
