package bench

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func testBackends(n, per int) []Backend {
	var bes []Backend
	for i := range n {
		b := Backend{Name: fmt.Sprintf("be%d", i+1)}
		for j := range per {
			b.Addrs = append(b.Addrs, fmt.Sprintf("user%d.%d@example.org", i+1, j))
		}
		bes = append(bes, b)
	}
	return bes
}

func mustMix(t *testing.T, rcpt, size string) (RcptMix, SizeMix) {
	t.Helper()
	rm, err := ParseRcptMix(rcpt)
	if err != nil {
		t.Fatal(err)
	}
	sm, err := ParseSizeMix(size)
	if err != nil {
		t.Fatal(err)
	}
	return rm, sm
}

func TestRunAgainstNullBackend(t *testing.T) {
	nb, addrs := startNull(t, 1)
	rm, sm := mustMix(t, "1:50,2x:30,10:20", "1KiB:80,16KiB:18,256KiB:2")
	const msgs = 400
	res, err := Run(context.Background(), Config{
		Label: "null", Target: addrs[0], Backends: testBackends(2, 6),
		Conns: 8, Messages: msgs, RcptMix: rm, SizeMix: sm, Seed: 42,
		PID: 0, Timeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Messages != msgs || res.Completed != msgs || res.ConnErrors != 0 {
		t.Fatalf("messages %d completed %d conn errors %d (%s)", res.Messages, res.Completed, res.ConnErrors, res.FirstError)
	}
	// Every recipient got exactly one reply, and the backend agrees.
	if res.Replies2xx+res.Replies4xx+res.Replies5xx+res.NoReply != res.Recipients {
		t.Errorf("replies do not add up: %+v", res)
	}
	if res.Replies2xx != res.Recipients || int64(res.Replies2xx) != nb.Deliveries.Load() {
		t.Errorf("2xx %d, recipients %d, backend deliveries %d", res.Replies2xx, res.Recipients, nb.Deliveries.Load())
	}
	if nb.Messages.Load() != msgs {
		t.Errorf("backend saw %d messages", nb.Messages.Load())
	}
	wantRcpts := res.ClassCounts["1"]*1 + res.ClassCounts["2x"]*2 + res.ClassCounts["10"]*10
	if res.Recipients != wantRcpts {
		t.Errorf("recipients %d, classes imply %d", res.Recipients, wantRcpts)
	}
	l := res.Latency
	if l.Count != msgs || !(0 < l.P50Ms && l.P50Ms <= l.P90Ms && l.P90Ms <= l.P99Ms && l.P99Ms <= l.MaxMs) {
		t.Errorf("latency %+v", l)
	}
	if res.MsgsPerSec <= 0 || res.DeliveriesPerSec < res.MsgsPerSec || res.WallSeconds <= 0 {
		t.Errorf("rates %+v", res)
	}
	// Mixes honoured within wide bounds (400 draws; 4+ standard
	// deviations either side).
	within := func(what string, got, n, pct, slack int) {
		want := n * pct / 100
		if got < want-slack || got > want+slack {
			t.Errorf("%s: %d of %d, want about %d%%", what, got, n, pct)
		}
	}
	within("class 1", res.ClassCounts["1"], msgs, 50, 45)
	within("class 2x", res.ClassCounts["2x"], msgs, 30, 40)
	within("class 10", res.ClassCounts["10"], msgs, 20, 35)
	within("1KiB", res.SizeCounts["1KiB"], msgs, 80, 35)
	within("16KiB", res.SizeCounts["16KiB"], msgs, 18, 35)
	if res.SizeCounts["256KiB"] == 0 || res.SizeCounts["256KiB"] > 30 {
		t.Errorf("256KiB: %d of %d, want about 2%%", res.SizeCounts["256KiB"], msgs)
	}

	// The same seed draws the same messages, however they are scheduled.
	again, err := Run(context.Background(), Config{
		Target: addrs[0], Backends: testBackends(2, 6),
		Conns: 3, Messages: msgs, RcptMix: rm, SizeMix: sm, Seed: 42, NoPipelining: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(again.ClassCounts, again.SizeCounts, again.Recipients) != fmt.Sprint(res.ClassCounts, res.SizeCounts, res.Recipients) {
		t.Errorf("seeded runs differ: %v %v vs %v %v", again.ClassCounts, again.SizeCounts, res.ClassCounts, res.SizeCounts)
	}
}

func TestRunDirectWithAuth(t *testing.T) {
	nb1, a1 := startNull(t, 1)
	nb2, a2 := startNull(t, 1)
	rm, sm := mustMix(t, "2x:1,1:1", "1KiB:1")
	res, err := Run(context.Background(), Config{
		Direct: []string{a1[0], a2[0]}, Backends: testBackends(2, 3),
		Conns: 4, Messages: 200, RcptMix: rm, SizeMix: sm, Seed: 1,
		AuthUser: "proxy", AuthPass: "secret",
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Completed != 200 || res.Replies2xx != res.Recipients {
		t.Fatalf("%+v", res)
	}
	// Each backend gets exactly its own recipients: a "2x" message is one
	// transaction on each, a "1" message one on one of them.
	d1, d2 := nb1.Deliveries.Load(), nb2.Deliveries.Load()
	if d1+d2 != int64(res.Recipients) || d1 == 0 || d2 == 0 {
		t.Errorf("deliveries %d + %d, recipients %d", d1, d2, res.Recipients)
	}
	m1, m2 := nb1.Messages.Load(), nb2.Messages.Load()
	if want := int64(res.ClassCounts["2x"]*2 + res.ClassCounts["1"]); m1+m2 != want {
		t.Errorf("transactions %d + %d, want %d", m1, m2, want)
	}
}

func TestRunCountsRefusals(t *testing.T) {
	addr, _ := startScript(t)
	rm, sm := mustMix(t, "3s:1", "1KiB:1")
	bes := []Backend{{"be1", []string{"ok@x", "rtemp@x", "dperm@x"}}}
	res, err := Run(context.Background(), Config{
		Target: addr, Backends: bes, Conns: 2, Messages: 30, RcptMix: rm, SizeMix: sm,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Replies2xx != 30 || res.Replies4xx != 30 || res.Replies5xx != 30 || res.NoReply != 0 || res.Completed != 30 {
		t.Errorf("2xx %d 4xx %d 5xx %d none %d completed %d", res.Replies2xx, res.Replies4xx, res.Replies5xx, res.NoReply, res.Completed)
	}
}

func TestRunUnreachableTarget(t *testing.T) {
	// A closed port: every recipient is counted without a reply, and the
	// run ends. Each connection fails once while warming up, then once
	// per message.
	nb := &NullBackend{}
	a, err := nb.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nb.Close()
	rm, sm := mustMix(t, "1:1", "1KiB:1")
	res, err := Run(context.Background(), Config{
		Target: a.String(), Backends: testBackends(1, 1), Conns: 2, Messages: 6,
		RcptMix: rm, SizeMix: sm, Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Completed != 0 || res.NoReply != 6 || res.ConnErrors != 2+6 || res.FirstError == "" || res.Latency.Count != 0 {
		t.Errorf("%+v", res)
	}
}

func TestRunDurationAndCancel(t *testing.T) {
	_, addrs := startNull(t, 1)
	rm, sm := mustMix(t, "1:1", "1KiB:1")
	cfg := Config{Target: addrs[0], Backends: testBackends(1, 1), Conns: 2, Duration: 200 * time.Millisecond, RcptMix: rm, SizeMix: sm}
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Completed == 0 || res.Completed != res.Messages {
		t.Errorf("duration run: %+v", res)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cfg.Duration = time.Hour
	res, err = Run(ctx, cfg) // must return at once, not in an hour
	if err != nil {
		t.Fatal(err)
	}
	if res.Messages != 0 {
		t.Errorf("cancelled run sent %d messages", res.Messages)
	}
}

func TestRunConfigErrors(t *testing.T) {
	rm, sm := mustMix(t, "2x:1", "1KiB:1")
	base := Config{Target: "127.0.0.1:1", Backends: testBackends(2, 1), Conns: 1, Messages: 1, RcptMix: rm, SizeMix: sm}
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{"no conns", func(c *Config) { c.Conns = 0 }},
		{"no count", func(c *Config) { c.Messages = 0 }},
		{"no target", func(c *Config) { c.Target = "" }},
		{"no backends", func(c *Config) { c.Backends = nil }},
		{"direct mismatch", func(c *Config) { c.Direct = []string{"x"} }},
		{"mix too wide", func(c *Config) { c.Backends = testBackends(1, 5) }},
		{"bad pid", func(c *Config) { c.PID = -1 }},
	}
	for _, tt := range tests {
		cfg := base
		tt.mod(&cfg)
		if _, err := Run(context.Background(), cfg); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(101-i)*time.Millisecond)
	}
	s := Summarize(d)
	if s.P50Ms != 50 || s.P90Ms != 90 || s.P99Ms != 99 || s.MaxMs != 100 || s.MeanMs != 50.5 || s.Count != 100 {
		t.Errorf("%+v", s)
	}
	if Percentile([]time.Duration{7}, 99) != 7 || Percentile(nil, 50) != 0 {
		t.Error("edge cases")
	}
	if (Summarize(nil) != LatencyStats{}) {
		t.Error("empty sample")
	}
}
