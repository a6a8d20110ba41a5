package backend_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/backend/fakelmtp"
)

// rawServer is a scripted LMTP peer on loopback: for every connection it
// greets, answers LHLO, and hands the connection to script.
type rawServer struct {
	ln      net.Listener
	accepts atomic.Int64
}

func newRaw(t *testing.T, greet bool, script func(r *bufio.Reader, w net.Conn)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepts.Add(1)
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if !greet {
					io.Copy(io.Discard, c) // a hung backend: TCP accepted, no greeting
					return
				}
				r := bufio.NewReader(c)
				io.WriteString(c, "220 raw LMTP\r\n")
				if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "LHLO") {
					return
				}
				io.WriteString(c, "250-raw\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
				script(r, c)
			}()
		}
	}()
	return s
}

func (s *rawServer) addr() string { return s.ln.Addr().String() }

func rawPool(t *testing.T, addr string, mod func(*backend.Config)) *backend.Pool {
	cfg := backend.DefaultConfig()
	cfg.Addresses = map[string]string{"raw": addr}
	cfg.AuthName = ""
	cfg.ConnectTimeout, cfg.CommandTimeout, cfg.TxnTimeout = 5*time.Second, 5*time.Second, 10*time.Second
	cfg.BackoffMin, cfg.BackoffMax = 50*time.Millisecond, 100*time.Millisecond
	if mod != nil {
		mod(&cfg)
	}
	p := backend.NewPool(cfg, testLogger(t))
	t.Cleanup(func() { p.Close() })
	return p
}

func readLines(r *bufio.Reader, n int) ([]string, error) {
	var out []string
	for range n {
		l, err := r.ReadString('\n')
		if err != nil {
			return out, err
		}
		out = append(out, strings.TrimRight(l, "\r\n"))
	}
	return out, nil
}

// readBody reads DATA lines up to the terminator.
func readBody(r *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return b.String(), err
		}
		if l == ".\r\n" {
			return b.String(), nil
		}
		b.WriteString(l)
	}
}

