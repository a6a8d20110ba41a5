package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mupdate/fakemupdate"
	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

// testConfig is DefaultConfig for the fake: short backoff so that
// reconnecting tests run quickly, a snapshot in a fresh directory, and
// timeouts long enough never to fire by accident.
func testConfig(t testing.TB, addr string) Config {
	cfg := DefaultConfig()
	cfg.Address = addr
	cfg.AuthName = fakemupdate.DefaultUser
	cfg.Password = fakemupdate.DefaultPassword
	cfg.BackoffMin, cfg.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
	cfg.MissWait = 10 * time.Second
	cfg.SnapshotPath = filepath.Join(t.TempDir(), DefaultSnapshotName)
	cfg.SnapshotInterval = 0
	return cfg
}

func newReplica(t testing.TB, cfg Config) (*Replica, *testkit.SyncBuffer) {
	t.Helper()
	logs := &testkit.SyncBuffer{}
	r, err := New(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		if t.Failed() {
			t.Logf("replica log:\n%s", logs)
		}
	})
	return r, logs
}

// eventually waits for cond; the bound only prevents a hang.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, 30*time.Second, what, cond)
}

func waitStreaming(t testing.TB, r *Replica) {
	t.Helper()
	eventually(t, "streaming", func() bool { return r.Status().Stream == StreamStreaming })
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustFind(t testing.TB, r *Replica, name string) lookup.Entry {
	t.Helper()
	e, err := r.Lookup(ctxT(t), name)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", name, err)
	}
	return e
}

func wantNotFound(t testing.TB, r *Replica, name string) {
	t.Helper()
	if _, err := r.Lookup(ctxT(t), name); !errors.Is(err, lookup.ErrNotFound) {
		t.Fatalf("Lookup(%q) err = %v, want ErrNotFound", name, err)
	}
}

func wantUnavailable(t testing.TB, err error) {
	t.Helper()
	if err == nil || !errors.Is(err, ErrUnavailable) || errors.Is(err, lookup.ErrNotFound) {
		t.Fatalf("err = %v: want ErrUnavailable and not ErrNotFound", err)
	}
}

func fill(srv *fakemupdate.Server) {
	srv.Set("user.alice", "127.0.0.2!default", "alice\tlrswipkxtecdan\t")
	srv.Set("user.alice.Sub", "127.0.0.2!default", "alice\tlrswipkxtecdan\tanyone\tp\t")
	srv.Set("example.com!user.bob", "backend9", "")
	srv.Set("user.john^doe", "10.0.0.2:2003!p2", "anyone\tp\t")
	srv.Set("bb.b", "127.0.0.2!", "anyone\tlrsp\t")
	srv.Reserve("user.newby", "127.0.0.3!default")
}

func TestDumpThenLookups(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	r.Start()
	waitStreaming(t, r)
	<-r.Ready()
	tests := []struct {
		name string
		want lookup.Entry
	}{
		{"user.alice", lookup.Entry{Name: "user.alice", Server: "127.0.0.2", Partition: "default", ACL: "alice\tlrswipkxtecdan\t", State: lookup.Active}},
		{"user.alice.Sub", lookup.Entry{Name: "user.alice.Sub", Server: "127.0.0.2", Partition: "default", ACL: "alice\tlrswipkxtecdan\tanyone\tp\t", State: lookup.Active}},
		{"example.com!user.bob", lookup.Entry{Name: "example.com!user.bob", Server: "backend9", State: lookup.Active}},
		{"user.john^doe", lookup.Entry{Name: "user.john^doe", Server: "10.0.0.2:2003", Partition: "p2", ACL: "anyone\tp\t", State: lookup.Active}},
		// Cyrus 3.6 leaves the partition empty after a rename.
		{"bb.b", lookup.Entry{Name: "bb.b", Server: "127.0.0.2", ACL: "anyone\tlrsp\t", State: lookup.Active}},
		{"user.newby", lookup.Entry{Name: "user.newby", Server: "127.0.0.3", Partition: "default", State: lookup.Reserved}},
	}
	for _, tt := range tests {
		if got := mustFind(t, r, tt.name); got != tt.want {
			t.Errorf("Lookup(%q)\n got %+v\nwant %+v", tt.name, got, tt.want)
		}
	}
	for _, name := range []string{"user.nosuch", "user/alice", "USER.ALICE", "", "user.alice\r\nN1 NOOP"} {
		wantNotFound(t, r, name)
	}
	st := r.Status()
	if st.Mailboxes != len(tests) || st.List != "dump" || st.Stale || st.Dumps != 1 || st.Connects != 1 || st.LastDumpMailboxes != len(tests) {
		t.Errorf("status %+v", st)
	}
	if !strings.Contains(st.String(), "streaming, 6 mailboxes, current") {
		t.Errorf("status line %q", st)
	}
	if r.Name() != "master-replica" {
		t.Errorf("Name() = %q", r.Name())
	}
}

