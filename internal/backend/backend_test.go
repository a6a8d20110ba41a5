package backend_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/backend/fakelmtp"
	"github.com/lmtpgate/lmtpgate/internal/testcert"
)

const body = "From: sender@example.org\r\nSubject: test\r\n\r\nline 1\r\n.leading dot\r\n"

// bytesMsg is a Message held in memory.
type bytesMsg []byte

func (m bytesMsg) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(m)), nil }
func (m bytesMsg) Size() int64                  { return int64(len(m)) }

// failingMsg cannot be opened, or fails after some bytes.
type failingMsg struct{ openErr bool }

func (m failingMsg) Open() (io.ReadCloser, error) {
	if m.openErr {
		return nil, errors.New("spool gone")
	}
	return io.NopCloser(io.MultiReader(strings.NewReader("Subject: x\r\n\r\npartial\r\n"), errReader{})), nil
}
func (m failingMsg) Size() int64 { return 100 }

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk error") }

// testLogger sends the package's DEBUG lines to the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func newPool(t *testing.T, srv *fakelmtp.Server, mod func(*backend.Config)) *backend.Pool {
	t.Helper()
	cfg := backend.DefaultConfig()
	cfg.Addresses = map[string]string{"backend1": srv.Addr()}
	cfg.AuthName = fakelmtp.User
	cfg.Password = fakelmtp.Password
	cfg.ConnectTimeout = 10 * time.Second
	cfg.CommandTimeout = 10 * time.Second
	cfg.TxnTimeout = 30 * time.Second
	if mod != nil {
		mod(&cfg)
	}
	p := backend.NewPool(cfg, testLogger(t))
	t.Cleanup(func() { p.Close() })
	return p
}

// ctx gives every test a generous overall deadline so a bug hangs no one.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type want struct {
	delivered bool
	stage     backend.Stage
	code      int // 0: no reply expected
	err       bool
}