// MAIL, the RCPTs and DATA travel in one flight: the server reads all four
// commands before it answers any (it would wait for ever for the second if
// the client waited for the first reply).
func TestPipelining(t *testing.T) {
	got := make(chan []string, 1)
	srv := newRaw(t, true, func(r *bufio.Reader, w net.Conn) {
		cmds, err := readLines(r, 4)
		got <- cmds
		if err != nil {
			return
		}
		io.WriteString(w, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n")
		if _, err := readBody(r); err != nil {
			return
		}
		io.WriteString(w, "250 2.1.5 a done\r\n452 4.2.2 Over quota\r\n")
		r.ReadString('\n')
	})
	p := rawPool(t, srv.addr(), nil)
	res := p.Deliver(testCtx(t), "raw", backend.Envelope{From: "s@example.org"}, []string{"a@internal", "b@internal"}, bytesMsg(body))
	cmds := <-got
	wantCmds := []string{"MAIL FROM:<s@example.org>", "RCPT TO:<a@internal>", "RCPT TO:<b@internal>", "DATA"}
	if strings.Join(cmds, "|") != strings.Join(wantCmds, "|") {
		t.Fatalf("commands = %q, want %q", cmds, wantCmds)
	}
	checkResults(t, res, []string{"a@internal", "b@internal"}, []want{{delivered: true, stage: backend.StageDone}, {stage: backend.StageDone, code: 452}})
}

// A reply nobody asked for (here after the final replies; a smuggled
// command in a body would produce one) must keep the connection out of the
// pool, so it is never read as the answer to a later command.
func TestUnreadReplyIsNotPooled(t *testing.T) {
	srv := newRaw(t, true, func(r *bufio.Reader, w net.Conn) {
		if _, err := readLines(r, 3); err != nil {
			return
		}
		io.WriteString(w, "250 ok\r\n250 ok\r\n354 go\r\n")
		readBody(r)
		io.WriteString(w, "250 2.1.5 done\r\n550 5.7.1 You do not have permission to post\r\n")
		readLines(r, 1)
	})
	p := rawPool(t, srv.addr(), nil)
	res := p.Deliver(testCtx(t), "raw", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
	if !res[0].Delivered() {
		t.Fatalf("delivery: %+v", res[0])
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.Stats().Broken == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := p.Stats(); st.Idle != 0 || st.Broken != 1 {
		t.Fatalf("stats = %+v: a connection with an unread reply was pooled", st)
	}
}

// A backend that refuses connections is taken out of service: the next
// transaction fails at once with ErrDown, and once it is back a probe
// returns it to service by itself.
func TestBackendBreaker(t *testing.T) {
	srv := fakelmtp.New(t)
	p := newPool(t, srv, func(c *backend.Config) { c.BackoffMin, c.BackoffMax = 50*time.Millisecond, 100*time.Millisecond })
	srv.Stop()
	res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
	checkResults(t, res, []string{"a@internal"}, []want{{stage: backend.StageConnect, err: true}})
	if err := p.Available("backend1"); !errors.Is(err, backend.ErrDown) {
		t.Fatalf("Available after a refused connection = %v, want ErrDown", err)
	}
	res = p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
	if !errors.Is(res[0].Err, backend.ErrDown) {
		t.Fatalf("while down: %+v, want ErrDown at once", res[0])
	}
	if h := p.Health(); len(h) != 1 || h[0].Up || h[0].LastError == "" {
		t.Fatalf("health = %+v", h)
	}
	srv.Start()
	ctx := testCtx(t)
	for p.Available("backend1") != nil {
		if ctx.Err() != nil {
			t.Fatal("the probe never brought the backend back")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body)); !res[0].Delivered() {
		t.Fatalf("after recovery: %+v", res[0])
	}
	if h := p.Health(); !h[0].Up {
		t.Errorf("health after recovery = %+v", h)
	}
}

// A hung backend (TCP accepted, never a greeting) costs one connect
// timeout; after that its transactions fail without a new connection.
func TestHungBackendFailsFast(t *testing.T) {
	srv := newRaw(t, false, nil)
	p := rawPool(t, srv.addr(), func(c *backend.Config) {
		c.ConnectTimeout = 200 * time.Millisecond
		c.BackoffMin, c.BackoffMax = time.Hour, time.Hour
	})
	res := p.Deliver(testCtx(t), "raw", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
	checkResults(t, res, []string{"a@internal"}, []want{{stage: backend.StageConnect, err: true}})
	if !isTimeout(res[0].Err) {
		t.Errorf("err = %v, want a timeout", res[0].Err)
	}
	for range 5 {
		res = p.Deliver(testCtx(t), "raw", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
		if !errors.Is(res[0].Err, backend.ErrDown) {
			t.Fatalf("later transaction: %+v, want ErrDown", res[0])
		}
	}
	if n := srv.accepts.Load(); n != 1 {
		t.Errorf("the hung backend saw %d connections, want 1", n)
	}
}

// Transactions beyond MaxTransactions wait QueueTimeout and are then
// deferred with ErrBusy.
func TestMaxTransactions(t *testing.T) {
	srv := fakelmtp.New(t)
	p := newPool(t, srv, func(c *backend.Config) { c.MaxTransactions, c.QueueTimeout = 1, 50*time.Millisecond })
	ctx := testCtx(t)
	a := p.Begin(ctx, "backend1", backend.Envelope{})
	ra := a.Rcpt("a@internal", true)
	if res := ra.Answer(ctx); res.Err != nil || res.Reply != nil {
		t.Fatalf("first transaction's RCPT: %+v", res)
	}
	res := p.Deliver(ctx, "backend1", backend.Envelope{}, []string{"b@internal"}, bytesMsg(body))
	if !errors.Is(res[0].Err, backend.ErrBusy) {
		t.Fatalf("second transaction: %+v, want ErrBusy", res[0])
	}
	a.Data(strings.NewReader(body))
	if res := ra.Wait(ctx); !res.Delivered() {
		t.Fatalf("first transaction: %+v", res)
	}
	<-a.Done()
	if res := p.Deliver(ctx, "backend1", backend.Envelope{}, []string{"c@internal"}, bytesMsg(body)); !res[0].Delivered() {
		t.Fatalf("after the slot came free: %+v", res[0])
	}
	// A busy backend is not a sick one.
	if err := p.Available("backend1"); err != nil {
		t.Errorf("Available = %v", err)
	}
}

// A quoted local part goes to the backend quoted: its content must not
// become parameters of our MAIL command.
func TestQuotedLocalPartStaysQuoted(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "<>"},
		{"alice@example.org", "<alice@example.org>"},
		{"x> AUTH=admin SIZE=1@y.test", `<"x> AUTH=admin SIZE=1"@y.test>`},
		{`a"b\c@y`, `<"a\"b\\c"@y>`},
		{"a..b@y", `<"a..b"@y>`},
		{"a@b@c", `<"a@b"@c>`},
		{"jörg@example.org", "<jörg@example.org>"},
	} {
		if got := backend.FormatPath(tc.in); got != tc.want {
			t.Errorf("FormatPath(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
	fake := fakelmtp.New(t)
	p := newPool(t, fake, nil)
	from := "x> AUTH=admin SIZE=1@y.test"
	res := p.Deliver(testCtx(t), "backend1", backend.Envelope{From: from}, []string{"a@internal"}, bytesMsg(body))
	if !res[0].Delivered() {
		t.Fatalf("delivery: %+v", res[0])
	}
	m := fake.Messages()[0]
	if m.From != from || m.Auth == nil || *m.Auth != "" {
		t.Errorf("backend saw MAIL FROM %q AUTH=%v, want %q and AUTH=<>", m.From, deref(m.Auth), from)
	}
}

// A line over 998 octets never reaches a backend: the transaction is
// abandoned without the final dot.
func TestLongLineIsNotSent(t *testing.T) {
	fake := fakelmtp.New(t)
	p := newPool(t, fake, nil)
	msg := "Subject: x\r\n\r\n" + strings.Repeat("B", 8189) + "\r\n.\r\nMAIL FROM:<smuggled@evil.test>\r\n"
	res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"bob@internal"}, bytesMsg(msg))
	if res[0].Delivered() || res[0].Err == nil {
		t.Fatalf("result %+v, want an error", res[0])
	}
	for _, m := range fake.Messages() {
		if !m.Dropped {
			t.Errorf("backend completed a transaction: %+v", m)
		}
	}
}

// With verify, the backend's RCPT answer is known before DATA.
func TestVerifyAtRcpt(t *testing.T) {
	fake := fakelmtp.New(t)
	fake.SetRcptReply("full@internal", fakelmtp.OverQuotaTemp)
	p := newPool(t, fake, nil)
	ctx := testCtx(t)
	txn := p.Begin(ctx, "backend1", backend.Envelope{})
	full := txn.Rcpt("full@internal", true)
	if res := full.Answer(ctx); res.Reply == nil || res.Reply.Code != 452 || res.Stage != backend.StageRcpt {
		t.Fatalf("RCPT answer = %+v, want 452", res)
	}
	ok := txn.Rcpt("a@internal", true)
	if res := ok.Answer(ctx); res.Reply != nil || res.Err != nil {
		t.Fatalf("RCPT answer = %+v, want accepted", res)
	}
	txn.Data(strings.NewReader(body))
	if res := ok.Wait(ctx); !res.Delivered() {
		t.Fatalf("final = %+v", res)
	}
	if res := full.Wait(ctx); res.Delivered() || res.Reply.Code != 452 {
		t.Fatalf("refused recipient's final = %+v", res)
	}
}

// Aborting before DATA delivers nothing.
func TestAbortBeforeData(t *testing.T) {
	fake := fakelmtp.New(t)
	p := newPool(t, fake, nil)
	ctx := testCtx(t)
	txn := p.Begin(ctx, "backend1", backend.Envelope{})
	r := txn.Rcpt("a@internal", true)
	r.Answer(ctx)
	txn.Abort()
	<-txn.Done()
	if res := r.Wait(ctx); res.Delivered() || res.Err == nil {
		t.Fatalf("aborted recipient: %+v", res)
	}
	if m := fake.Messages(); len(m) != 0 {
		t.Errorf("backend received %d messages", len(m))
	}
}

// stepReader returns its first part at once, then waits for next to be
// closed before it returns the rest, then io.EOF or fails.
type stepReader struct {
	parts   [][]byte
	next    chan struct{}
	fail    error
	started bool
}

func (s *stepReader) Read(p []byte) (int, error) {
	if s.started {
		<-s.next
	}
	s.started = true
	if len(s.parts) == 0 {
		if s.fail != nil {
			return 0, s.fail
		}
		return 0, io.EOF
	}
	n := copy(p, s.parts[0])
	s.parts = s.parts[1:]
	return n, nil
}

// The body reaches the backend while it is still arriving (cut-through),
// and a message that then fails gets no final dot.
func TestCutThroughAndAbandon(t *testing.T) {
	for _, fails := range []bool{false, true} {
		first := make(chan struct{})
		outcome := make(chan string, 1)
		srv := newRaw(t, true, func(r *bufio.Reader, w net.Conn) {
			readLines(r, 3)
			io.WriteString(w, "250 ok\r\n250 ok\r\n354 go\r\n")
			l, _ := r.ReadString('\n')
			if l == "first half\r\n" {
				close(first)
			}
			rest, err := readBody(r)
			if err != nil {
				outcome <- "closed without the final dot"
				return
			}
			outcome <- "complete: " + rest
			io.WriteString(w, "250 ok\r\n")
			readLines(r, 1)
		})
		p := rawPool(t, srv.addr(), nil)
		ctx := testCtx(t)
		txn := p.Begin(ctx, "raw", backend.Envelope{})
		rc := txn.Rcpt("a@internal", false)
		sr := &stepReader{parts: [][]byte{[]byte("first half\r\n"), []byte("second half\r\n")}, next: make(chan struct{})}
		if fails {
			sr.fail = errors.New("MTA went away")
		}
		txn.Data(sr)
		<-first // the backend has the first half while the rest is unsent
		close(sr.next)
		res := rc.Wait(ctx)
		got := <-outcome
		if fails {
			if res.Delivered() || !errors.Is(res.Err, backend.ErrAborted) || got != "closed without the final dot" {
				t.Errorf("failed message: %+v, backend: %s", res, got)
			}
			if err := p.Available("raw"); err != nil {
				t.Errorf("an MTA failure counted against the backend: %v", err)
			}
			continue
		}
		if !res.Delivered() || got != "complete: second half\r\n" {
			t.Errorf("complete message: %+v, backend: %s", res, got)
		}
	}
}

// A server string naming a host outside AllowedHosts is never dialled.
func TestAllowedHosts(t *testing.T) {
	srv := newRaw(t, true, func(*bufio.Reader, net.Conn) {})
	p := rawPool(t, srv.addr(), func(c *backend.Config) { c.AllowedHosts = []string{"10.0.0.0/8", "backend.example"} })
	res := p.Deliver(testCtx(t), "raw", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
	if !errors.Is(res[0].Err, backend.ErrNotAllowed) {
		t.Fatalf("result %+v, want ErrNotAllowed", res[0])
	}
	if n := srv.accepts.Load(); n != 0 {
		t.Errorf("dialled a host that is not allowed (%d connections)", n)
	}
	p2 := rawPool(t, srv.addr(), func(c *backend.Config) { c.AllowedHosts = []string{"127.0.0.0/8"} })
	if err := p2.Available("raw"); err != nil {
		t.Errorf("allowed host: %v", err)
	}
}

// RequireTLS refuses a backend without STARTTLS, whatever its server string.
func TestRequireTLS(t *testing.T) {
	fake := fakelmtp.New(t)
	p := newPool(t, fake, func(c *backend.Config) { c.RequireTLS = true })
	res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
	checkResults(t, res, []string{"a@internal"}, []want{{stage: backend.StageConnect, err: true}})
	if fake.Transactions() != 0 {
		t.Error("delivered without TLS")
	}
}
