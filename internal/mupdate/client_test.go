package mupdate_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testkit"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mupdate"
	"github.com/lmtpgate/lmtpgate/internal/mupdate/fakemupdate"
)

func testConfig(addr string) mupdate.Config {
	c := mupdate.DefaultConfig()
	c.Address = addr
	c.AuthName, c.Password = fakemupdate.DefaultUser, fakemupdate.DefaultPassword
	c.DialTimeout, c.QueryTimeout = 5*time.Second, 5*time.Second
	c.KeepAlive = 0
	c.BackoffMin, c.BackoffMax = 20*time.Millisecond, 50*time.Millisecond
	return c
}

func newClient(t *testing.T, cfg mupdate.Config) (*mupdate.Client, *testkit.SyncBuffer) {
	t.Helper()
	logs := &testkit.SyncBuffer{}
	c := mupdate.New("master-mupdate", cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	t.Cleanup(func() { c.Close() })
	return c, logs
}

// eventually waits for cond; the bound only prevents a hang.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, 15*time.Second, what, cond)
}

func lookupOK(t *testing.T, c *mupdate.Client, name string) lookup.Entry {
	t.Helper()
	e, err := c.Lookup(context.Background(), name)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", name, err)
	}
	return e
}

func wantUnavailable(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("Lookup succeeded, want ErrUnavailable")
	}
	if !errors.Is(err, mupdate.ErrUnavailable) || errors.Is(err, lookup.ErrNotFound) {
		t.Fatalf("err = %v: want ErrUnavailable and not ErrNotFound", err)
	}
}

