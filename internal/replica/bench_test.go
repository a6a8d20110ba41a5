package replica

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/mupdate"
	"github.com/lmtpgate/lmtpgate/internal/mupdate/fakemupdate"
)

// synthDump is a dump of n mailboxes as Cyrus's master writes it, with
// the names fakemupdate.SetSynthetic uses.
func synthDump(n int) []byte {
	var b bytes.Buffer
	b.Grow(n * 90)
	for i := range n {
		name := fmt.Sprintf("user.u%07d", i)
		loc := fmt.Sprintf("127.0.0.%d!default", 2+i%2)
		acl := fmt.Sprintf("u%07d\tlrswipkxtecdan\t", i)
		fmt.Fprintf(&b, "U01 MAILBOX {%d+}\r\n%s {%d+}\r\n%s {%d+}\r\n%s\r\n", len(name), name, len(loc), loc, len(acl), acl)
	}
	b.WriteString("U01 OK \"streaming starts\"\r\n")
	return b.Bytes()
}

func ingest(tb testing.TB, data []byte, hint int) *list {
	sc := mupdate.NewScanner(bufio.NewReaderSize(bytes.NewReader(data), 64<<10), mupdate.DefaultMaxLiteral)
	b := newBuilder(hint)
	var progress atomic.Int64
	if err := readDump(sc, b, &progress); err != nil {
		tb.Fatal(err)
	}
	return b.finish()
}

// BenchmarkIngest reads a dump of a million mailboxes from memory into a
// new list: the replica's side of a dump, without the network. Compare
// its mailboxes/s with what Cyrus's master sends (TestRealMasterScale).
func BenchmarkIngest(b *testing.B) {
	const n = 1_000_000
	data := synthDump(n)
	for _, tt := range []struct {
		name string
		hint int
	}{{"first", 0}, {"redump", n}} {
		b.Run(tt.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if l := ingest(b, data, tt.hint); l.Len() != n {
					b.Fatalf("%d mailboxes", l.Len())
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "mailboxes/s")
		})
	}
}

// lookupReplica is a replica serving a list of n synthetic mailboxes,
// with no connection.
func lookupReplica(tb testing.TB, n int) (*Replica, []string) {
	cfg := DefaultConfig()
	cfg.Address = "127.0.0.1:1"
	cfg.SnapshotPath = ""
	r, err := New(cfg, nil)
	if err != nil {
		tb.Fatal(err)
	}
	l := ingest(tb, synthDump(n), n)
	r.view.Store(&view{base: l, n: l.Len(), from: "dump"})
	// The names to look up, in random order but side by side in memory:
	// the name a real lookup asks for was just built from an address,
	// so reading it is no cache miss, and the benchmark must not add one.
	perm := rand.Perm(n)
	var all strings.Builder
	for _, i := range perm {
		fmt.Fprintf(&all, "user.u%07d", i)
	}
	s := all.String()
	names := make([]string, n)
	w := len(s) / n
	for i := range names {
		names[i] = s[i*w : (i+1)*w]
	}
	return r, names
}

// throttled reads at most rate bytes per second, as a master sends.
type throttled struct {
	r    io.Reader
	rate float64
	t0   time.Time
	n    int
}

func (t *throttled) Read(p []byte) (int, error) {
	if t.t0.IsZero() {
		t.t0 = time.Now()
	}
	if ahead := time.Duration(float64(t.n)/t.rate*float64(time.Second)) - time.Since(t.t0); ahead > 0 {
		time.Sleep(ahead)
	}
	n, err := t.r.Read(p[:min(len(p), 32<<10)])
	t.n += n
	return n, err
}

// BenchmarkLookup measures hits in a list of a million mailboxes, in
// random order (so mostly cache misses, as real traffic is), through
// Replica.Lookup. It reports the latency percentiles of single lookups
// timed one by one (the clock read adds a few tens of ns). The "redump"
// case runs the same while another goroutine builds new million-entry
// lists from a dump arriving at twice the rate a Cyrus master sends one
// (TestRealMasterScale measures about 130,000 mailboxes/s), one after the
// other.
func BenchmarkLookup(b *testing.B) {
	const n = 1_000_000
	r, names := lookupReplica(b, n)
	data := synthDump(n)
	for _, redump := range []bool{false, true} {
		name := "idle"
		if redump {
			name = "redump"
		}
		b.Run(name, func(b *testing.B) {
			stop := make(chan struct{})
			done := make(chan struct{})
			if redump {
				go func() {
					defer close(done)
					for {
						select {
						case <-stop:
							return
						default:
						}
						sc := mupdate.NewScanner(bufio.NewReaderSize(&throttled{r: bytes.NewReader(data), rate: 2 * 130_000 * float64(len(data)) / n}, 64<<10), mupdate.DefaultMaxLiteral)
						bl := newBuilder(n)
						var progress atomic.Int64
						if err := readDump(sc, bl, &progress); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			} else {
				close(done)
			}
			ctx := context.Background()
			lat := make([]time.Duration, 0, 1<<20)
			i := 0
			for b.Loop() {
				name := names[i%n]
				t0 := time.Now()
				_, err := r.Lookup(ctx, name)
				d := time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				if len(lat) < cap(lat) {
					lat = append(lat, d)
				}
				i++
			}
			close(stop)
			<-done
			slices.Sort(lat)
			pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) }
			b.ReportMetric(pct(0.5), "p50-ns")
			b.ReportMetric(pct(0.99), "p99-ns")
			b.ReportMetric(pct(0.999), "p99.9-ns")
		})
	}
}