func TestDeliver(t *testing.T) {
	perm := &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "bad header"}
	tests := []struct {
		name   string
		opts   []fakelmtp.Option
		cfg    func(*backend.Config)
		server string
		setup  func(*fakelmtp.Server)
		env    backend.Envelope
		rcpts  []string
		want   []want
		// wantRcpts is what the backend must have seen accepted at
		// RCPT in its one transaction; nil: no transaction reached DATA.
		wantRcpts []string
		wantAuth  *string // checked when set or when noAuthParam
		// noAuthParam: MAIL must carry no AUTH= parameter.
		noAuthParam bool
	}{
		{
			name:      "all accepted",
			env:       backend.Envelope{From: "sender@example.org"},
			rcpts:     []string{"alice@internal", "bob@internal", "+bb/sales@internal"},
			want:      []want{{delivered: true, stage: backend.StageDone}, {delivered: true, stage: backend.StageDone}, {delivered: true, stage: backend.StageDone}},
			wantRcpts: []string{"alice@internal", "bob@internal", "+bb/sales@internal"},
			wantAuth:  ptr(""),
		},
		{
			name:      "null sender and MTA auth identity",
			env:       backend.Envelope{From: "", AuthID: "mta@example.org"},
			rcpts:     []string{"alice@internal"},
			want:      []want{{delivered: true, stage: backend.StageDone}},
			wantRcpts: []string{"alice@internal"},
			wantAuth:  ptr("mta@example.org"),
		},
		{
			name:      "one rejected at RCPT",
			setup:     func(s *fakelmtp.Server) { s.SetRcptReply("carol@internal", fakelmtp.UserUnknown) },
			env:       backend.Envelope{From: "sender@example.org"},
			rcpts:     []string{"alice@internal", "carol@internal", "bob@internal"},
			want:      []want{{delivered: true, stage: backend.StageDone}, {stage: backend.StageRcpt, code: 550}, {delivered: true, stage: backend.StageDone}},
			wantRcpts: []string{"alice@internal", "bob@internal"},
		},
		{
			name: "quota at RCPT",
			setup: func(s *fakelmtp.Server) {
				s.SetRcptReply("full@internal", fakelmtp.OverQuotaTemp)
				s.SetRcptReply("fullperm@internal", fakelmtp.OverQuotaPerm)
			},
			rcpts:     []string{"full@internal", "alice@internal", "fullperm@internal"},
			want:      []want{{stage: backend.StageRcpt, code: 452}, {delivered: true, stage: backend.StageDone}, {stage: backend.StageRcpt, code: 552}},
			wantRcpts: []string{"alice@internal"},
		},
		{
			name: "quota after DATA",
			setup: func(s *fakelmtp.Server) {
				s.SetDataReply("full@internal", fakelmtp.OverQuotaTemp)
				s.SetDataReply("fullperm@internal", fakelmtp.OverQuotaPerm)
			},
			rcpts:     []string{"full@internal", "alice@internal", "fullperm@internal"},
			want:      []want{{stage: backend.StageDone, code: 452}, {delivered: true, stage: backend.StageDone}, {stage: backend.StageDone, code: 552}},
			wantRcpts: []string{"full@internal", "alice@internal", "fullperm@internal"},
		},
		{
			name:      "permanent failure after DATA for everyone",
			setup:     func(s *fakelmtp.Server) { s.SetDataReply("alice@internal", perm); s.SetDataReply("bob@internal", perm) },
			rcpts:     []string{"alice@internal", "bob@internal"},
			want:      []want{{stage: backend.StageDone, code: 554}, {stage: backend.StageDone, code: 554}},
			wantRcpts: []string{"alice@internal", "bob@internal"},
		},
		{
			name: "all rejected at RCPT: no DATA",
			setup: func(s *fakelmtp.Server) {
				s.SetRcptReply("a@internal", fakelmtp.UserUnknown)
				s.SetRcptReply("b@internal", fakelmtp.OverQuotaTemp)
			},
			rcpts: []string{"a@internal", "b@internal"},
			want:  []want{{stage: backend.StageRcpt, code: 550}, {stage: backend.StageRcpt, code: 452}},
		},
		{
			name:  "MAIL rejected",
			setup: func(s *fakelmtp.Server) { s.SetMailReply(&smtp.SMTPError{Code: 451, Message: "try later"}) },
			rcpts: []string{"alice@internal", "bob@internal"},
			want:  []want{{stage: backend.StageMail, code: 451}, {stage: backend.StageMail, code: 451}},
		},
		{
			name:  "auth failure",
			cfg:   func(c *backend.Config) { c.Password = "wrong" },
			rcpts: []string{"alice@internal", "bob@internal"},
			want:  []want{{stage: backend.StageAuth, code: 535}, {stage: backend.StageAuth, code: 535}},
		},
		{
			name:  "no credentials configured: backend demands auth at MAIL",
			cfg:   func(c *backend.Config) { c.AuthName = "" },
			rcpts: []string{"alice@internal"},
			want:  []want{{stage: backend.StageMail, code: 430}},
		},
		{
			name:        "noauth target on a backend without auth",
			opts:        []fakelmtp.Option{fakelmtp.WithoutAuth()},
			server:      "backend1/noauth",
			rcpts:       []string{"alice@internal"},
			want:        []want{{delivered: true, stage: backend.StageDone}},
			wantRcpts:   []string{"alice@internal"},
			noAuthParam: true, // AUTH not advertised: no AUTH= parameter
		},
		{
			name:  "connection dropped mid-DATA",
			setup: func(s *fakelmtp.Server) { s.DropDuringData(true) },
			rcpts: []string{"alice@internal", "bob@internal"},
			want:  []want{{stage: backend.StageData, err: true}, {stage: backend.StageData, err: true}},
		},
		{
			name:      "duplicate recipients",
			setup:     func(s *fakelmtp.Server) { s.SetDataReply("b@internal", fakelmtp.OverQuotaTemp) },
			rcpts:     []string{"a@internal", "b@internal", "a@internal", "b@internal"},
			want:      []want{{delivered: true, stage: backend.StageDone}, {stage: backend.StageDone, code: 452}, {delivered: true, stage: backend.StageDone}, {stage: backend.StageDone, code: 452}},
			wantRcpts: []string{"a@internal", "b@internal"},
		},
		{
			name:      "recipient with CR LF is refused locally, others go on",
			rcpts:     []string{"evil\r\nRSET@internal", "alice@internal"},
			want:      []want{{stage: backend.StageRcpt, err: true}, {delivered: true, stage: backend.StageDone}},
			wantRcpts: []string{"alice@internal"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakelmtp.New(t, tc.opts...)
			if tc.setup != nil {
				tc.setup(srv)
			}
			p := newPool(t, srv, tc.cfg)
			server := tc.server
			if server == "" {
				server = "backend1"
			}
			res := p.Deliver(testCtx(t), server, tc.env, tc.rcpts, bytesMsg(body))
			checkResults(t, res, tc.rcpts, tc.want)

			msgs := srv.Messages()
			if tc.wantRcpts == nil {
				for _, m := range msgs {
					if !m.Dropped {
						t.Errorf("backend completed a transaction it should not have: %+v", m)
					}
				}
				return
			}
			if len(msgs) != 1 {
				t.Fatalf("backend saw %d transactions, want 1", len(msgs))
			}
			m := msgs[0]
			if !equal(m.Rcpts, tc.wantRcpts) {
				t.Errorf("backend RCPTs = %q, want %q", m.Rcpts, tc.wantRcpts)
			}
			if string(m.Body) != body {
				t.Errorf("body = %q, want %q", m.Body, body)
			}
			if m.From != tc.env.From {
				t.Errorf("MAIL FROM = %q, want %q", m.From, tc.env.From)
			}
			if (tc.wantAuth != nil || tc.noAuthParam) && ((m.Auth == nil) != (tc.wantAuth == nil) || (m.Auth != nil && *m.Auth != *tc.wantAuth)) {
				t.Errorf("AUTH= = %v, want %v", deref(m.Auth), deref(tc.wantAuth))
			}
			// Delivered on our side must match what the backend did.
			for i, r := range res {
				if r.Delivered() != m.DeliveredTo(tc.rcpts[i]) {
					t.Errorf("%s: Delivered()=%v but backend delivered=%v", r.Rcpt, r.Delivered(), m.DeliveredTo(tc.rcpts[i]))
				}
			}
		})
	}
}

