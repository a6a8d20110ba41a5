package sdnotify_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lmtpgate/lmtpgate/internal/sdnotify"
	"github.com/lmtpgate/lmtpgate/internal/systemdtest"
)

// ctx bounds waits only so that a broken test fails instead of hanging.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func setEnv(t *testing.T, socket, usec, pid string) {
	t.Setenv("NOTIFY_SOCKET", socket)
	t.Setenv("WATCHDOG_USEC", usec)
	t.Setenv("WATCHDOG_PID", pid)
	if usec == "" {
		os.Unsetenv("WATCHDOG_USEC")
	}
	if pid == "" {
		os.Unsetenv("WATCHDOG_PID")
	}
}

func TestMessages(t *testing.T) {
	l := systemdtest.ListenNotify(t, t.TempDir())
	setEnv(t, l.Path(), "4000000", "")
	n := sdnotify.New()
	if !n.Enabled() {
		t.Fatal("Enabled() = false with NOTIFY_SOCKET set")
	}
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"ready", func() error { return n.Ready("serving 3 backends") }, "READY=1\nSTATUS=serving 3 backends"},
		{"ready no status", func() error { return n.Ready("") }, "READY=1"},
		{"status", func() error { return n.Status("mupdate master down, using local replica") }, "STATUS=mupdate master down, using local replica"},
		{"stopping", func() error { return n.Stopping("draining 2 sessions") }, "STOPPING=1\nSTATUS=draining 2 sessions"},
		{"watchdog", n.Watchdog, "WATCHDOG=1"},
		{"send", func() error { return n.Send("EXTEND_TIMEOUT_USEC=5000000") }, "EXTEND_TIMEOUT_USEC=5000000"},
		{"status newline cannot inject", func() error { return n.Status("bad\nREADY=1\r\nx") }, "STATUS=bad READY=1 x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err != nil {
				t.Fatalf("send: %v", err)
			}
			_, raw, err := l.Next(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if raw != tc.want {
				t.Errorf("got %q, want %q", raw, tc.want)
			}
		})
	}
}

func monotonicUsec(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}

func TestReloadingMonotonic(t *testing.T) {
	l := systemdtest.ListenNotify(t, t.TempDir())
	setEnv(t, l.Path(), "", "")
	n := sdnotify.New()

	var prev uint64
	for i := range 3 {
		before := monotonicUsec(t)
		if err := n.Reloading("reloading /etc/lmtpgate/lmtpgate.yaml"); err != nil {
			t.Fatal(err)
		}
		after := monotonicUsec(t)
		m, raw, err := l.Next(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(raw, "\n")
		if len(lines) != 3 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") ||
			lines[2] != "STATUS=reloading /etc/lmtpgate/lmtpgate.yaml" {
			t.Fatalf("message %q", raw)
		}
		got, err := strconv.ParseUint(m["MONOTONIC_USEC"], 10, 64)
		if err != nil {
			t.Fatalf("MONOTONIC_USEC=%q: %v", m["MONOTONIC_USEC"], err)
		}
		// A wall-clock value (about 1.7e15 µs since 1970) would lie far
		// outside this window.
		if got < before || got > after {
			t.Errorf("reload %d: MONOTONIC_USEC=%d not within CLOCK_MONOTONIC [%d, %d]", i, got, before, after)
		}
		if got < prev {
			t.Errorf("reload %d: MONOTONIC_USEC went back from %d to %d", i, prev, got)
		}
		prev = got
	}
}

func TestAbstractNamespace(t *testing.T) {
	name := fmt.Sprintf("@lmtpgate-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	setEnv(t, name, "", "")
	if err := sdnotify.New().Ready("up"); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 4096)
	nr, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:nr]); got != "READY=1\nSTATUS=up" {
		t.Errorf("got %q", got)
	}
}

func TestNoopWhenUnset(t *testing.T) {
	setEnv(t, "", "3000000", "")
	os.Unsetenv("NOTIFY_SOCKET")
	n := sdnotify.New()
	if n.Enabled() {
		t.Error("Enabled() = true without NOTIFY_SOCKET")
	}
	for name, call := range map[string]func() error{
		"Ready":     func() error { return n.Ready("x") },
		"Reloading": func() error { return n.Reloading("x") },
		"Status":    func() error { return n.Status("x") },
		"Stopping":  func() error { return n.Stopping("x") },
		"Watchdog":  n.Watchdog,
		"Send":      func() error { return n.Send("X=1") },
	} {
		if err := call(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	var nilN *sdnotify.Notifier
	if nilN.Enabled() || nilN.Ready("") != nil || nilN.WatchdogInterval() != 0 {
		t.Error("nil Notifier is not a no-op")
	}
}

func TestSendErrorReported(t *testing.T) {
	setEnv(t, filepath.Join(t.TempDir(), "absent.sock"), "", "")
	if err := sdnotify.New().Ready(""); err == nil {
		t.Error("Ready to a missing socket returned nil")
	}
}

func TestWatchdogEnv(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	other := strconv.Itoa(os.Getpid() + 1)
	tests := []struct {
		name, usec, pid string
		want            time.Duration
	}{
		{"no watchdog", "", "", 0},
		{"usec only", "3000000", "", 1500 * time.Millisecond},
		{"pid is us", "20000000", self, 10 * time.Second},
		{"pid is someone else", "20000000", other, 0},
		{"pid garbage", "20000000", "abc", 0},
		{"usec zero", "0", "", 0},
		{"usec garbage", "3s", "", 0},
		{"usec negative", "-5", "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := systemdtest.ListenNotify(t, t.TempDir())
			setEnv(t, l.Path(), tc.usec, tc.pid)
			n := sdnotify.New()
			if got := n.WatchdogInterval(); got != tc.want {
				t.Errorf("WatchdogInterval() = %v, want %v", got, tc.want)
			}
			if got := n.WatchdogTimeout(); got != 2*tc.want {
				t.Errorf("WatchdogTimeout() = %v, want %v", got, 2*tc.want)
			}
			// Watchdog must ping exactly when a watchdog applies to us.
			if err := n.Watchdog(); err != nil {
				t.Fatal(err)
			}
			if err := n.Status("marker"); err != nil {
				t.Fatal(err)
			}
			_, raw, err := l.Next(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			wantFirst := "STATUS=marker"
			if tc.want != 0 {
				wantFirst = "WATCHDOG=1"
			}
			if raw != wantFirst {
				t.Errorf("first message %q, want %q", raw, wantFirst)
			}
		})
	}
}