// TestRSS loads a million mailboxes from the fake master into a replica
// in a child process (so that nothing else is counted) and checks its
// resident size with the list loaded, after the first dump and after a
// re-dump (both lists exist while the second is built).
func TestRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("a million mailboxes: skipped with -short")
	}
	if raceEnabled {
		t.Skip("the race detector's shadow memory inflates RSS")
	}
	if os.Getenv("LMTPGATE_REPLICA_RSS_MASTER") != "" {
		t.Skip("child")
	}
	const n = 1_000_000
	srv := fakemupdate.New(t)
	srv.SetSynthetic(n, "127.0.0.2", "127.0.0.3")
	cmd := exec.Command(os.Args[0], "-test.run=^TestRSSChild$", "-test.v")
	cmd.Env = append(os.Environ(), "LMTPGATE_REPLICA_RSS_MASTER="+srv.Addr(), "LMTPGATE_REPLICA_RSS_N="+strconv.Itoa(n))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// The child asks for a re-dump by printing REDUMP; the parent drops
	// its connection.
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	res := map[string]int{}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		t.Log(line)
		if line == "REDUMP" {
			srv.DropConnections()
			continue
		}
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				if x, err := strconv.Atoi(v); err == nil {
					res[k] = x
				}
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v\n%s", err, stderr.String())
	}
	const limit = 200 << 10 // KiB
	for _, k := range []string{"rss_kib_dump", "rss_kib_redump"} {
		v, ok := res[k]
		if !ok {
			t.Fatalf("child reported no %s", k)
		}
		if v > limit {
			t.Errorf("%s = %d KiB, over %d KiB", k, v, limit)
		}
	}
}

// TestRSSChild is TestRSS's child process.
func TestRSSChild(t *testing.T) {
	addr := os.Getenv("LMTPGATE_REPLICA_RSS_MASTER")
	if addr == "" {
		t.Skip("run by TestRSS")
	}
	n, _ := strconv.Atoi(os.Getenv("LMTPGATE_REPLICA_RSS_N"))
	cfg := testConfig(t, addr)
	cfg.SnapshotPath = ""
	r, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	report := func(tag string) {
		runtime.GC()
		debug.FreeOSMemory()
		rss, hwm := procStatus(t, "VmRSS"), procStatus(t, "VmHWM")
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Printf("rss_kib_%s=%d hwm_kib_%s=%d heap_kib_%s=%d mailboxes=%d\n", tag, rss, tag, hwm, tag, ms.HeapAlloc>>10, r.Status().Mailboxes)
	}
	t0 := time.Now()
	r.Start()
	eventually(t, "the dump", func() bool { return r.Status().Dumps == 1 })
	fmt.Printf("dump_ms=%d\n", time.Since(t0).Milliseconds())
	if got := r.Status().Mailboxes; got != n {
		t.Fatalf("%d mailboxes, want %d", got, n)
	}
	report("dump")
	fmt.Println("REDUMP")
	eventually(t, "the re-dump", func() bool { return r.Status().Dumps == 2 })
	report("redump")
}

func procStatus(t *testing.T, key string) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			v, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return v
		}
	}
	t.Fatalf("no %s in /proc/self/status", key)
	return 0
}

// BenchmarkLookupUntimed is BenchmarkLookup without timing each lookup:
// throughput, in random and in table-building order, and what the clock
// read that BenchmarkLookup adds to each lookup costs.
func BenchmarkLookupUntimed(b *testing.B) {
	const n = 1_000_000
	r, names := lookupReplica(b, n)
	ctx := context.Background()
	b.Run("random", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := r.Lookup(ctx, names[i%n]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	b.Run("sequential", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := r.Lookup(ctx, sorted[i%n]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("clock", func(b *testing.B) {
		for b.Loop() {
			time.Now()
		}
	})
}