func checkResults(t *testing.T, res []backend.Result, rcpts []string, want []want) {
	t.Helper()
	if len(res) != len(rcpts) {
		t.Fatalf("got %d results for %d recipients", len(res), len(rcpts))
	}
	for i, r := range res {
		w := want[i]
		if r.Rcpt != rcpts[i] {
			t.Errorf("result %d is for %q, want %q", i, r.Rcpt, rcpts[i])
		}
		if r.Delivered() != w.delivered {
			t.Errorf("%s: Delivered() = %v, want %v (%+v)", r.Rcpt, r.Delivered(), w.delivered, r)
		}
		if r.Stage != w.stage {
			t.Errorf("%s: stage = %v, want %v (err %v)", r.Rcpt, r.Stage, w.stage, r.Err)
		}
		if (r.Err != nil) != w.err {
			t.Errorf("%s: err = %v, want error: %v", r.Rcpt, r.Err, w.err)
		}
		code := 0
		if r.Reply != nil {
			code = r.Reply.Code
		}
		if code != w.code {
			t.Errorf("%s: reply code = %d, want %d (%v)", r.Rcpt, code, w.code, r.Reply)
		}
	}
}

func TestRcptReplyKeepsEnhancedCode(t *testing.T) {
	srv := fakelmtp.New(t)
	srv.SetRcptReply("carol@internal", fakelmtp.UserUnknown)
	p := newPool(t, srv, nil)
	res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"carol@internal"}, bytesMsg(body))
	if r := res[0].Reply; r == nil || r.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
		t.Fatalf("reply = %+v, want 550 5.1.1", r)
	}
}

func TestBackendDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now: dial is refused
	cfg := backend.DefaultConfig()
	cfg.Addresses, cfg.Password = map[string]string{"down": addr}, "x"
	p := backend.NewPool(cfg, testLogger(t))
	defer p.Close()
	rcpts := []string{"a@internal", "b@internal"}
	res := p.Deliver(testCtx(t), "down", backend.Envelope{}, rcpts, bytesMsg(body))
	checkResults(t, res, rcpts, []want{{stage: backend.StageConnect, err: true}, {stage: backend.StageConnect, err: true}})
}

func TestBadServerString(t *testing.T) {
	p := backend.NewPool(backend.DefaultConfig(), nil)
	defer p.Close()
	res := p.Deliver(testCtx(t), "bad host", backend.Envelope{}, []string{"a@x"}, bytesMsg(body))
	checkResults(t, res, []string{"a@x"}, []want{{stage: backend.StageConnect, err: true}})
}

func TestNoRecipients(t *testing.T) {
	srv := fakelmtp.New(t)
	p := newPool(t, srv, nil)
	if res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, nil, bytesMsg(body)); len(res) != 0 {
		t.Fatalf("got %d results for no recipients", len(res))
	}
	if n := srv.Connections(); n != 0 {
		t.Errorf("connected %d times for nothing", n)
	}
}

func TestMessageErrors(t *testing.T) {
	t.Run("open fails", func(t *testing.T) {
		srv := fakelmtp.New(t)
		p := newPool(t, srv, nil)
		res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, failingMsg{openErr: true})
		checkResults(t, res, []string{"a@internal"}, []want{{stage: backend.StageData, err: true}})
	})
	t.Run("read fails mid-body: no final dot", func(t *testing.T) {
		srv := fakelmtp.New(t)
		p := newPool(t, srv, nil)
		res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, failingMsg{})
		checkResults(t, res, []string{"a@internal"}, []want{{stage: backend.StageData, err: true}})
		if st := p.Stats(); st.Idle != 0 || st.Broken != 1 {
			t.Errorf("stats after aborted DATA = %+v, want the connection discarded", st)
		}
		// A following good delivery on a new connection must be the
		// only message the backend completed.
		res = p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"b@internal"}, bytesMsg(body))
		if !res[0].Delivered() {
			t.Fatalf("second delivery: %+v", res[0])
		}
		for _, m := range srv.Messages() {
			if m.DeliveredTo("a@internal") {
				t.Errorf("truncated message was delivered: %q", m.Body)
			}
		}
	})
}

