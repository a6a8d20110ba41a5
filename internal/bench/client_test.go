package bench

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestClientSendCodes(t *testing.T) {
	addr, be := startScript(t)
	body := NewBody(2048, 1)
	hdr := Header(nil, "s@x", "1", time.Now(), &body)
	tests := []struct {
		name  string
		from  string
		rcpts []string
		want  []int
	}{
		{"all ok", "s@x", []string{"a@x", "b@x"}, []int{250, 250}},
		{"rcpt refusals", "s@x", []string{"rtemp@x", "a@x", "rperm@x"}, []int{451, 250, 550}},
		{"data replies", "s@x", []string{"dtemp@x", "a@x", "dperm@x"}, []int{452, 250, 554}},
		{"all refused", "s@x", []string{"rperm@x", "rtemp@x"}, []int{550, 451}},
		{"mail refused", "mailfail@x", []string{"a@x", "b@x"}, []int{451, 451}},
		{"ok after failures", "s@x", []string{"a@x"}, []int{250}},
	}
	for _, pipelining := range []bool{true, false} {
		c, err := Dial(context.Background(), addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Hello("test", pipelining); err != nil {
			t.Fatal(err)
		}
		if c.Pipelining != pipelining {
			t.Fatalf("Pipelining = %v, want %v", c.Pipelining, pipelining)
		}
		// One connection for all cases: a failed transaction must
		// leave the session usable for the next.
		for _, tt := range tests {
			codes := make([]int, len(tt.rcpts))
			if err := c.Send(tt.from, tt.rcpts, hdr, body.Wire, codes); err != nil {
				t.Fatalf("pipelining=%v %s: %v", pipelining, tt.name, err)
			}
			if !slices.Equal(codes, tt.want) {
				t.Errorf("pipelining=%v %s: codes %v, want %v", pipelining, tt.name, codes, tt.want)
			}
		}
		if err := c.Quit(); err != nil {
			t.Error(err)
		}
	}
	// Four cases per round have an accepted recipient and reach DATA.
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.messages != 8 {
		t.Errorf("backend got %d messages, want 8", be.messages)
	}
}

// rawServer runs script on each accepted connection.
func rawServer(t *testing.T, script func(r *bufio.Reader, c net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				script(bufio.NewReader(c), c)
			}()
		}
	}()
	return l.Addr().String()
}

func TestClientConnectionDropsAfterData(t *testing.T) {
	// The server answers the first of two recipients after DATA, then
	// goes away: the second has no reply and must say so (code 0), never
	// pass for delivered.
	addr := rawServer(t, func(r *bufio.Reader, c net.Conn) {
		c.Write([]byte("220 hi\r\n"))
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch {
			case strings.HasPrefix(line, "LHLO"):
				c.Write([]byte("250-x\r\n250 PIPELINING\r\n"))
			case strings.HasPrefix(line, "MAIL"), strings.HasPrefix(line, "RCPT"):
				c.Write([]byte("250 ok\r\n"))
			case strings.HasPrefix(line, "DATA"):
				c.Write([]byte("354 go\r\n"))
			case line == ".\r\n":
				c.Write([]byte("250 ok\r\n"))
				return
			}
		}
	})
	c, err := Dial(context.Background(), addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("t", true); err != nil {
		t.Fatal(err)
	}
	codes := make([]int, 2)
	err = c.Send("s@x", []string{"a@x", "b@x"}, []byte("Subject: x\r\n\r\n"), []byte("hi\r\n.\r\n"), codes)
	if err == nil {
		t.Fatal("Send succeeded on a dropped connection")
	}
	if !slices.Equal(codes, []int{250, 0}) {
		t.Errorf("codes %v, want [250 0]", codes)
	}
}

