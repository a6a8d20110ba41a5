package mboxlist

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/cyrusdb"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// memSource is an in-memory record list.
type memSource [][2]string

func (m memSource) ForEach(fn func(k, v []byte) error) error {
	for _, r := range m {
		if err := fn([]byte(r[0]), []byte(r[1])); err != nil {
			return err
		}
	}
	return nil
}

func (m memSource) Len() int { return len(m) }

// synthSource generates n 3.6-format frontend entries without holding
// them all in memory: user.u<i> on one of eight backends.
type synthSource int

func synthName(i int) string { return "user.u" + strconv.Itoa(i) }

func (n synthSource) ForEach(fn func(k, v []byte) error) error {
	var k, v []byte
	for i := 0; i < int(n); i++ {
		k = append(k[:0], "Nuser\x1fu"...)
		k = strconv.AppendInt(k, int64(i), 10)
		v = append(v[:0], "%(T er P default S backend"...)
		v = strconv.AppendInt(v, int64(i%8), 10)
		v = append(v, " M 1718000000 A %(u"...)
		v = strconv.AppendInt(v, int64(i), 10)
		v = append(v, " lrswipkxtecdan))"...)
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

func (n synthSource) Len() int { return int(n) }

func TestIndexLookup(t *testing.T) {
	src := memSource{
		{"Iuid1", "%(T e N user\x1fa P default)"},
		{"Nuser\x1fa", "%(T er P default S b1 A %(a lrs))"},
		{"Nuser\x1fz", "%(T erz P default S b1 A %())"},
		{"Nuser\x1fm", "%(T erm P default S b2 A %())"},
		{"Nuser\x1fd", "%(T erd P default S b2)"},
		{"Nuser\x1fbroken", "%(T er P"},
		{"Nuser\x1fdup", "%(T er P default S b1)"},
		{"Nuser\x1fdup^x", "%(T er P default S b1)"},
		{"Nuser\x1fsame", "%(T er P default S b1)"},
	}
	x, st, err := buildIndex(src)
	if err != nil {
		t.Fatal(err)
	}
	if st.firstBad == nil || x.Broken() != 1 {
		t.Errorf("firstBad = %v, broken = %d; want the broken record reported", st.firstBad, x.Broken())
	}
	tests := []struct {
		name string
		want lookup.Entry
		err  error
	}{
		{"user.a", lookup.Entry{Name: "user.a", Server: "b1", Partition: "default", ACL: "a\tlrs\t"}, nil},
		{"user.z", lookup.Entry{Name: "user.z", Server: "b1", Partition: "default", State: lookup.Reserved}, nil},
		{"user.m", lookup.Entry{Name: "user.m", Server: "b2", Partition: "default", State: lookup.Moving}, nil},
		{"user.d", lookup.Entry{}, lookup.ErrNotFound},
		{"user.broken", lookup.Entry{}, ErrBrokenEntry},
		{"user.dup", lookup.Entry{Name: "user.dup", Server: "b1", Partition: "default"}, nil},
		{"user.nobody", lookup.Entry{}, lookup.ErrNotFound},
		{"", lookup.Entry{}, lookup.ErrNotFound},
		{"uid1", lookup.Entry{}, lookup.ErrNotFound},
	}
	for _, tc := range tests {
		got, err := x.Lookup(tc.name)
		if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
			t.Errorf("Lookup(%q) error = %v, want %v", tc.name, err, tc.err)
		}
		if got != tc.want {
			t.Errorf("Lookup(%q) = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// Two records that convert to one internal name but route differently
// make the routing of that name unknown, not one of the two at random.
func TestIndexConflictingDuplicate(t *testing.T) {
	src := memSource{
		{"user.x", "%(A %() P default S b1 T r)"},
		{"user.x", "%(A %() P default S b2 T r)"},
		{"user.y", "%(A %() P default S b1 T r)"},
		{"user.y", "%(A %(y lrs) P default S b1 T r)"},
	}
	x, _, err := buildIndex(src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x.Lookup("user.x"); !errors.Is(err, ErrBrokenEntry) {
		t.Errorf("conflicting duplicate: error %v, want ErrBrokenEntry", err)
	}
	if e, err := x.Lookup("user.y"); err != nil || e.Server != "b1" {
		t.Errorf("agreeing duplicate: %+v, %v", e, err)
	}
}

func TestIndexEmptyIsValid(t *testing.T) {
	x, _, err := buildIndex(memSource{{"Iabc", "%(T e N user\x1fa)"}})
	if err != nil {
		t.Fatal(err)
	}
	if x.Len() != 0 {
		t.Errorf("Len = %d", x.Len())
	}
	if _, err := x.Lookup("user.a"); err != lookup.ErrNotFound {
		t.Errorf("error = %v, want ErrNotFound", err)
	}
}

func TestIndexLegacyEra(t *testing.T) {
	src := memSource{
		{"$RACL$U$a$user.a", ""},
		{"Nshared", "1 b9!default anyone\tp\t"},
		{"user.a", "%(A %(a lrs) P default S b1 T r)"},
		{"user.b", "1 b2!default b\tlrs\t"},
	}
	x, st, err := buildIndex(src)
	if err != nil || st.firstBad != nil {
		t.Fatal(err, st.firstBad)
	}
	if x.Era() != EraName || x.Len() != 3 {
		t.Fatalf("era %v len %d", x.Era(), x.Len())
	}
	for name, srv := range map[string]string{"Nshared": "b9", "user.a": "b1", "user.b": "b2"} {
		if e, err := x.Lookup(name); err != nil || e.Server != srv {
			t.Errorf("Lookup(%q) = %+v, %v; want server %s", name, e, err, srv)
		}
	}
}

func TestIndexGrowsBeyondHint(t *testing.T) {
	// Len() hints far fewer entries than there are: the table must grow.
	src := lyingSource{synthSource(1000)}
	x, _, err := buildIndex(src)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		e, err := x.Lookup(synthName(i))
		if err != nil || e.Server != "backend"+strconv.Itoa(i%8) || e.ACL != "u"+strconv.Itoa(i)+"\tlrswipkxtecdan\t" {
			t.Fatalf("Lookup(%s) = %+v, %v", synthName(i), e, err)
		}
	}
	if len(x.strs) != 10 { // "", default, backend0..7
		t.Errorf("interned %d strings, want 10", len(x.strs))
	}
}

type lyingSource struct{ synthSource }

func (lyingSource) Len() int { return 1 }

func TestLookupAllocFree(t *testing.T) {
	x, _, err := buildIndex(synthSource(1000))
	if err != nil {
		t.Fatal(err)
	}
	name := synthName(500)
	miss := "user.nobody"
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := x.Lookup(name); err != nil {
			t.Fatal(err)
		}
		if _, err := x.Lookup(miss); err != lookup.ErrNotFound {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Index.Lookup allocates %v times, want 0", allocs)
	}
}

func TestBuildMillion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 1,000,000-entry index")
	}
	const n = 1_000_000
	x, _, err := buildIndex(synthSource(n))
	if err != nil {
		t.Fatal(err)
	}
	if x.Len() != n {
		t.Fatalf("Len = %d", x.Len())
	}
	for _, i := range []int{0, 1, n / 2, n - 1} {
		if e, err := x.Lookup(synthName(i)); err != nil || e.Server != "backend"+strconv.Itoa(i%8) {
			t.Errorf("Lookup(%s) = %+v, %v", synthName(i), e, err)
		}
	}
}

func BenchmarkBuild1M(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := buildIndex(synthSource(1_000_000)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	x, _, err := buildIndex(synthSource(1_000_000))
	if err != nil {
		b.Fatal(err)
	}
	names := make([]string, 1024)
	for i := range names {
		names[i] = synthName(i * 977)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := x.Lookup(names[i&1023]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func ExampleIndex_Lookup() {
	x, _, _ := buildIndex(memSource{{"Nuser\x1falice", "%(T er P default S backend1 A %(alice lrswipkxtecdan))"}})
	e, err := x.Lookup("user.alice")
	fmt.Println(e.Server, e.Partition, e.State, err)
	// Output: backend1 default active <nil>
}

// BenchmarkParseAndBuild1M measures a whole reload of a 1,000,000-entry
// flat mailboxes.db image: the cyrusdb parse plus the index build, and
// reports the heap the finished index keeps.
func BenchmarkParseAndBuild1M(b *testing.B) {
	var buf []byte
	synthSource(1_000_000).ForEach(func(k, v []byte) error {
		buf = append(buf, k...)
		buf = append(buf, '\t')
		buf = append(buf, v...)
		buf = append(buf, '\n')
		return nil
	})
	b.ReportAllocs()
	var x *Index
	for b.Loop() {
		db, err := cyrusdb.Parse(buf, cyrusdb.Flat)
		if err != nil {
			b.Fatal(err)
		}
		if x, _, err = buildIndex(db); err != nil {
			b.Fatal(err)
		}
	}
	buf = nil
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heapMB")
	runtime.KeepAlive(x)
}