func TestStall(t *testing.T) {
	short := func(c *backend.Config) {
		c.ConnectTimeout = 300 * time.Millisecond
		c.CommandTimeout = 300 * time.Millisecond
		c.TxnTimeout = 2 * time.Second
	}
	t.Run("fresh connection never answers LHLO", func(t *testing.T) {
		srv := fakelmtp.New(t)
		srv.Stall(true)
		p := newPool(t, srv, short)
		res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
		checkResults(t, res, []string{"a@internal"}, []want{{stage: backend.StageConnect, err: true}})
		if !isTimeout(res[0].Err) {
			t.Errorf("err = %v, want a timeout", res[0].Err)
		}
	})
	t.Run("pooled connection stalls at MAIL", func(t *testing.T) {
		srv := fakelmtp.New(t)
		p := newPool(t, srv, short)
		if r := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body)); !r[0].Delivered() {
			t.Fatalf("first delivery: %+v", r[0])
		}
		srv.Stall(true)
		res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
		if res[0].Delivered() || res[0].Err == nil {
			t.Fatalf("stalled backend: %+v, want Err", res[0])
		}
	})
	t.Run("final replies never come", func(t *testing.T) {
		srv := fakelmtp.New(t)
		srv.StallData(true)
		p := newPool(t, srv, short)
		rcpts := []string{"a@internal", "b@internal"}
		res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, rcpts, bytesMsg(body))
		checkResults(t, res, rcpts, []want{{stage: backend.StageData, err: true}, {stage: backend.StageData, err: true}})
		if !isTimeout(res[0].Err) {
			t.Errorf("err = %v, want a timeout", res[0].Err)
		}
	})
	t.Run("transaction deadline bounds the whole exchange", func(t *testing.T) {
		srv := fakelmtp.New(t)
		srv.StallData(true)
		p := newPool(t, srv, func(c *backend.Config) {
			c.CommandTimeout = time.Hour
			c.TxnTimeout = 300 * time.Millisecond
		})
		res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
		checkResults(t, res, []string{"a@internal"}, []want{{stage: backend.StageData, err: true}})
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestContextCancel(t *testing.T) {
	srv := fakelmtp.New(t)
	srv.StallData(true)
	p := newPool(t, srv, nil) // long timeouts: only cancellation ends this
	ctx, cancel := context.WithCancel(testCtx(t))
	go func() {
		for len(srv.Messages()) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()
	res := p.Deliver(ctx, "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
	checkResults(t, res, []string{"a@internal"}, []want{{stage: backend.StageData, err: true}})
	if !errors.Is(res[0].Err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled in it", res[0].Err)
	}
}

func TestPoolReuse(t *testing.T) {
	srv := fakelmtp.New(t)
	p := newPool(t, srv, nil)
	for i := 0; i < 3; i++ {
		res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
		if !res[0].Delivered() {
			t.Fatalf("delivery %d: %+v", i, res[0])
		}
	}
	st := p.Stats()
	if st.Dials != 1 || st.Reuses != 2 || st.Broken != 0 || st.Idle != 1 {
		t.Errorf("stats = %+v, want 1 dial, 2 reuses, 1 idle", st)
	}
	if n := srv.Connections(); n != 1 {
		t.Errorf("backend saw %d connections, want 1", n)
	}
	if n := srv.Transactions(); n != 3 {
		t.Errorf("backend saw %d transactions, want 3", n)
	}
	p.Close()
	if st := p.Stats(); st.Idle != 0 {
		t.Errorf("idle after Close = %d", st.Idle)
	}
	// Deliver still works after Close, without pooling.
	if res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body)); !res[0].Delivered() {
		t.Errorf("after Close: %+v", res[0])
	}
}

func TestRejectedTransactionsAreNotPooled(t *testing.T) {
	srv := fakelmtp.New(t)
	srv.SetRcptReply("x@internal", fakelmtp.UserUnknown)
	p := newPool(t, srv, nil)
	p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"x@internal"}, bytesMsg(body))
	if st := p.Stats(); st.Idle != 0 {
		t.Errorf("connection with an aborted transaction was pooled: %+v", st)
	}
	// The next transaction starts cleanly on a fresh connection.
	if res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body)); !res[0].Delivered() {
		t.Errorf("next delivery: %+v", res[0])
	}
}

func TestStalePooledConnection(t *testing.T) {
	srv := fakelmtp.New(t)
	p := newPool(t, srv, nil)
	if res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body)); !res[0].Delivered() {
		t.Fatalf("first: %+v", res[0])
	}
	srv.Stop() // backend restarted: the pooled connection is dead
	srv.Start()
	res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"b@internal"}, bytesMsg(body))
	if !res[0].Delivered() {
		t.Fatalf("after restart: %+v", res[0])
	}
	st := p.Stats()
	if st.Dials != 2 || st.Broken != 1 || st.Reuses != 0 {
		t.Errorf("stats = %+v, want 2 dials, 1 broken, 0 reuses", st)
	}
	if got := len(srv.Messages()); got != 2 {
		t.Errorf("backend has %d messages, want 2", got)
	}
}

