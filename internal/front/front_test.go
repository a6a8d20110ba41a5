package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testkit"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/address"
	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/backend/fakelmtp"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// mapSource is an in-memory lookup source.
type mapSource struct {
	name    string
	mu      sync.Mutex
	entries map[string]lookup.Entry
	err     error
	calls   atomic.Int64
}

func (m *mapSource) Name() string { return m.name }
func (m *mapSource) Lookup(ctx context.Context, mb string) (lookup.Entry, error) {
	m.calls.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return lookup.Entry{}, m.err
	}
	if e, ok := m.entries[mb]; ok {
		return e, nil
	}
	return lookup.Entry{}, lookup.ErrNotFound
}

type harness struct {
	t      testing.TB
	be1    *fakelmtp.Server
	be2    *fakelmtp.Server
	src    *mapSource
	holder *Holder
	srv    *Server
	addr   string
	pool   *backend.Pool
	logs   *testkit.SyncBuffer
}

func active(name, server, acl string) lookup.Entry {
	return lookup.Entry{Name: name, Server: server, Partition: "default", ACL: acl}
}

func newHarness(t testing.TB, opts ...func(*Options, *Runtime)) *harness {
	h := &harness{t: t, be1: fakelmtp.New(t), be2: fakelmtp.New(t), logs: &testkit.SyncBuffer{}}
	h.src = &mapSource{name: "mailboxes-db", entries: map[string]lookup.Entry{
		"user.alice": active("user.alice", "be1", "alice\tlrswipkxtecdan\t"),
		"user.bob":   active("user.bob", "be1", "bob\tlrswipkxtecdan\t"),
		"user.carol": active("user.carol", "be2", "carol\tlrswipkxtecdan\t"),
		"bb.sales":   active("bb.sales", "be1", "anyone\tlrsp\t"),
		"bb.private": active("bb.private", "be1", "anyone\tlrs\t"),
		"bb.secret":  active("bb.secret", "be1", "boss\tlrswipkxtecdan\t"),
		"user.newby": {Name: "user.newby", Server: "be2", State: lookup.Reserved},
		"user.mover": {Name: "user.mover", Server: "be2", State: lookup.Moving},
		// A delayed-delete copy of a shared folder, still postable.
		"DELETED.bb.old.5F00AA11": active("DELETED.bb.old.5F00AA11", "be1", "anyone\tlrsp\t"),
	}}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	bc := backend.DefaultConfig()
	bc.Addresses = map[string]string{"be1": h.be1.Addr(), "be2": h.be2.Addr()}
	bc.AuthName, bc.Password = fakelmtp.User, fakelmtp.Password
	bc.ConnectTimeout, bc.CommandTimeout, bc.TxnTimeout = 2*time.Second, 2*time.Second, 5*time.Second
	h.pool = backend.NewPool(bc, log)
	t.Cleanup(func() { h.pool.Close() })
	rt := &Runtime{
		Mode:             "master",
		Address:          address.DefaultSettings(),
		Chain:            lookup.NewChain(time.Second, h.src),
		Backends:         h.pool,
		SpoolMemoryLimit: 1 << 20,
		DeletedPrefix:    "DELETED",
	}
	fc := DefaultConfig()
	fc.MaxMessageSize, fc.MaxRecipients, fc.ReadTimeout, fc.WriteTimeout = 1<<20, 100, 10*time.Second, 10*time.Second
	o := Options{Hostname: "fe.test", Config: fc, Log: log}
	for _, f := range opts {
		f(&o, rt)
	}
	h.holder = NewHolder(rt)
	h.srv = New(o, h.holder)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = l.Addr().String()
	go h.srv.Serve(l, true)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		h.srv.Shutdown(ctx)
	})
	return h
}

