package lookup

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeSource struct {
	name    string
	entries map[string]Entry
	err     error // returned for everything when set
	calls   atomic.Int64
	block   chan struct{}
}

func (f *fakeSource) Name() string { return f.name }

func (f *fakeSource) Lookup(ctx context.Context, mailbox string) (Entry, error) {
	f.calls.Add(1)
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return Entry{}, ctx.Err()
		}
	}
	if f.err != nil {
		return Entry{}, f.err
	}
	if e, ok := f.entries[mailbox]; ok {
		return e, nil
	}
	return Entry{}, ErrNotFound
}

var errDown = errors.New("connection refused")

func TestChainVerdicts(t *testing.T) {
	alice := Entry{Name: "user.alice", Server: "be1"}
	has := func(name string) *fakeSource {
		return &fakeSource{name: name, entries: map[string]Entry{"user.alice": alice}}
	}
	empty := func(name string) *fakeSource { return &fakeSource{name: name} }
	down := func(name string) *fakeSource { return &fakeSource{name: name, err: errDown} }
	cases := []struct {
		name       string
		sources    []Source
		want       Status
		wantSource string
	}{
		{"first source finds", []Source{has("db"), down("master")}, Found, "db"},
		{"failed source passes on", []Source{down("db"), has("master")}, Found, "master"},
		{"miss asks the next source", []Source{empty("db"), has("master")}, Found, "master"},
		{"all answered no", []Source{empty("db"), empty("master")}, NotFound, ""},
		{"one no, one down: 550", []Source{empty("db"), down("master")}, NotFound, ""},
		{"down then no: 550", []Source{down("db"), empty("master")}, NotFound, ""},
		{"none answered: 451", []Source{down("db"), down("master")}, Unavailable, ""},
		{"no sources: 451", nil, Unavailable, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := NewChain(time.Second, tc.sources...).Resolve(context.Background(), "user.alice", true)
			if res.Status != tc.want || res.Source != tc.wantSource {
				t.Fatalf("got %v from %q, want %v from %q", res.Status, res.Source, tc.want, tc.wantSource)
			}
			if tc.want == Found && res.Entry != alice {
				t.Fatalf("entry %+v", res.Entry)
			}
			if tc.want == Unavailable && res.Err == nil {
				t.Fatal("unavailable without an error")
			}
			if len(res.Trace) == 0 && len(tc.sources) > 0 {
				t.Fatal("no trace")
			}
		})
	}
}

func TestChainTimeoutPerSource(t *testing.T) {
	stuck := &fakeSource{name: "master", block: make(chan struct{})}
	defer close(stuck.block)
	db := &fakeSource{name: "db", entries: map[string]Entry{"user.bob": {Name: "user.bob", Server: "be2"}}}
	res := NewChain(20*time.Millisecond, stuck, db).Resolve(context.Background(), "user.bob", false)
	if res.Status != Found || res.Source != "db" {
		t.Fatalf("stuck source was not passed over: %+v", res)
	}
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestCacheTTLs(t *testing.T) {
	src := &fakeSource{name: "master-mupdate", entries: map[string]Entry{"user.alice": {Name: "user.alice", Server: "be1"}}}
	c := NewCache(src, CacheConfig{PositiveTTL: 30 * time.Second, NegativeTTL: 5 * time.Second, MaxEntries: 100})
	clk := &clock{t: time.Unix(1000, 0)}
	c.now = clk.now
	ctx := context.Background()
	for range 10 {
		if _, err := c.Lookup(ctx, "user.alice"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Lookup(ctx, "user.nobody"); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
	}
	if n := src.calls.Load(); n != 2 {
		t.Fatalf("source asked %d times, want 2", n)
	}
	clk.t = clk.t.Add(6 * time.Second) // negative entry expired, positive not
	c.Lookup(ctx, "user.alice")
	c.Lookup(ctx, "user.nobody")
	if n := src.calls.Load(); n != 3 {
		t.Fatalf("source asked %d times, want 3", n)
	}
	clk.t = clk.t.Add(31 * time.Second)
	c.Lookup(ctx, "user.alice")
	if n := src.calls.Load(); n != 4 {
		t.Fatalf("source asked %d times, want 4", n)
	}
}

func TestCacheDoesNotCacheFailures(t *testing.T) {
	src := &fakeSource{name: "master-mupdate", err: errDown}
	c := NewCache(src, CacheConfig{PositiveTTL: time.Minute, NegativeTTL: time.Minute, MaxEntries: 100})
	for range 3 {
		if _, err := c.Lookup(context.Background(), "user.alice"); !errors.Is(err, errDown) {
			t.Fatalf("err = %v", err)
		}
	}
	if n := src.calls.Load(); n != 3 {
		t.Fatalf("failures were cached: %d calls", n)
	}
}

func TestCacheCoalescesConcurrentQuestions(t *testing.T) {
	src := &fakeSource{name: "master-mupdate", entries: map[string]Entry{"user.alice": {Name: "user.alice"}}, block: make(chan struct{})}
	c := NewCache(src, CacheConfig{PositiveTTL: time.Minute, NegativeTTL: time.Minute, MaxEntries: 100})
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Lookup(context.Background(), "user.alice"); err != nil {
				t.Error(err)
			}
		}()
	}
	// Let the goroutines pile up on the one in-flight query.
	for src.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(src.block)
	wg.Wait()
	if n := src.calls.Load(); n != 1 {
		t.Fatalf("source asked %d times, want 1", n)
	}
}

