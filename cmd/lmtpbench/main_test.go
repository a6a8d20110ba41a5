package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testkit"

	"github.com/lmtpgate/lmtpgate/internal/bench"
	"github.com/lmtpgate/lmtpgate/internal/murderlab"
	"github.com/lmtpgate/lmtpgate/internal/testbin"
)

func TestRunNullBackendAndReport(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var nbOut testkit.SyncBuffer
	nbDone := make(chan error, 1)
	go func() {
		nbDone <- run(ctx, []string{"null-backend", "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"}, &nbOut, os.Stderr)
	}()
	re := regexp.MustCompile(`listening on (\S+)`)
	var addrs []string
	for deadline := time.Now().Add(30 * time.Second); len(addrs) < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("null backend did not start: %q", nbOut.String())
		}
		time.Sleep(10 * time.Millisecond)
		addrs = nil
		for _, m := range re.FindAllStringSubmatch(nbOut.String(), -1) {
			addrs = append(addrs, m[1])
		}
	}

	dir := t.TempDir()
	bes := "be1=a1@x,a2@x;be2=c1@x,c2@x"
	var out bytes.Buffer
	err := run(ctx, []string{"run", "--target", addrs[0], "--conns", "4", "--messages", "100",
		"--rcpts-mix", "1:50,2x:50", "--size-mix", "1KiB:9,64KiB:1", "--backend-addrs", bes,
		"--pid", strconv.Itoa(os.Getpid()), "--json", filepath.Join(dir, "b.json")}, &out, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"deliveries/s", "messages/s", "p50", "p99", "100 completed", "4xx 0, 5xx 0, no reply 0", "s / 1000 msgs"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("run output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	err = run(ctx, []string{"run", "--direct", "be1=" + addrs[0] + ";be2=" + addrs[1], "--auth-user", "proxy", "--auth-pass", "x",
		"--conns", "2", "--messages", "50", "--rcpts-mix", "2x:1", "--size-mix", "1KiB:1", "--backend-addrs", bes,
		"--label", "direct", "--json", filepath.Join(dir, "d.json")}, &out, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	r, err := bench.ReadResult(filepath.Join(dir, "d.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Completed != 50 || r.Replies2xx != 100 || r.Label != "direct" || r.Machine == nil {
		t.Errorf("direct result %+v", r)
	}

	md := filepath.Join(dir, "results.md")
	if err := run(ctx, []string{"report", "-o", md, "b=" + filepath.Join(dir, "b.json"), "d=" + filepath.Join(dir, "d.json")}, &out, os.Stderr); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| b | lmtpgate, order [mailboxes-db] |", "| d | direct |", "| b/d |", "## Machine"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("report lacks %q:\n%s", want, b)
		}
	}

	cancel()
	if err := <-nbDone; err != nil {
		t.Error(err)
	}
	rb, err := bench.ReadResult(filepath.Join(dir, "b.json"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "deliveries " + strconv.Itoa(rb.Recipients+100) + " "; !strings.Contains(nbOut.String(), want) {
		t.Errorf("null backend counters: %q", nbOut.String())
	}
}

func TestUsageErrors(t *testing.T) {
	ctx := context.Background()
	for _, args := range [][]string{
		nil,
		{"bogus"},
		{"run", "--backend-addrs", ""},
		{"run", "--backend-addrs", "be1=a@x", "--rcpts-mix", "zz"},
		{"run", "--backend-addrs", "be1=a@x", "--size-mix", "1GiB:1"},
		{"run", "--backend-addrs", "be1=a@x", "--direct", "be2=127.0.0.1:1"},
		{"run", "--backend-addrs", "be1=a@x", "--target", "127.0.0.1:1", "extra"},
		{"null-backend"},
		{"report"},
		{"report", "a"},
		{"report", "a=/nonexistent.json"},
		{"delay-relay"},
		{"delay-relay", "--route", "127.0.0.1:0"},
		{"relaybench", "--delays", "soon"},
		{"lab", "--dir", "/nonexistent/lab", "--delays", "soon"},
		{"lab", "--dir", "/nonexistent/lab", "--gate-extra", "novalue"},
		{"lab", "--dir", "/nonexistent/lab", "--runs", "a,b"},
	} {
		if err := run(ctx, args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

func TestParseDirect(t *testing.T) {
	bes := []bench.Backend{{Name: "be1"}, {Name: "be2"}}
	got, err := parseDirect("be2=127.0.0.3:2003; be1=unix:/run/l.sock", bes)
	if err != nil || got[0] != "unix:/run/l.sock" || got[1] != "127.0.0.3:2003" {
		t.Errorf("%v %v", got, err)
	}
	for _, bad := range []string{"be1=x", "be1=x;be2=y;be3=z", "be1;be2=y", "=x"} {
		if _, err := parseDirect(bad, bes); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestLabRealCyrus runs the lab's whole path at small counts: every run
// kind (a variant of b included) at two delays, the large-message runs and
// the plot, and checks every run crossed the emulated network: its bytes
// crossed the relays (the lab itself fails otherwise) and at 1 ms each
// message took at least the two round trips any path to a backend needs.
func TestLabRealCyrus(t *testing.T) {
	murderlab.RequireCyrus(t)
	gateBin := testbin.Build(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"lab", "--dir", dir, "--mailboxes", "3", "--conns", "2", "--messages", "20",
		"--rcpts-mix", "1:1,2x:1", "--size-mix", "1KiB:1", "--runs", "a,b,c,d", "--lmtpgate", gateBin,
		"--delays", "0,1ms", "--gate-extra", "idle1=backends: {max_idle: 1}", "--big-messages", "2", "--big-size", "256KiB", "--retries", "0", "--repeat", "2"}
	plot := gnuplotAvailable() == nil
	if plot {
		args = append(args, "--plot", filepath.Join(dir, "network.png"))
	}
	var out bytes.Buffer
	if err := run(ctx, args, &out, os.Stderr); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	var names []string
	for _, d := range []string{"0ms", "1ms"} {
		for _, k := range []string{"a", "b", "b-idle1", "c", "d"} {
			names = append(names, d+"-load1-"+k)
		}
	}
	for _, k := range []string{"a", "b", "b-idle1", "d"} {
		names = append(names, "big-2ms-"+k, "big-2ms-"+k+"-r2")
	}
	names = append(names, "1ms-load1-c-r2")
	for _, name := range names {
		r, err := bench.ReadResult(filepath.Join(dir, name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		// Every recipient is answered and counted once. Cyrus itself may
		// defer the odd recipient under load (a 4xx); that is Cyrus's
		// business, not the generator's, so it is counted, not failed.
		if r.Completed != r.Messages || r.Recipients < r.Messages || r.NoReply != 0 || r.Replies5xx != 0 ||
			r.Replies2xx+r.Replies4xx != r.Recipients || r.Replies2xx < r.Recipients/2 {
			t.Errorf("run %s: %+v", name, r)
		}
		if strings.HasSuffix(name, "-a") && (r.Proc == nil || r.Proc.MaxProcs < 2) {
			t.Errorf("run %s: proxy tree not sampled: %+v", name, r.Proc)
		}
		// MAIL to the 354 and the data to its reply: two round trips of
		// two one-way delays each, less the relay's early aim.
		if min := 4 * (1 - 0.2); strings.HasPrefix(name, "1ms-") && r.Latency.P50Ms < min {
			t.Errorf("run %s at 1 ms: p50 %.2f ms, below the %.1f ms the network costs", name, r.Latency.P50Ms, min)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| 1 ms | b-idle1 |", "| 0 ms | a |", "| 1 ms | b/a |", "measured 2 times, in alternating order (a, b, b-idle1, c, d, then d, c, b-idle1, b, a)", "### Large messages: 256KiB", "MUPDATE queries in run c", "### Machine"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("results.md lacks %q:\n%s", want, b)
		}
	}
	if plot {
		if st, err := os.Stat(filepath.Join(dir, "network.png")); err != nil || st.Size() < 1000 {
			t.Errorf("plot: %v", err)
		}
	}
}