func (h *harness) client() *smtp.Client {
	h.t.Helper()
	conn, err := net.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	c := smtp.NewClientLMTP(conn)
	if err := c.Hello("mta.test"); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

const body = "From: s@example.org\r\nSubject: test\r\n\r\nhello\r\n.leading dot\r\n"

// send runs a transaction and returns the RCPT replies and the post-DATA
// replies, both keyed by recipient ("" = accepted / delivered).
func (h *harness) send(c *smtp.Client, rcpts []string, msg string) (rcptReplies, dataReplies map[string]string) {
	h.t.Helper()
	rcptReplies, dataReplies = map[string]string{}, map[string]string{}
	if err := c.Mail("sender@example.org", nil); err != nil {
		h.t.Fatal(err)
	}
	accepted := 0
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			rcptReplies[r] = replyString(err)
		} else {
			rcptReplies[r] = ""
			accepted++
		}
	}
	if accepted == 0 {
		c.Reset()
		return
	}
	w, err := c.Data()
	if err != nil {
		h.t.Fatal(err)
	}
	io.WriteString(w, msg)
	resp, err := w.CloseWithLMTPResponse()
	var lerr smtp.LMTPDataError
	if err != nil && !errors.As(err, &lerr) {
		h.t.Fatalf("DATA: %v", err)
	}
	for r := range resp {
		dataReplies[r] = ""
	}
	for r, e := range lerr {
		dataReplies[r] = replyString(e)
	}
	return
}

func replyString(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return strings.TrimSpace(strings.Join([]string{itoa(uint64(se.Code)), enh(se.EnhancedCode)}, " "))
	}
	return "error: " + err.Error()
}

func enh(e smtp.EnhancedCode) string {
	if e == smtp.NoEnhancedCode {
		return ""
	}
	return itoa(uint64(e[0])) + "." + itoa(uint64(e[1])) + "." + itoa(uint64(e[2]))
}

func TestDeliveryAcrossBackends(t *testing.T) {
	h := newHarness(t)
	c := h.client()
	rcptRep, dataRep := h.send(c, []string{"Alice@example.org", "alice+Sub@example.org", "carol@example.org", "+bb/sales@example.org", "nosuch@example.org", "<>"}, body)
	want := map[string]string{"Alice@example.org": "", "alice+Sub@example.org": "", "carol@example.org": "", "+bb/sales@example.org": "", "nosuch@example.org": "550 5.1.1", "<>": "501 5.5.2"}
	for r, w := range want {
		if rcptRep[r] != w {
			t.Errorf("RCPT %s: got %q want %q", r, rcptRep[r], w)
		}
	}
	for _, r := range []string{"Alice@example.org", "alice+Sub@example.org", "carol@example.org", "+bb/sales@example.org"} {
		if got, ok := dataRep[r]; !ok || got != "" {
			t.Errorf("DATA %s: got %q (present %v), want delivered", r, got, ok)
		}
	}
	m1, m2 := h.be1.Messages(), h.be2.Messages()
	if len(m1) != 1 || len(m2) != 1 {
		t.Fatalf("backend transactions: be1 %d be2 %d", len(m1), len(m2))
	}
	for _, fwd := range []string{"alice@internal", "alice+Sub@internal", "+bb/sales@internal"} {
		if !m1[0].DeliveredTo(fwd) {
			t.Errorf("be1 did not get %s: %v", fwd, m1[0].Rcpts)
		}
	}
	if !m2[0].DeliveredTo("carol@internal") {
		t.Errorf("be2 did not get carol: %v", m2[0].Rcpts)
	}
	b := string(m1[0].Body)
	if !strings.HasPrefix(b, "Return-Path: <sender@example.org>\r\nReceived: from mta.test") || !strings.Contains(b, "by fe.test (lmtpgate) with LMTP id ") {
		t.Errorf("trace headers missing:\n%s", b)
	}
	if !strings.HasSuffix(b, body) {
		t.Errorf("body changed:\n%q", b)
	}
	if m1[0].Auth == nil || *m1[0].Auth != "" {
		t.Errorf("MAIL AUTH= not forwarded as <>: %v", m1[0].Auth)
	}
	logs := h.logs.String()
	for _, k := range []string{"rcpt=carol@example.org", "mailbox=user.carol", "backend=be2", "source=mailboxes-db", "code=250", "dur_ms=", "code=550"} {
		if !strings.Contains(logs, k) {
			t.Errorf("log lacks %q", k)
		}
	}
}