func TestCacheBounded(t *testing.T) {
	src := &fakeSource{name: "m", entries: map[string]Entry{}}
	c := NewCache(src, CacheConfig{PositiveTTL: time.Minute, NegativeTTL: time.Minute, MaxEntries: 16})
	for i := range 1000 {
		c.Lookup(context.Background(), string(rune('a'+i%26))+string(rune(i)))
	}
	if _, _, n := c.Stats(); n > 16 {
		t.Fatalf("cache holds %d entries, max 16", n)
	}
}

func TestRights(t *testing.T) {
	cases := []struct{ acl, id, want string }{
		{"anyone\tlrsp\t", "anonymous", "lprs"},
		{"alice\tlrswipkxtecdan\tanyone\tp\t", "anonymous", "p"},
		{"alice\tlrswipkxtecdan\t", "anonymous", ""},
		{"alice\tlr\t", "alice", "lr"},
		{"anyone\tlrsp\t-anyone\tp\t", "anonymous", "lrs"},
		{"anonymous\tp\t", "anonymous", "p"},
		{"", "anonymous", ""},
		{"garbage", "anonymous", ""},
	}
	for _, tc := range cases {
		if got := Rights(tc.acl, tc.id); got != tc.want {
			t.Errorf("Rights(%q, %q) = %q, want %q", tc.acl, tc.id, got, tc.want)
		}
	}
}

// peekSource answers hits from Peek; only misses reach its Lookup.
type peekSource struct {
	fakeSource
	peeks atomic.Int64
}

func (p *peekSource) Peek(mailbox string) (Entry, bool) {
	p.peeks.Add(1)
	e, ok := p.entries[mailbox]
	return e, ok
}

// A source that can answer from memory is peeked first: a hit never
// reaches Lookup (no timer per question), a miss does, within the
// chain's timeout, and the trace and verdict are the same either way.
func TestChainPeeks(t *testing.T) {
	p := &peekSource{fakeSource: fakeSource{name: "mem", entries: map[string]Entry{"user.a": {Name: "user.a", Server: "be1"}}}}
	c := NewChain(time.Second, p)
	r := c.Resolve(context.Background(), "user.a", true)
	if r.Status != Found || r.Entry.Server != "be1" || r.Source != "mem" || len(r.Trace) != 1 {
		t.Fatalf("hit: %+v", r)
	}
	if p.calls.Load() != 0 || p.peeks.Load() != 1 {
		t.Errorf("hit: %d Lookup calls, %d peeks; want 0 and 1", p.calls.Load(), p.peeks.Load())
	}
	if r := c.Resolve(context.Background(), "user.nosuch", false); r.Status != NotFound {
		t.Fatalf("miss: %+v", r)
	}
	if p.calls.Load() != 1 {
		t.Errorf("miss: %d Lookup calls, want 1", p.calls.Load())
	}
}

func TestInterner(t *testing.T) {
	in := NewInterner()
	if i, ok := in.Index(nil); i != 0 || !ok {
		t.Fatalf(`Index("") = %d, %v`, i, ok)
	}
	a, _ := in.Index([]byte("be1"))
	b, _ := in.Index([]byte("default"))
	if again, _ := in.Index([]byte("be1")); again != a || a == b || a == 0 {
		t.Fatalf("indexes be1 %d, default %d, be1 again %d", a, b, again)
	}
	if s := in.Strings(); s[0] != "" || s[a] != "be1" || s[b] != "default" {
		t.Fatalf("Strings() = %q", s)
	}
	for n := len(in.Strings()); n < 65535; n++ {
		if _, ok := in.Index([]byte(strconv.Itoa(n))); !ok {
			t.Fatalf("full after %d strings", n)
		}
	}
	if _, ok := in.Index([]byte("one too many")); ok {
		t.Fatal("a 65,536th string was taken")
	}
	if i, ok := in.Index([]byte("be1")); i != a || !ok {
		t.Fatal("a known string refused once the table is full")
	}
}