func TestLookup(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.alice", "127.0.0.2!default", "alice\tlrswipkxtecdan\t")
	srv.Set("example.com!user.bob", "backend9", "")
	srv.Set("user.john^doe", "10.0.0.2:2003!p2", "anyone\tp\t")
	srv.Reserve("user.newby", "127.0.0.3!default")
	c, _ := newClient(t, testConfig(srv.Addr()))

	tests := []struct {
		name string
		want lookup.Entry
	}{
		{"user.alice", lookup.Entry{Name: "user.alice", Server: "127.0.0.2", Partition: "default", ACL: "alice\tlrswipkxtecdan\t", State: lookup.Active}},
		{"example.com!user.bob", lookup.Entry{Name: "example.com!user.bob", Server: "backend9", State: lookup.Active}},
		{"user.john^doe", lookup.Entry{Name: "user.john^doe", Server: "10.0.0.2:2003", Partition: "p2", ACL: "anyone\tp\t", State: lookup.Active}},
		{"user.newby", lookup.Entry{Name: "user.newby", Server: "127.0.0.3", Partition: "default", State: lookup.Reserved}},
	}
	for _, tt := range tests {
		if got := lookupOK(t, c, tt.name); got != tt.want {
			t.Errorf("Lookup(%q)\n got %+v\nwant %+v", tt.name, got, tt.want)
		}
	}
	for _, name := range []string{"user.nosuch", "user/alice", "", "user.alice\r\nA99 NOOP"} {
		_, err := c.Lookup(context.Background(), name)
		if !errors.Is(err, lookup.ErrNotFound) || errors.Is(err, mupdate.ErrUnavailable) {
			t.Errorf("Lookup(%q) err = %v, want ErrNotFound only", name, err)
		}
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	st := c.Stats()
	if st.Connects != 1 || st.Dials != 1 || st.Queries != 8 || st.State != "connected" {
		t.Errorf("Stats = %+v, want 1 connect, 8 queries, connected", st)
	}
	if srv.Connections() != 1 || srv.Finds() != 8 || srv.FindsFor("user.alice") != 1 || srv.Noops() != 1 {
		t.Errorf("server saw %d connections, %d finds, %d for alice, %d noops", srv.Connections(), srv.Finds(), srv.FindsFor("user.alice"), srv.Noops())
	}
}

func TestConcurrentLookups(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.alice", "be1!default", "")
	c, _ := newClient(t, testConfig(srv.Addr()))
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for range 20 {
		wg.Go(func() {
			for range 10 {
				if _, err := c.Lookup(context.Background(), "user.alice"); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if srv.Connections() != 1 || srv.Finds() != 200 {
		t.Errorf("server saw %d connections and %d finds, want 1 and 200", srv.Connections(), srv.Finds())
	}
}

func TestAuthFailure(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.alice", "be1!default", "")
	cfg := testConfig(srv.Addr())
	cfg.Password = "wrong"
	c, logs := newClient(t, cfg)
	_, err := c.Lookup(context.Background(), "user.alice")
	wantUnavailable(t, err)
	if !strings.Contains(err.Error(), "undefined error!") {
		t.Errorf("error %q does not carry the server's reason", err)
	}
	if srv.Finds() != 0 {
		t.Errorf("FIND sent without authentication")
	}
	if st := c.Stats(); st.State != "backoff" || st.Connects != 0 || st.LastError == "" {
		t.Errorf("Stats = %+v, want backoff, 0 connects, an error", st)
	}
	if !strings.Contains(logs.String(), "mupdate server unreachable") {
		t.Errorf("failure not logged: %s", logs)
	}
}

func TestNoPlainOffered(t *testing.T) {
	addr := scripted(t, "* AUTH \"SCRAM-SHA-1\"\r\n* OK MUPDATE \"x\" \"Cyrus IMAP\" \"3.6\" \"(master)\"\r\n", nil)
	c, _ := newClient(t, testConfig(addr))
	_, err := c.Lookup(context.Background(), "user.alice")
	wantUnavailable(t, err)
	if !strings.Contains(err.Error(), "PLAIN") {
		t.Errorf("error %q does not say PLAIN is missing", err)
	}
}

func TestStartTLSNotOffered(t *testing.T) {
	srv := fakemupdate.New(t)
	cfg := testConfig(srv.Addr())
	cfg.TLS = "starttls"
	c, _ := newClient(t, cfg)
	_, err := c.Lookup(context.Background(), "user.alice")
	wantUnavailable(t, err)
	if !strings.Contains(err.Error(), "STARTTLS") {
		t.Errorf("error %q does not mention STARTTLS", err)
	}
}

// TestServerDownBreaker checks that while the breaker is open lookups fail
// without dialling: ten lookups, one connection attempt.
func TestServerDownBreaker(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	accepts := 0
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepts++
			mu.Unlock()
			conn.Close() // a dying server: accepts, then hangs up
		}
	}()
	cfg := testConfig(ln.Addr().String())
	cfg.BackoffMin, cfg.BackoffMax = time.Hour, time.Hour
	c, logs := newClient(t, cfg)
	for range 10 {
		_, err := c.Lookup(context.Background(), "user.alice")
		wantUnavailable(t, err)
	}
	if st := c.Stats(); st.Dials != 1 || st.State != "backoff" || st.BackoffUntil.IsZero() {
		t.Errorf("Stats = %+v, want 1 dial and backoff", st)
	}
	eventually(t, "the accept to be counted", func() bool { mu.Lock(); defer mu.Unlock(); return accepts >= 1 })
	mu.Lock()
	if accepts != 1 {
		t.Errorf("server saw %d connection attempts, want 1", accepts)
	}
	mu.Unlock()
	if n := strings.Count(logs.String(), "mupdate server unreachable"); n != 1 {
		t.Errorf("logged unreachable %d times, want once:\n%s", n, logs)
	}
}

func TestServerDownThenBack(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.alice", "be1!default", "")
	addr := srv.Addr()
	srv.Stop()
	c, logs := newClient(t, testConfig(addr))
	_, err := c.Lookup(context.Background(), "user.alice")
	wantUnavailable(t, err)
	_, err = c.Lookup(context.Background(), "user.alice")
	wantUnavailable(t, err)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a lookup to succeed after the backoff", func() bool {
		_, err := c.Lookup(context.Background(), "user.alice")
		return err == nil
	})
	if st := c.Stats(); st.State != "connected" || st.Connects != 1 {
		t.Errorf("Stats = %+v, want connected once", st)
	}
	out := logs.String()
	if strings.Count(out, "mupdate server unreachable") != 1 || strings.Count(out, "mupdate server reachable again") != 1 {
		t.Errorf("want one unreachable and one reachable-again log line:\n%s", out)
	}
}

// TestServerRestarted: the server closed our idle connection; the next
// lookup reconnects at once instead of failing.
func TestServerRestarted(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.alice", "be1!default", "")
	c, _ := newClient(t, testConfig(srv.Addr()))
	lookupOK(t, c, "user.alice")
	srv.Stop()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	lookupOK(t, c, "user.alice")
	if st := c.Stats(); st.Connects != 2 || st.State != "connected" {
		t.Errorf("Stats = %+v, want 2 connects", st)
	}
	if srv.Connections() != 2 {
		t.Errorf("server saw %d connections, want 2", srv.Connections())
	}
}

func TestGarbage(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.alice", "be1!default", "")
	c, _ := newClient(t, testConfig(srv.Addr()))
	lookupOK(t, c, "user.alice")
	srv.SetGarbage(true)
	_, err := c.Lookup(context.Background(), "user.alice")
	wantUnavailable(t, err)
	if !errors.Is(err, mupdate.ErrProtocol) {
		t.Errorf("err = %v, want ErrProtocol", err)
	}
	if st := c.Stats(); st.State != "backoff" {
		t.Errorf("State = %q, want backoff", st.State)
	}
	srv.SetGarbage(false)
	eventually(t, "recovery", func() bool {
		_, err := c.Lookup(context.Background(), "user.alice")
		return err == nil
	})
	// The connection that spoke garbage was dropped, not reused.
	if st := c.Stats(); st.Connects != 2 || srv.Connections() != 2 {
		t.Errorf("Stats = %+v, server connections %d: want 2 each", st, srv.Connections())
	}
}

func TestStall(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.alice", "be1!default", "")
	cfg := testConfig(srv.Addr())
	cfg.QueryTimeout = 200 * time.Millisecond
	c, _ := newClient(t, cfg)
	lookupOK(t, c, "user.alice")
	srv.SetStall(true)
	_, err := c.Lookup(context.Background(), "user.alice")
	wantUnavailable(t, err)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("err = %v, want a deadline error", err)
	}
	if st := c.Stats(); st.State != "backoff" {
		t.Errorf("State = %q, want backoff", st.State)
	}
	srv.SetStall(false)
	eventually(t, "recovery", func() bool {
		_, err := c.Lookup(context.Background(), "user.alice")
		return err == nil
	})
}