func TestRcptTimeReplies(t *testing.T) {
	h := newHarness(t)
	c := h.client()
	rcptRep, _ := h.send(c, []string{"newby@x", "mover@x", "+bb/private@x", "+bb/secret@x", "+@x", "bb+sales@x", "+DELETED/bb/old/5F00AA11@x"}, body)
	want := map[string]string{
		"newby@x":       "451 4.2.1", // reserved
		"mover@x":       "451 4.2.1", // moving
		"+bb/private@x": "550 5.7.1", // l but no p
		"+bb/secret@x":  "550 5.1.1", // neither: do not leak existence
		"+@x":           "550 5.1.1", // names no mailbox
		"bb+sales@x":    "550 5.1.1", // user.bb does not exist (postuser is empty)
		// a delayed-delete copy never takes mail, even with anyone p
		"+DELETED/bb/old/5F00AA11@x": "550 5.1.1",
	}
	for r, w := range want {
		if rcptRep[r] != w {
			t.Errorf("RCPT %s: got %q want %q", r, rcptRep[r], w)
		}
	}
}

func TestLookupFailureIsTemporary(t *testing.T) {
	h := newHarness(t)
	h.src.mu.Lock()
	h.src.err = errors.New("mupdate: connection refused")
	h.src.mu.Unlock()
	rcptRep, _ := h.send(h.client(), []string{"alice@x"}, body)
	if rcptRep["alice@x"] != "451 4.4.3" {
		t.Fatalf("got %q, want 451 4.4.3", rcptRep["alice@x"])
	}
}

func TestBackendReplies(t *testing.T) {
	cases := []struct {
		name      string
		script    func(h *harness)
		overQuota bool
		want      map[string]string
	}{
		{"one backend down, the other delivers", func(h *harness) { h.be2.Stop() },
			false, map[string]string{"alice@x": "", "carol@x": "451 4.4.3"}},
		{"stale routing: backend says unknown", func(h *harness) { h.be1.SetRcptReply("alice@internal", fakelmtp.UserUnknown) },
			false, map[string]string{"alice@x": "451 4.3.0", "carol@x": ""}},
		{"over quota at RCPT", func(h *harness) { h.be1.SetRcptReply("alice@internal", fakelmtp.OverQuotaTemp) },
			false, map[string]string{"alice@x": "452 4.2.2", "carol@x": ""}},
		{"over quota after DATA, perm failure on", func(h *harness) { h.be1.SetDataReply("alice@internal", fakelmtp.OverQuotaPerm) },
			true, map[string]string{"alice@x": "552 5.2.2", "carol@x": ""}},
		{"connection dropped mid-DATA", func(h *harness) { h.be1.DropDuringData(true) },
			false, map[string]string{"alice@x": "451 4.3.0", "carol@x": ""}},
		{"MAIL refused", func(h *harness) {
			h.be2.SetMailReply(&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "busy"})
		}, false, map[string]string{"alice@x": "", "carol@x": "451 4.3.0"}},
		{"unknown 5xx is not trusted", func(h *harness) {
			h.be2.SetDataReply("carol@internal", &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "too big"})
		}, false, map[string]string{"alice@x": "", "carol@x": "451 4.3.0"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(_ *Options, rt *Runtime) { rt.OverQuotaPermFailure = tc.overQuota })
			tc.script(h)
			_, dataRep := h.send(h.client(), []string{"alice@x", "carol@x"}, body)
			for r, w := range tc.want {
				if got, ok := dataRep[r]; !ok || got != w {
					t.Errorf("%s: got %q (present %v), want %q", r, got, ok, w)
				}
			}
			// The invariant behind every case: 250 only for what a
			// backend accepted.
			for r, got := range dataRep {
				if got != "" {
					continue
				}
				fwd := strings.TrimSuffix(r, "@x") + "@internal"
				if !deliveredAnywhere(h, fwd) {
					t.Errorf("%s got 250 but no backend accepted %s", r, fwd)
				}
			}
		})
	}
}

