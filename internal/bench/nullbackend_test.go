package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// converse writes each line of in and returns every reply line the null
// backend sent until it closed the connection.
func converse(t *testing.T, addr string, in string) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		c.Write([]byte(in))
		c.(*net.TCPConn).CloseWrite() // EOF after the input
	}()
	var out []string
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

func TestNullBackendDialogue(t *testing.T) {
	nb, addrs := startNull(t, 1)
	long := strings.Repeat("y", 100000)
	const lhlo = "250 250 250 250 250 250" // six lines of extensions
	tests := []struct {
		name string
		in   string
		want []string // reply codes in order
	}{
		{"two rcpts", "LHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\nSubject: s\r\n\r\n..dot\r\n" + long + "\r\n.\r\nQUIT\r\n",
			[]string{"220", lhlo, "250", "250", "250", "354", "250", "250", "221"}},
		{"auth inline", "LHLO x\r\nAUTH PLAIN AHByb3h5AHNlY3JldA==\r\nQUIT\r\n",
			[]string{"220", lhlo, "235", "221"}},
		{"auth continuation", "AUTH PLAIN\r\nAHByb3h5AHNlY3JldA==\r\nAUTH PLAIN\r\n*\r\nAUTH LOGIN\r\nQUIT\r\n",
			[]string{"220", "334", "235", "334", "501", "504", "221"}},
		{"sequence errors", "RCPT TO:<a@x>\r\nDATA\r\nMAIL FROM:<>\r\nMAIL FROM:<>\r\nDATA\r\nRSET\r\nNOOP\r\nVRFY a\r\nBOGUS\r\n\r\nQUIT\r\n",
			[]string{"220", "503", "503", "250", "503", "503", "250", "250", "252", "500", "500", "221"}},
		{"long command", "NOOP " + long + "\r\nNOOP\r\nQUIT\r\n", []string{"220", "500", "250", "221"}},
		{"eof in data", "MAIL FROM:<>\r\nRCPT TO:<a@x>\r\nDATA\r\nabc", []string{"220", "250", "250", "354"}},
		{"eof mid line", "NOO", []string{"220"}},
	}
	for _, tt := range tests {
		got := converse(t, addrs[0], tt.in)
		var codes []string
		for _, l := range got {
			if len(l) < 3 {
				t.Fatalf("%s: short reply %q", tt.name, l)
			}
			codes = append(codes, l[:3])
		}
		if strings.Join(codes, " ") != strings.Join(tt.want, " ") {
			t.Errorf("%s: replies %v, want %v\n%s", tt.name, codes, tt.want, strings.Join(got, "\n"))
		}
	}
	if nb.Messages.Load() != 1 || nb.Deliveries.Load() != 2 {
		t.Errorf("messages %d deliveries %d, want 1 and 2", nb.Messages.Load(), nb.Deliveries.Load())
	}
}

func TestNullBackendUnixSocket(t *testing.T) {
	nb := &NullBackend{}
	defer nb.Close()
	path := filepath.Join(t.TempDir(), "lmtp.sock")
	if _, err := nb.Listen(context.Background(), "unix:"+path); err != nil {
		t.Fatal(err)
	}
	c, err := Dial(context.Background(), "unix:"+path, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("t", true); err != nil {
		t.Fatal(err)
	}
}

func TestNullBackendConcurrent(t *testing.T) {
	const n = 200
	nb, addrs := startNull(t, 2)
	body := NewBody(4096, 3)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	// Open all connections first so that all n are open at once.
	clients := make([]*Client, n)
	for i := range n {
		c, err := Dial(context.Background(), addrs[i%2], 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	if got := nb.Active.Load(); got > n {
		t.Fatalf("active %d > %d", got, n)
	}
	for i, c := range clients {
		wg.Go(func() {
			defer c.Quit()
			if err := c.Hello("t", i%3 != 0); err != nil {
				errs <- err
				return
			}
			for j := range 3 {
				codes := make([]int, 2)
				hdr := Header(nil, "s@x", fmt.Sprint(i, ".", j), time.Now(), &body)
				if err := c.Send("s@x", []string{"a@x", "b@x"}, hdr, body.Wire, codes); err != nil {
					errs <- err
					return
				}
				if codes[0] != 250 || codes[1] != 250 {
					errs <- fmt.Errorf("codes %v", codes)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := nb.Conns.Load(); got != n {
		t.Errorf("accepted %d connections, want %d", got, n)
	}
	if got := nb.Deliveries.Load(); got != n*3*2 {
		t.Errorf("deliveries %d, want %d", got, n*3*2)
	}
}

func TestNullBackendClose(t *testing.T) {
	nb := &NullBackend{}
	a, err := nb.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(context.Background(), a.String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nb.Close() // must not hang on the open connection
	if _, err := nb.Listen(context.Background(), "127.0.0.1:0"); err == nil {
		t.Error("Listen after Close succeeded")
	}
	if err := c.Hello("t", true); err == nil {
		t.Error("connection still served after Close")
	}
}

// FuzzNullBackend feeds arbitrary bytes to a session: it must never panic,
// and every reply line must be a well-formed reply.
func FuzzNullBackend(f *testing.F) {
	f.Add([]byte("LHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"))
	f.Add([]byte("AUTH PLAIN\r\n*\r\nAUTH\r\n\r\n\n\r"))
	f.Add([]byte("MAIL\r\nRCPT\r\nDATA\r\n.\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		nb := &NullBackend{}
		c := &scriptConn{in: bytes.NewReader(in)}
		nb.handle(c)
		sc := bufio.NewScanner(&c.out)
		for sc.Scan() {
			if _, _, _, err := parseReplyLine([]byte(sc.Text())); err != nil {
				t.Fatalf("bad reply %q", sc.Text())
			}
		}
	})
}

// scriptConn is a net.Conn that reads a fixed input, then EOF, and records
// what is written.
type scriptConn struct {
	net.Conn // nil: methods not overridden here are never called
	in       *bytes.Reader
	out      bytes.Buffer
}

func (c *scriptConn) Read(b []byte) (int, error)  { return c.in.Read(b) }
func (c *scriptConn) Write(b []byte) (int, error) { return c.out.Write(b) }
func (c *scriptConn) SetDeadline(time.Time) error { return nil }
func (c *scriptConn) Close() error                { return nil }