func TestStallAtGreeting(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.SetStall(true)
	cfg := testConfig(srv.Addr())
	cfg.QueryTimeout = 200 * time.Millisecond
	c, _ := newClient(t, cfg)
	_, err := c.Lookup(context.Background(), "user.alice")
	wantUnavailable(t, err)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("err = %v, want a deadline error", err)
	}
}

// TestCallerCancel: a caller that cancels (its MTA went away) does not
// open the breaker: that says nothing about the server.
func TestCallerCancel(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.SetStall(true)
	cfg := testConfig(srv.Addr())
	cfg.QueryTimeout = time.Minute
	c, _ := newClient(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := c.Lookup(ctx, "user.alice")
	wantUnavailable(t, err)
	if st := c.Stats(); st.State == "backoff" {
		t.Errorf("a cancelled caller opened the breaker: %+v", st)
	}
}

// TestHungServerOpensTheBreaker: a master that accepts the connection and
// never greets (SIGSTOPped) must open the breaker even when the caller's
// deadline is what ends the wait; otherwise every lookup waits for it in
// turn for the whole outage. Later lookups fail at once, and the state is
// not "ok" while nothing has succeeded.
func TestHungServerOpensTheBreaker(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.SetStall(true)
	cfg := testConfig(srv.Addr())
	cfg.QueryTimeout = time.Minute
	cfg.BackoffMin, cfg.BackoffMax = time.Hour, time.Hour
	c, _ := newClient(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Lookup(ctx, "user.alice")
	wantUnavailable(t, err)
	st := c.Stats()
	if st.State != "backoff" || st.Healthy() {
		t.Fatalf("after a lookup timed out on a hung server: %+v", st)
	}
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, err := c.Lookup(ctx, "user.alice")
		cancel()
		wantUnavailable(t, err)
		if !strings.Contains(err.Error(), "not retrying") {
			t.Fatalf("lookup with the breaker open: %v, want an immediate refusal", err)
		}
	}
	if st := c.Stats(); st.Dials != 1 {
		t.Errorf("dials = %d, want 1", st.Dials)
	}
}

// TestHungServerAfterTheBackoff: once the backoff of a hung server has
// passed, the probe tries it, not a lookup: lookups keep failing at once
// (they do not spend their deadline on the server) until a probe has
// succeeded, and then go to the server again.
func TestHungServerAfterTheBackoff(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.alice", "be1!default", "")
	srv.SetStall(true)
	cfg := testConfig(srv.Addr())
	cfg.DialTimeout, cfg.QueryTimeout = time.Minute, 200*time.Millisecond
	cfg.BackoffMin, cfg.BackoffMax = 10*time.Millisecond, 20*time.Millisecond
	c, logs := newClient(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := c.Lookup(ctx, "user.alice")
	cancel()
	wantUnavailable(t, err)
	// Several backoffs pass; the probes time out on the hung server.
	eventually(t, "probes to try the hung server", func() bool { return c.Stats().Dials >= 3 })
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := c.Lookup(ctx, "user.alice")
		waited := ctx.Err()
		cancel()
		wantUnavailable(t, err)
		if waited != nil || !strings.Contains(err.Error(), "not retrying") {
			t.Fatalf("lookup while the server is hung: %v (caller's context: %v), want an immediate refusal", err, waited)
		}
	}
	srv.SetStall(false)
	eventually(t, "a lookup to succeed once the server answers", func() bool {
		_, err := c.Lookup(context.Background(), "user.alice")
		return err == nil
	})
	if st := c.Stats(); st.State != "connected" || !st.Healthy() {
		t.Errorf("Stats = %+v, want connected", st)
	}
	if out := logs.String(); strings.Count(out, "mupdate server unreachable") != 1 || strings.Count(out, "mupdate server reachable again") != 1 {
		t.Errorf("want one unreachable and one reachable-again log line:\n%s", out)
	}
}

func TestKeepAlive(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.alice", "be1!default", "")
	cfg := testConfig(srv.Addr())
	cfg.KeepAlive = 20 * time.Millisecond
	cfg.BackoffMin, cfg.BackoffMax = time.Hour, time.Hour
	c, _ := newClient(t, cfg)
	lookupOK(t, c, "user.alice")
	eventually(t, "keep-alive NOOPs", func() bool { return srv.Noops() >= 2 })
	if srv.Connections() != 1 {
		t.Errorf("keep-alive opened %d connections, want 1", srv.Connections())
	}
	// A server that dies while we are idle is noticed by the keep-alive,
	// before any message asks.
	srv.Stop()
	eventually(t, "breaker to open", func() bool { return c.Stats().State == "backoff" })
	if st := c.Stats(); st.Dials != 1 || !strings.Contains(st.LastError, "keep-alive") {
		t.Errorf("Stats = %+v, want 1 dial and a keep-alive error", st)
	}
}

func TestClose(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.alice", "be1!default", "")
	c, _ := newClient(t, testConfig(srv.Addr()))
	lookupOK(t, c, "user.alice")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err := c.Lookup(context.Background(), "user.alice")
	if !errors.Is(err, mupdate.ErrClosed) || !errors.Is(err, mupdate.ErrUnavailable) {
		t.Fatalf("Lookup after Close: %v", err)
	}
	if err := c.Ping(context.Background()); !errors.Is(err, mupdate.ErrClosed) {
		t.Fatalf("Ping after Close: %v", err)
	}
	if st := c.Stats(); st.State != "closed" {
		t.Errorf("State = %q", st.State)
	}
	if srv.Finds() != 1 {
		t.Errorf("finds = %d, want 1", srv.Finds())
	}
}

// scripted runs a one-connection server that sends greeting, then answers
// the k-th command with replies[k] (the tag "TAG" replaced by the
// command's tag; "CLOSE" hangs up instead). It returns the address.
func scripted(t *testing.T, greeting string, replies []string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		fmt.Fprint(conn, greeting)
		for _, r := range replies {
			cmd, err := mupdate.ReadResponse(br, 0)
			if err != nil {
				return
			}
			if r == "CLOSE" {
				return
			}
			fmt.Fprint(conn, strings.ReplaceAll(r, "TAG", cmd.Tag))
		}
		// Hold the connection until the client hangs up.
		br.ReadByte()
	}()
	return ln.Addr().String()
}