func deliveredAnywhere(h *harness, fwd string) bool {
	for _, m := range append(h.be1.Messages(), h.be2.Messages()...) {
		if m.DeliveredTo(fwd) {
			return true
		}
	}
	return false
}

func TestOversizeMessage(t *testing.T) {
	h := newHarness(t, func(o *Options, _ *Runtime) { o.Config.MaxMessageSize = 1000 })
	_, dataRep := h.send(h.client(), []string{"alice@x"}, body+strings.Repeat(strings.Repeat("x", 70)+"\r\n", 30))
	if dataRep["alice@x"] != "552 5.3.4" {
		t.Fatalf("got %q", dataRep["alice@x"])
	}
	if n := len(h.be1.Messages()); n != 0 {
		t.Fatalf("oversize message reached the backend (%d)", n)
	}
}

func TestLargeMessageSpooledAndDelivered(t *testing.T) {
	h := newHarness(t, func(o *Options, rt *Runtime) {
		o.Config.MaxMessageSize = 8 << 20
		rt.SpoolMemoryLimit = 64 << 10
		rt.SpoolDir = t.TempDir()
	})
	big := body + strings.Repeat(strings.Repeat("y", 76)+"\r\n", 5<<20/78)
	_, dataRep := h.send(h.client(), []string{"alice@x", "carol@x"}, big)
	if dataRep["alice@x"] != "" || dataRep["carol@x"] != "" {
		t.Fatalf("replies %v", dataRep)
	}
	for _, be := range []*fakelmtp.Server{h.be1, h.be2} {
		m := be.Messages()
		if len(m) != 1 || !strings.HasSuffix(string(m[0].Body), big) {
			t.Fatalf("large message not delivered intact")
		}
	}
}

func TestReloadMidTransactionKeepsOldRuntime(t *testing.T) {
	h := newHarness(t)
	retired := make(chan struct{})
	c := h.client()
	if err := c.Mail("s@x", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("alice@x", nil); err != nil {
		t.Fatal(err)
	}
	// Swap in a runtime whose only source knows nobody.
	empty := &mapSource{name: "master-mupdate", entries: map[string]lookup.Entry{}}
	h.holder.Swap(&Runtime{Mode: "no-master", Address: address.DefaultSettings(), Chain: lookup.NewChain(time.Second, empty), Backends: h.pool, SpoolMemoryLimit: 1 << 20}, func() { close(retired) })
	select {
	case <-retired:
		t.Fatal("old runtime retired while a transaction holds it")
	case <-time.After(50 * time.Millisecond):
	}
	// The transaction started before the swap still resolves with the
	// old rules.
	if err := c.Rcpt("carol@x", nil); err != nil {
		t.Fatalf("RCPT after swap used the new runtime: %v", err)
	}
	w, _ := c.Data()
	io.WriteString(w, body)
	if _, err := w.CloseWithLMTPResponse(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-retired:
	case <-time.After(5 * time.Second):
		t.Fatal("old runtime never retired")
	}
	// The next transaction uses the new rules.
	rcptRep, _ := h.send(c, []string{"alice@x"}, body)
	if rcptRep["alice@x"] != "550 5.1.1" {
		t.Fatalf("new runtime not in force: %q", rcptRep["alice@x"])
	}
	if empty.calls.Load() != 1 {
		t.Fatalf("new source asked %d times", empty.calls.Load())
	}
}

func TestShutdownDuringDeliveryNeverAcknowledges(t *testing.T) {
	h := newHarness(t)
	h.be1.StallData(true)
	c := h.client()
	done := make(chan map[string]string, 1)
	go func() {
		_, dataRep := h.send(c, []string{"alice@x", "carol@x"}, body)
		done <- dataRep
	}()
	// Wait until the backend transaction is in flight.
	deadline := time.Now().Add(5 * time.Second)
	for h.be1.Transactions() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2100*time.Millisecond)
	defer cancel()
	h.srv.Shutdown(ctx)
	select {
	case rep := <-done:
		if rep["alice@x"] == "" {
			t.Fatalf("alice acknowledged although her backend never answered: %v", rep)
		}
		if !strings.HasPrefix(rep["alice@x"], "4") && !strings.HasPrefix(rep["alice@x"], "error") {
			t.Fatalf("alice got %q, want a 4xx or a dropped connection", rep["alice@x"])
		}
	case <-time.After(10 * time.Second):
		t.Fatal("transaction still open after shutdown")
	}
	// New connections are refused.
	if _, err := net.DialTimeout("tcp", h.addr, time.Second); err == nil {
		t.Fatal("still accepting after shutdown")
	}
}