// Until the first dump completes, and without a snapshot, the replica
// cannot tell a missing mailbox from one it has not heard of yet: every
// lookup is unavailable, never "not found".
func TestUnavailableBeforeFirstDump(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	srv.Stop()
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	_, err := r.Lookup(ctxT(t), "user.alice")
	wantUnavailable(t, err)
	r.Start()
	eventually(t, "a failed connection", func() bool { return r.Status().Failures > 0 })
	for _, name := range []string{"user.alice", "user.nosuch"} {
		_, err := r.Lookup(ctxT(t), name)
		wantUnavailable(t, err)
	}
	if st := r.Status(); st.List != "" || st.Stream != StreamBackoff && st.Stream != StreamConnecting {
		t.Errorf("status %+v", st)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitStreaming(t, r)
	mustFind(t, r, "user.alice")
	wantNotFound(t, r, "user.nosuch")
}

// Changes pushed on the stream reach the list; Sync is the barrier.
func TestPushes(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	r.Start()
	waitStreaming(t, r)

	srv.Set("user.carol", "127.0.0.3!default", "carol\tlrswipkxtecdan\t")
	srv.Delete("user.alice.Sub")
	srv.Set("user.alice", "127.0.0.9!p", "alice\tlr\t")
	srv.Reserve("user.newby2", "127.0.0.2!default")
	if err := r.Sync(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if e := mustFind(t, r, "user.carol"); e.Server != "127.0.0.3" || e.State != lookup.Active {
		t.Errorf("user.carol: %+v", e)
	}
	if e := mustFind(t, r, "user.alice"); e.Server != "127.0.0.9" || e.Partition != "p" || e.ACL != "alice\tlr\t" {
		t.Errorf("user.alice: %+v", e)
	}
	if e := mustFind(t, r, "user.newby2"); e.State != lookup.Reserved {
		t.Errorf("user.newby2: %+v", e)
	}
	wantNotFound(t, r, "user.alice.Sub")
	if st := r.Status(); st.Mailboxes != 7 || st.Pushes != 4 {
		t.Errorf("status %+v: want 7 mailboxes, 4 pushes", st)
	}
}

// A mailbox the master has but has not pushed yet (Cyrus holds pushes for
// up to 5 s) is found by a miss, which sends NOOP and waits for the
// pushes that come before its answer.
func TestMissWaitsForNoopBarrier(t *testing.T) {
	for _, tt := range []struct {
		name     string
		missWait time.Duration
		found    bool
	}{
		{"barrier", 10 * time.Second, true},
		// Without the barrier the same miss is a miss: the test above
		// proves something.
		{"no barrier", 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := fakemupdate.New(t)
			fill(srv)
			srv.HoldPushes(true)
			cfg := testConfig(t, srv.Addr())
			cfg.MissWait = tt.missWait
			r, _ := newReplica(t, cfg)
			r.Start()
			waitStreaming(t, r)
			srv.Set("user.fresh", "127.0.0.3!default", "fresh\tlrswipkxtecdan\t")
			noops := srv.Noops()
			e, err := r.Lookup(ctxT(t), "user.fresh")
			if tt.found {
				if err != nil || e.Server != "127.0.0.3" {
					t.Fatalf("Lookup(user.fresh) = %+v, %v", e, err)
				}
				if srv.Noops() != noops+1 {
					t.Errorf("%d NOOPs for one miss", srv.Noops()-noops)
				}
			} else if !errors.Is(err, lookup.ErrNotFound) {
				t.Fatalf("Lookup(user.fresh) err = %v, want ErrNotFound", err)
			}
			// A hit sends nothing.
			noops = srv.Noops()
			mustFind(t, r, "user.alice")
			if srv.Noops() != noops {
				t.Error("a hit sent a NOOP")
			}
		})
	}
}

// Concurrent misses share NOOPs: one in flight, and every miss that comes
// meanwhile waits for the next one.
func TestConcurrentMissesShareNoops(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	r.Start()
	waitStreaming(t, r)
	noops := srv.Noops()
	const misses = 200
	var wg sync.WaitGroup
	errs := make(chan error, misses)
	start := make(chan struct{})
	for i := range misses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := r.Lookup(context.Background(), fmt.Sprintf("user.nosuch%d", i)); !errors.Is(err, lookup.ErrNotFound) {
				errs <- err
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("miss: %v", err)
	}
	if n := srv.Noops() - noops; n < 1 || n > misses/4 {
		t.Errorf("%d misses sent %d NOOPs", misses, n)
	}
}

// Once the stream is gone, the list is served as it was, marked stale;
// the replica reconnects and a new dump replaces the list in one step.
func TestDroppedStreamRedumps(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	r.Start()
	waitStreaming(t, r)

	srv.Stop()
	eventually(t, "the stream to fail", func() bool { return r.Status().Failures > 0 })
	st := r.Status()
	if !st.Stale || st.List != "dump" || st.Mailboxes != 6 || st.AsOf.IsZero() || st.Stream == StreamStreaming {
		t.Errorf("status while down %+v", st)
	}
	if !strings.Contains(st.String(), "stale") {
		t.Errorf("status line %q", st)
	}
	mustFind(t, r, "user.alice")
	// A miss while the stream is down answers from the list.
	wantNotFound(t, r, "user.gone-meanwhile")

	// Meanwhile the master changed: the re-dump brings it all.
	srv.Delete("user.alice")
	srv.Set("user.meanwhile", "127.0.0.2!default", "")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a second dump", func() bool { return r.Status().Dumps == 2 })
	waitStreaming(t, r)
	wantNotFound(t, r, "user.alice")
	mustFind(t, r, "user.meanwhile")
	if st := r.Status(); st.Stale || st.Mailboxes != 6 || srv.Updates() != 2 {
		t.Errorf("status after the re-dump %+v, %d UPDATEs", st, srv.Updates())
	}
}

// With StaleMissUnavailable a miss while the stream is down is a 4xx.
func TestStaleMissUnavailable(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	cfg := testConfig(t, srv.Addr())
	cfg.StaleMissUnavailable = true
	r, _ := newReplica(t, cfg)
	r.Start()
	waitStreaming(t, r)
	srv.Stop()
	eventually(t, "the stream to fail", func() bool { return r.Status().Failures > 0 })
	mustFind(t, r, "user.alice")
	_, err := r.Lookup(ctxT(t), "user.nosuch")
	wantUnavailable(t, err)
	// In no-master mode the last list is all there is.
	r.Stop()
	wantNotFound(t, r, "user.nosuch")
}

// A master frozen in the middle of a dump (TCP open, no more bytes) is
// noticed by DumpIdleTimeout and counted as a failure; meanwhile the old
// list is served whole, and the next dump replaces it.
func TestFrozenMidDump(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.SetSynthetic(50000, "127.0.0.2", "127.0.0.3")
	cfg := testConfig(t, srv.Addr())
	cfg.DumpIdleTimeout = 300 * time.Millisecond
	r, _ := newReplica(t, cfg)
	r.Start()
	waitStreaming(t, r)

	srv.SetDumpStall(100)
	srv.DropConnections()
	eventually(t, "a stalled dump", func() bool { return r.Status().Stream == StreamDumping })
	// The last mailbox of the old list is far beyond what the stalled
	// dump sent: it is served from the old list.
	if e := mustFind(t, r, "user.u0049999"); e.Server != "127.0.0.3" {
		t.Errorf("user.u0049999: %+v", e)
	}
	st := r.Status()
	if st.Mailboxes != 50000 || !st.Stale || st.Failures != 1 {
		t.Errorf("status during the stalled dump %+v", st)
	}
	eventually(t, "the stalled dump to fail", func() bool { return r.Status().Failures > st.Failures })
	if st := r.Status(); !strings.Contains(st.LastError, "timeout") {
		t.Errorf("last error %q, want a timeout", st.LastError)
	}
	srv.SetDumpStall(-1)
	eventually(t, "a complete second dump", func() bool { return r.Status().Dumps == 2 })
	mustFind(t, r, "user.u0049999")
}

// A master that accepts the connection and never greets (SIGSTOPped) is a
// failure after QueryTimeout, and lookups meanwhile return at once.
func TestFrozenAtGreeting(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	srv.SetStall(true)
	cfg := testConfig(t, srv.Addr())
	cfg.QueryTimeout = 200 * time.Millisecond
	r, _ := newReplica(t, cfg)
	r.Start()
	eventually(t, "a failure", func() bool { return r.Status().Failures > 0 })
	if st := r.Status(); !strings.Contains(st.LastError, "greeting") {
		t.Errorf("last error %q", st.LastError)
	}
	_, err := r.Lookup(ctxT(t), "user.alice")
	wantUnavailable(t, err)
	srv.SetStall(false)
	waitStreaming(t, r)
	mustFind(t, r, "user.alice")
}

// A master that stops answering while streaming is noticed by the
// keep-alive NOOP; a miss meanwhile is bounded by MissWait and is
// unavailable, not "not found".
func TestFrozenWhileStreaming(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	cfg := testConfig(t, srv.Addr())
	cfg.KeepAlive = 100 * time.Millisecond
	cfg.QueryTimeout = 300 * time.Millisecond
	cfg.MissWait = 100 * time.Millisecond
	r, _ := newReplica(t, cfg)
	r.Start()
	waitStreaming(t, r)
	srv.SetStall(true)
	_, err := r.Lookup(ctxT(t), "user.nosuch")
	wantUnavailable(t, err)
	mustFind(t, r, "user.alice")
	eventually(t, "the frozen stream to fail", func() bool { return r.Status().Failures > 0 })
	srv.SetStall(false)
	eventually(t, "a second dump", func() bool { return r.Status().Dumps == 2 })
}

// A lookup's context bounds a miss even when MissWait is long.
func TestMissBoundedByContext(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	r.Start()
	waitStreaming(t, r)
	srv.SetStall(true)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := r.Lookup(ctx, "user.nosuch")
	wantUnavailable(t, err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the context's deadline", err)
	}
}

// No-master mode: Stop closes the connection to the master and opens no
// other; the last list is served and a miss is "not found". Start brings
// the stream back with a fresh dump.
func TestStopStart(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	r.Start()
	waitStreaming(t, r)
	r.Stop()
	eventually(t, "no connection to the master", func() bool { return srv.OpenConnections() == 0 })
	conns := srv.Connections()
	if st := r.Status(); st.Stream != StreamStopped || !st.Stale || st.Mailboxes != 6 {
		t.Errorf("status when stopped %+v", st)
	}
	mustFind(t, r, "user.alice")
	wantNotFound(t, r, "user.nosuch")
	if err := r.Sync(ctxT(t)); err == nil {
		t.Error("Sync succeeded with the stream stopped")
	}
	r.Stop() // idempotent
	if srv.Connections() != conns {
		t.Errorf("%d connections while stopped", srv.Connections()-conns)
	}
	srv.Set("user.later", "127.0.0.2!default", "")
	r.SetActive(true)
	waitStreaming(t, r)
	mustFind(t, r, "user.later")
	if srv.Updates() != 2 {
		t.Errorf("%d UPDATEs, want 2", srv.Updates())
	}
}

// A move shows as RESERVE at the old server, then MAILBOX at the new one:
// the mailbox is never missing in between.
func TestMove(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	r.Start()
	waitStreaming(t, r)
	steps := []struct {
		do   func()
		want lookup.Entry
	}{
		{func() { srv.Reserve("user.alice", "127.0.0.2!default") }, lookup.Entry{Name: "user.alice", Server: "127.0.0.2", Partition: "default", State: lookup.Reserved}},
		{func() { srv.Set("user.alice", "127.0.0.3!default", "alice\tlrswipkxtecdan\t") }, lookup.Entry{Name: "user.alice", Server: "127.0.0.3", Partition: "default", ACL: "alice\tlrswipkxtecdan\t", State: lookup.Active}},
	}
	for _, s := range steps {
		s.do()
		if err := r.Sync(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		if got := mustFind(t, r, "user.alice"); got != s.want {
			t.Errorf("got %+v, want %+v", got, s.want)
		}
	}
}

// With Compress the stream is deflated both ways.
func TestCompress(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	cfg := testConfig(t, srv.Addr())
	cfg.Compress = true
	r, _ := newReplica(t, cfg)
	r.Start()
	waitStreaming(t, r)
	if srv.Compressions() != 1 {
		t.Fatalf("%d COMPRESS, want 1", srv.Compressions())
	}
	mustFind(t, r, "user.alice")
	srv.HoldPushes(true)
	srv.Set("user.fresh", "127.0.0.3!default", "")
	if e := mustFind(t, r, "user.fresh"); e.Server != "127.0.0.3" {
		t.Errorf("user.fresh %+v", e)
	}
}

// The master's pushes carry the same mailbox once per change, and a
// deleted mailbox may come back: the list follows the last one.
func TestRepeatedPushes(t *testing.T) {
	srv := fakemupdate.New(t)
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	r.Start()
	waitStreaming(t, r)
	srv.HoldPushes(true)
	srv.Reserve("bb.x", "127.0.0.2!default")
	srv.Set("bb.x", "127.0.0.2!default", "anyone\tlrsp\t")
	srv.Delete("bb.x")
	srv.Set("bb.x", "127.0.0.3!default", "anyone\tlrsp\t")
	if err := r.Sync(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if e := mustFind(t, r, "bb.x"); e.Server != "127.0.0.3" {
		t.Errorf("bb.x %+v", e)
	}
	if st := r.Status(); st.Mailboxes != 1 || st.Pushes != 4 {
		t.Errorf("status %+v", st)
	}
}

// Many changes are folded into a new list in the background, so the
// overlay copied for each burst stays small; nothing is lost on the way.
func TestCompaction(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.SetSynthetic(1000, "127.0.0.2")
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	r.Start()
	waitStreaming(t, r)
	const n = compactAt + 500
	for i := range n {
		srv.Set(fmt.Sprintf("user.c%05d", i), "127.0.0.3!default", "")
	}
	if err := r.Sync(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a compaction", func() bool {
		r.Sync(ctxT(t))
		return len(r.view.Load().over) < compactAt
	})
	for i := range n {
		if e := mustFind(t, r, fmt.Sprintf("user.c%05d", i)); e.Server != "127.0.0.3" {
			t.Fatalf("user.c%05d: %+v", i, e)
		}
	}
	mustFind(t, r, "user.u0000999")
	if st := r.Status(); st.Mailboxes != 1000+n {
		t.Errorf("%d mailboxes, want %d", st.Mailboxes, 1000+n)
	}
}

// A hit allocates nothing, from the base list and from the overlay.
func TestLookupDoesNotAllocate(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	r.Start()
	waitStreaming(t, r)
	srv.Set("user.pushed", "127.0.0.3!default", "")
	if err := r.Sync(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, name := range []string{"user.alice", "user.pushed"} {
		allocs := testing.AllocsPerRun(1000, func() {
			if _, err := r.Lookup(ctx, name); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("Lookup(%q) allocates %v times", name, allocs)
		}
	}
}

func TestClose(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	r, _ := newReplica(t, testConfig(t, srv.Addr()))
	r.Start()
	waitStreaming(t, r)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := r.Lookup(ctxT(t), "user.alice")
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Lookup after Close: %v", err)
	}
	r.Start() // does nothing
	if st := r.Status(); st.Stream != StreamClosed {
		t.Errorf("status after Close %+v", st)
	}
	eventually(t, "no connection", func() bool { return srv.OpenConnections() == 0 })
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.Address = "127.0.0.1:3905"
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults with an address: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*Config)
	}{
		{"no address", func(c *Config) { c.Address = "" }},
		{"tls mode", func(c *Config) { c.TLS = "yes" }},
		{"dial timeout", func(c *Config) { c.DialTimeout = 0 }},
		{"query timeout", func(c *Config) { c.QueryTimeout = 0 }},
		{"dump idle", func(c *Config) { c.DumpIdleTimeout = 0 }},
		{"keep-alive", func(c *Config) { c.KeepAlive = 0 }},
		{"backoff min", func(c *Config) { c.BackoffMin = 0 }},
		{"backoff order", func(c *Config) { c.BackoffMax = c.BackoffMin / 2 }},
		{"miss wait", func(c *Config) { c.MissWait = -1 }},
		{"snapshot interval", func(c *Config) { c.SnapshotInterval = -1 }},
		{"max literal", func(c *Config) { c.MaxLiteral = 0 }},
		{"max literal too big", func(c *Config) { c.MaxLiteral = MaxMaxLiteral + 1 }},
	}
	for _, tt := range tests {
		c := ok
		tt.mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
		if _, err := New(c, nil); err == nil {
			t.Errorf("%s: New accepted", tt.name)
		}
	}
}