func TestClientBadReplies(t *testing.T) {
	for _, greeting := range []string{"hello\r\n", "999 x\r\n", "2x0 x\r\n", "554 go away\r\n", strings.Repeat("2", 10000) + "\r\n", ""} {
		addr := rawServer(t, func(r *bufio.Reader, c net.Conn) { c.Write([]byte(greeting)) })
		if c, err := Dial(context.Background(), addr, 10*time.Second); err == nil {
			c.Close()
			t.Errorf("greeting %.20q accepted", greeting)
		}
	}
}

func TestParseReplyLine(t *testing.T) {
	tests := []struct {
		in   string
		code int
		more bool
		text string
		ok   bool
	}{
		{"250 ok\r\n", 250, false, "ok", true},
		{"250-PIPELINING\r\n", 250, true, "PIPELINING", true},
		{"354\r\n", 354, false, "", true},
		{"25\r\n", 0, false, "", false},
		{"2500\r\n", 0, false, "", false},
		{"abc ok\r\n", 0, false, "", false},
		{"100 x\r\n", 0, false, "", false},
		{"600 x\r\n", 0, false, "", false},
	}
	for _, tt := range tests {
		code, more, text, err := parseReplyLine([]byte(tt.in))
		if (err == nil) != tt.ok || code != tt.code || more != tt.more || string(text) != tt.text {
			t.Errorf("parseReplyLine(%q) = %d %v %q %v", tt.in, code, more, text, err)
		}
	}
}

func FuzzParseReplyLine(f *testing.F) {
	f.Add([]byte("250 2.1.5 ok\r\n"))
	f.Add([]byte("250-PIPELINING\r\n"))
	f.Add([]byte("5\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		code, _, _, err := parseReplyLine(b)
		if err == nil && (code < 200 || code > 599) {
			t.Fatalf("accepted code %d", code)
		}
	})
}

func TestClientAuthPlain(t *testing.T) {
	_, addrs := startNull(t, 1)
	c, err := Dial(context.Background(), addrs[0], 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("t", true); err != nil {
		t.Fatal(err)
	}
	if !c.Extension("auth") || !c.Pipelining {
		t.Errorf("extensions %v", c.ext)
	}
	if err := c.AuthPlain("proxy", "secret"); err != nil {
		t.Fatal(err)
	}
}

// The two benchmarks below decide which client the generator uses: the same
// 1 KiB message to one recipient over one connection against NullBackend,
// through the lean client and through go-smtp's LMTP client.

func BenchmarkClientLean(b *testing.B) {
	_, addrs := startNull(b, 1)
	body := NewBody(1024, 1)
	c, err := Dial(context.Background(), addrs[0], time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("b", true); err != nil {
		b.Fatal(err)
	}
	codes := make([]int, 1)
	rcpt := []string{"a@x"}
	var hdr []byte
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		hdr = Header(hdr[:0], "s@x", "id", time.Now(), &body)
		if err := c.Send("s@x", rcpt, hdr, body.Wire, codes); err != nil || codes[0] != 250 {
			b.Fatal(err, codes)
		}
	}
}

func BenchmarkClientGoSMTP(b *testing.B) {
	_, addrs := startNull(b, 1)
	body := NewBody(1024, 1)
	// go-smtp dot-stuffs itself: give it the unstuffed text.
	text := bytes.TrimSuffix(body.Wire, []byte(".\r\n"))
	conn, err := net.Dial("tcp", addrs[0])
	if err != nil {
		b.Fatal(err)
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("b"); err != nil {
		b.Fatal(err)
	}
	var hdr []byte
	b.ReportAllocs()
	for b.Loop() {
		hdr = Header(hdr[:0], "s@x", "id", time.Now(), &body)
		if err := c.Mail("s@x", nil); err != nil {
			b.Fatal(err)
		}
		if err := c.Rcpt("a@x", nil); err != nil {
			b.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			b.Fatal(err)
		}
		w.Write(hdr)
		w.Write(text)
		if _, err := w.CloseWithLMTPResponse(); err != nil {
			b.Fatal(err)
		}
	}
}