func TestShutdownClosesIdleSessions(t *testing.T) {
	h := newHarness(t)
	c := h.client()
	h.send(c, []string{"alice@x"}, body)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	h.srv.Shutdown(ctx)
	if time.Since(start) > 4*time.Second {
		t.Fatal("shutdown waited for an idle session")
	}
}

var _ = sasl.NewPlainClient

func TestOverlongLineIsPermanent(t *testing.T) {
	h := newHarness(t)
	_, dataRep := h.send(h.client(), []string{"alice@x"}, body+strings.Repeat("x", 999)+"\r\n")
	if dataRep["alice@x"] != "554 5.6.0" {
		t.Fatalf("got %q", dataRep["alice@x"])
	}
	if n := len(h.be1.Messages()); n != 0 {
		t.Fatalf("broken message reached the backend (%d)", n)
	}
}

// CHUNKING is advertised (go-smtp does), so BDAT must work end to end: the
// per-recipient replies come after the LAST chunk, in RCPT order.
func TestBDATDelivery(t *testing.T) {
	h := newHarness(t)
	conn, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	tp := textproto.NewConn(conn)
	expect := func(code int) string {
		t.Helper()
		_, msg, err := tp.ReadResponse(code)
		if err != nil {
			t.Fatalf("want %d: %v", code, err)
		}
		return msg
	}
	expect(220)
	tp.PrintfLine("LHLO mta.test")
	if caps := expect(250); !strings.Contains(caps, "CHUNKING") {
		t.Fatalf("CHUNKING not advertised: %q", caps)
	}
	tp.PrintfLine("MAIL FROM:<s@example.org>")
	expect(250)
	tp.PrintfLine("RCPT TO:<alice@x>")
	expect(250)
	tp.PrintfLine("RCPT TO:<carol@x>")
	expect(250)
	part1, part2 := "Subject: bdat\r\n\r\nfirst ", "chunk, second chunk\r\n"
	fmt.Fprintf(tp.W, "BDAT %d\r\n%s", len(part1), part1)
	tp.W.Flush()
	expect(250)
	fmt.Fprintf(tp.W, "BDAT %d LAST\r\n%s", len(part2), part2)
	tp.W.Flush()
	expect(250) // alice
	expect(250) // carol
	for _, be := range []*fakelmtp.Server{h.be1, h.be2} {
		m := be.Messages()
		if len(m) != 1 || !strings.HasSuffix(string(m[0].Body), part1+part2) {
			t.Fatalf("BDAT message not delivered intact: %+v", m)
		}
	}
}

// A stop must not wait on an MTA that holds a transaction open without
// sending DATA, nor on a client that never said LHLO: once the stop's time
// and grace are spent, every connection is cut (go-smtp's own Close does
// nothing after Shutdown began). Nothing was acknowledged, so nothing is
// lost. The deadlines below only keep a broken stop from hanging the test.
func TestShutdownCutsStalledClients(t *testing.T) {
	h := newHarness(t, func(o *Options, _ *Runtime) { o.Config.ReadTimeout = 10 * time.Minute })
	c := h.client()
	if err := c.Mail("s@x", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("alice@x", nil); err != nil {
		t.Fatal(err)
	}
	silent, err := net.Dial("tcp", h.addr) // never says LHLO
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	stopped := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		h.srv.Shutdown(ctx)
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(time.Minute):
		t.Fatal("Shutdown is still waiting on a client that holds a transaction open")
	}
	if _, err := c.Data(); err == nil {
		t.Fatal("the stalled transaction's connection is still open after the stop")
	}
	if len(h.be1.Messages()) != 0 {
		t.Fatal("a message reached the backend")
	}
}