func TestIdleTimeout(t *testing.T) {
	srv := fakelmtp.New(t)
	p := newPool(t, srv, func(c *backend.Config) { c.IdleTimeout = 100 * time.Millisecond })
	p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
	ctx := testCtx(t)
	for p.Stats().Idle != 0 {
		if ctx.Err() != nil {
			t.Fatal("idle connection never closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body)); !res[0].Delivered() {
		t.Fatalf("after idle close: %+v", res[0])
	}
	if st := p.Stats(); st.Dials != 2 || st.Reuses != 0 {
		t.Errorf("stats = %+v, want a fresh dial after idle expiry", st)
	}
}

func TestConcurrentDeliver(t *testing.T) {
	srv := fakelmtp.New(t)
	srv.SetDataReply("full@internal", fakelmtp.OverQuotaTemp)
	p := newPool(t, srv, func(c *backend.Config) { c.MaxIdle = 2 })
	const n = 12
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := p.Deliver(testCtx(t), "backend1", backend.Envelope{From: "s@example.org"}, []string{"a@internal", "full@internal"}, bytesMsg(body))
			if !res[0].Delivered() || res[1].Delivered() || res[1].Reply == nil || res[1].Reply.Code != 452 {
				errs <- "unexpected results"
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if got := len(srv.Messages()); got != n {
		t.Errorf("backend has %d messages, want %d", got, n)
	}
	st := p.Stats()
	if st.Idle > 2 {
		t.Errorf("idle = %d above MaxIdle 2", st.Idle)
	}
	if st.Dials+st.Reuses != n {
		t.Errorf("dials %d + reuses %d != %d transactions", st.Dials, st.Reuses, n)
	}
}

func TestStartTLS(t *testing.T) {
	cert, _ := testcert.New(t, "backend1")
	srv := fakelmtp.New(t, fakelmtp.WithTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	ca := testcert.CAFile(t, cert)
	p := newPool(t, srv, func(c *backend.Config) {
		c.TLSCAFile = ca
	})
	res := p.Deliver(testCtx(t), "backend1/tls", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
	if !res[0].Delivered() {
		t.Fatalf("over STARTTLS: %+v", res[0])
	}
	if m := srv.Messages(); len(m) != 1 || !m[0].TLS || m[0].AuthUser != fakelmtp.User {
		t.Errorf("backend saw %+v, want one authenticated TLS transaction", m)
	}
	// The pooled TLS connection is reused.
	if res := p.Deliver(testCtx(t), "backend1/tls", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body)); !res[0].Delivered() {
		t.Fatalf("reuse over TLS: %+v", res[0])
	}
	if st := p.Stats(); st.Reuses != 1 {
		t.Errorf("stats = %+v, want 1 reuse", st)
	}

	t.Run("certificate not trusted", func(t *testing.T) {
		p := newPool(t, srv, nil)
		res := p.Deliver(testCtx(t), "backend1/tls", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
		checkResults(t, res, []string{"a@internal"}, []want{{stage: backend.StageConnect, err: true}})
	})
	t.Run("backend without STARTTLS", func(t *testing.T) {
		plain := fakelmtp.New(t)
		p := newPool(t, plain, nil)
		res := p.Deliver(testCtx(t), "backend1/tls", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body))
		checkResults(t, res, []string{"a@internal"}, []want{{stage: backend.StageConnect, err: true}})
	})
}

func ptr(s string) *string { return &s }

func deref(s *string) string {
	if s == nil {
		return "<absent>"
	}
	return *s
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A zero means what Config says it means, never a default: MaxIdle 0
// keeps no connection.
func TestZeroMaxIdleKeepsNone(t *testing.T) {
	srv := fakelmtp.New(t)
	p := newPool(t, srv, func(c *backend.Config) { c.MaxIdle = 0 })
	for range 2 {
		if res := p.Deliver(testCtx(t), "backend1", backend.Envelope{}, []string{"a@internal"}, bytesMsg(body)); !res[0].Delivered() {
			t.Fatalf("delivery: %+v", res[0])
		}
	}
	if st := p.Stats(); st.Idle != 0 || st.Dials != 2 {
		t.Fatalf("stats with MaxIdle 0 = %+v, want no pooling", st)
	}
}