// TestFindAnswers covers answers Cyrus does not give but a broken or
// hostile server might; none may be taken as "not found" or as an entry.
func TestFindAnswers(t *testing.T) {
	const greeting = "* AUTH \"PLAIN\"\r\n* OK MUPDATE \"x\" \"Cyrus IMAP\" \"3.6\" \"(master)\"\r\n"
	const authOK = "TAG OK \"Authenticated\"\r\n"
	tests := []struct {
		name     string
		greeting string
		find     string
		protocol bool
	}{
		{"BYE greeting", "* BYE \"Server Unable\"\r\n", "", false},
		{"not MUPDATE", "* OK IMAP4rev1 ready\r\n", "", true},
		{"NO", greeting, "TAG NO \"internal error\"\r\n", false},
		{"BAD", greeting, "TAG BAD \"Please login first\"\r\n", false},
		{"BYE during FIND", greeting, "* BYE \"shutting down\"\r\n", false},
		{"other name", greeting, "TAG MAILBOX {8+}\r\nuser.bob {3+}\r\nb!d {0+}\r\n\r\nTAG OK \"Search completed\"\r\n", true},
		{"two entries", greeting, "TAG MAILBOX {10+}\r\nuser.alice {3+}\r\nb!d {0+}\r\n\r\nTAG RESERVE {10+}\r\nuser.alice {3+}\r\nb!d\r\nTAG OK \"x\"\r\n", true},
		{"short MAILBOX", greeting, "TAG MAILBOX {10+}\r\nuser.alice\r\nTAG OK \"x\"\r\n", true},
		{"empty server", greeting, "TAG MAILBOX {10+}\r\nuser.alice {8+}\r\n!default {0+}\r\n\r\nTAG OK \"x\"\r\n", true},
		{"wrong tag", greeting, "Z99 OK \"Search completed\"\r\n", true},
		{"DELETE", greeting, "TAG DELETE {10+}\r\nuser.alice\r\nTAG OK \"x\"\r\n", true},
		{"EOF", greeting, "CLOSE", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var replies []string
			if tt.greeting == greeting {
				replies = []string{authOK, tt.find}
			}
			c, _ := newClient(t, testConfig(scripted(t, tt.greeting, replies)))
			_, err := c.Lookup(context.Background(), "user.alice")
			wantUnavailable(t, err)
			if tt.protocol && !errors.Is(err, mupdate.ErrProtocol) {
				t.Errorf("err = %v, want ErrProtocol", err)
			}
		})
	}
}

// Dial reads the capabilities the master offers, which the replica's
// stream uses to decide on COMPRESS.
func TestDialGreeting(t *testing.T) {
	srv := fakemupdate.New(t)
	conn, err := mupdate.Dial(context.Background(), mupdate.Endpoint{
		Address: srv.Addr(), AuthName: fakemupdate.DefaultUser, Password: fakemupdate.DefaultPassword,
		DialTimeout: 5 * time.Second, HandshakeTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	g := conn.Greeting
	if !g.Compress || !g.PartialUpdate || g.StartTLS || len(g.Mechanisms) != 2 || g.Banner[len(g.Banner)-1] != "(master)" {
		t.Errorf("greeting %+v", g)
	}
	if _, err := mupdate.Dial(context.Background(), mupdate.Endpoint{Address: srv.Addr(), TLS: "yes"}); err == nil {
		t.Error("Dial accepted TLS mode \"yes\"")
	}
	bad := mupdate.Endpoint{Address: srv.Addr(), AuthName: fakemupdate.DefaultUser, Password: "wrong", HandshakeTimeout: 5 * time.Second}
	if _, err := mupdate.Dial(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "authentication") {
		t.Errorf("Dial with a wrong password: %v", err)
	}
}
