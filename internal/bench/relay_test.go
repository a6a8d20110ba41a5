package bench

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/cyrusdb"
	"github.com/lmtpgate/lmtpgate/internal/mboxlist"
)

func TestCountingRelay(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := up.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("* OK hello\r\n"))
		b, _ := io.ReadAll(c)
		got <- b
		c.Close()
	}()
	r, err := NewCountingRelay(context.Background(), "127.0.0.1:0", up.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	greet := make([]byte, 12)
	if _, err := io.ReadFull(c, greet); err != nil || string(greet) != "* OK hello\r\n" {
		t.Fatalf("greeting %q, %v", greet, err)
	}
	sent := "A1 FIND {10+}\r\nuser.alice\r\nA2 NOOP\r\nA3 FIND MAILBOX user.bob\r\nA4 FIND \"user.alice\"\r\nA5 FINDER x\r\n"
	c.Write([]byte(sent))
	c.(*net.TCPConn).CloseWrite()
	select {
	case b := <-got:
		if string(b) != sent {
			t.Errorf("upstream got %q", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("upstream got nothing")
	}
	c.Close()
	if n := r.Finds.Load(); n != 3 {
		t.Errorf("Finds = %d, want 3", n)
	}
	names := r.Names()
	if names["user.alice"] != 2 || names["user.bob"] != 1 || len(names) != 2 {
		t.Errorf("names = %v", names)
	}
	r.Reset()
	if r.Finds.Load() != 0 || len(r.Names()) != 0 {
		t.Error("Reset left counts")
	}
}

// TestRunRate checks pacing by counting: in a run bounded by time, a paced
// run cannot start more messages than the rate allows, however fast the
// backend is.
func TestRunRate(t *testing.T) {
	_, addrs := startNull(t, 1)
	rm, sm := mustMix(t, "1:1", "1KiB:1")
	cfg := Config{Target: addrs[0], Backends: testBackends(1, 2), Conns: 4, Duration: 500 * time.Millisecond,
		RcptMix: rm, SizeMix: sm, Rate: 10}
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Messages 0..5 are due within 0.5 s; the next is due at 0.6 s.
	if res.Messages < 1 || res.Messages > 6 {
		t.Errorf("paced at 10/s for 0.5 s: %d messages", res.Messages)
	}
	if _, err := Run(context.Background(), Config{Target: addrs[0], Backends: testBackends(1, 2), Conns: 1, Messages: 1, RcptMix: rm, SizeMix: sm, Rate: -1}); err == nil {
		t.Error("negative rate accepted")
	}
}

// TestWriteFlatMailboxes reads the generated database back through the
// reader lmtpgate uses.
func TestWriteFlatMailboxes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mailboxes.db")
	if err := WriteFlatMailboxes(path, 25, []string{"be1", "be2"}, "zmarker"); err != nil {
		t.Fatal(err)
	}
	x, err := mboxlist.LoadOnce(context.Background(), path, cyrusdb.Flat)
	if err != nil {
		t.Fatal(err)
	}
	if x.Len() != 26 {
		t.Fatalf("Len = %d, want 26", x.Len())
	}
	for i, want := range map[int]string{0: "be1", 1: "be2", 24: "be1"} {
		e, err := x.Lookup("user." + SynthMailbox(i))
		if err != nil || e.Server != want {
			t.Errorf("mailbox %d: %+v, %v; want server %s", i, e, err, want)
		}
	}
	if e, err := x.Lookup("user.zmarker"); err != nil || e.Server != "be1" {
		t.Errorf("marker: %+v, %v", e, err)
	}
}
