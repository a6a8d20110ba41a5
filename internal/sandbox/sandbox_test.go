package sandbox

import (
	"flag"
	"log/syslog"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(Main(!testing.Short(), m.Run))
}

func inside(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("enters namespaces: skipped with -short")
	}
	if err := Available(); err != nil {
		t.Skip(err)
	}
	if !Inside() {
		t.Fatal("the tests did not run inside the sandbox")
	}
}

// Inside the sandbox the tests are not PID 1 (the reaper is), /proc is the
// namespace's own, and the loopback is up and private: any 127/8 address
// and port, even a privileged one, is free to bind.
func TestNamespaces(t *testing.T) {
	inside(t)
	if os.Getpid() == 1 {
		t.Error("the tests run as PID 1; the sandbox's init should")
	}
	if os.Getppid() != 1 {
		t.Errorf("parent PID %d, want 1 (the sandbox's init)", os.Getppid())
	}
	b, err := os.ReadFile("/proc/1/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	if !strings.HasPrefix(string(b), exe) && !strings.Contains(string(b), ".test") {
		t.Errorf("/proc/1 is %q, not this test binary: /proc is not the namespace's", b)
	}
	ln, err := net.Listen("tcp", "127.9.9.9:25")
	if err != nil {
		t.Fatalf("bind a fixed loopback address: %v", err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("hi\n"))
			c.Close()
		}
	}()
	c, err := net.DialTimeout("tcp", "127.9.9.9:25", 5*time.Second)
	if err != nil {
		t.Fatalf("the loopback is not up: %v", err)
	}
	c.Close()
	for _, dev := range []string{"/dev/null", "/dev/urandom", "/dev/zero"} {
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			t.Errorf("%s in the private /dev: %v", dev, err)
			continue
		}
		f.Close()
	}
}

// What a program sends to syslog(3) reaches the sandbox's /dev/log.
func TestSyslog(t *testing.T) {
	inside(t)
	s, err := ListenSyslog()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w, err := syslog.Dial("", "", syslog.LOG_INFO|syslog.LOG_LOCAL6, "sandboxtest")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	n := s.Len()
	w.Info("dupelim: eliminated duplicate message to x id <a@b>")
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Lines("sandboxtest", "dupelim")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("nothing arrived on /dev/log; got %q", s.Since(0))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := s.Since(n); len(got) != 1 || !strings.HasPrefix(got[0], "<182>") {
		t.Errorf("Since(%d) = %q, want one message with priority <182> (local6.info)", n, got)
	}
}

// Outside the sandbox /dev/log is the host's and must not be taken.
func TestSyslogRefusedOutside(t *testing.T) {
	if Inside() {
		old := os.Getenv(envRole)
		os.Setenv(envRole, "")
		defer os.Setenv(envRole, old)
	}
	if _, err := ListenSyslog(); err == nil {
		t.Fatal("ListenSyslog outside the sandbox succeeded")
	}
}
