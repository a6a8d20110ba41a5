package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/bench"
)

// cmdDelayRelay runs delay relays (bench.DelayRelay) until interrupted:
// one per --route LISTEN=TARGET, all with the same one-way delay. It prints
// "relay LISTEN -> TARGET" per route once all listen. relaybench runs it
// as a child process, so that the relay's CPU can be sampled on its own;
// it is also a tool for putting anything on loopback across a slow link.
func cmdDelayRelay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("delay-relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var routes multiFlag
	fs.Var(&routes, "route", "LISTEN=TARGET, e.g. 127.0.0.1:0=127.0.0.2:2003; repeat for several")
	delay := fs.Duration("delay", 0, "one-way delay")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(routes) == 0 {
		return errors.New("delay-relay: give at least one --route")
	}
	for _, rt := range routes {
		listen, target, ok := strings.Cut(rt, "=")
		if !ok || listen == "" || target == "" {
			return fmt.Errorf("delay-relay: --route %q: want LISTEN=TARGET", rt)
		}
		r, err := bench.NewDelayRelay(ctx, listen, target, *delay, 0)
		if err != nil {
			return err
		}
		defer r.Close()
		fmt.Fprintf(stdout, "relay %s -> %s\n", r.Addr(), target)
	}
	<-ctx.Done()
	return nil
}

// relayChild is a `lmtpbench delay-relay` process.
type relayChild struct {
	cmd  *exec.Cmd
	Addr string
}

func startRelayChild(ctx context.Context, target string, delay time.Duration) (*relayChild, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "delay-relay", "--delay", delay.String(), "--route", "127.0.0.1:0="+target)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	rc := &relayChild{cmd: cmd}
	line, err := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 4 || f[0] != "relay" {
		rc.Stop()
		return nil, fmt.Errorf("delay-relay child: %q, %v", line, err)
	}
	rc.Addr = f[1]
	return rc, nil
}

func (rc *relayChild) PID() int { return rc.cmd.Process.Pid }

func (rc *relayChild) Stop() {
	rc.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { rc.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		rc.cmd.Process.Kill()
		<-done
	}
}

// linkRow is what relaybench measured on one path.
type linkRow struct {
	name       string
	delay      time.Duration
	relayed    bool
	rtt        bench.LatencyStats
	big        bench.LatencyStats // bigSize requests
	mibPerSec  float64
	cpuMsPerMi float64 // relay process CPU per MiB moved, -1 if not relayed
}

// cmdRelayBench measures the emulated network on its own: round trips,
// a large request and bulk throughput, straight to a sink and through a
// relay child process at each delay, with the relay's CPU per MiB.
func cmdRelayBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("relaybench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		out     = fs.String("o", "", "write the Markdown section here (default: standard output)")
		delays  = fs.String("delays", "0,500us,2ms", "one-way delays to measure, comma-separated")
		pings   = fs.Int("pings", 1000, "round trips per path")
		bigSize = fs.Int64("big", 5<<20, "size of the large request in bytes")
		bigN    = fs.Int("big-count", 20, "large requests per path")
		bulk    = fs.Int64("bulk", 1<<30, "bytes of the bulk transfer")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ds, err := parseDelays(*delays)
	if err != nil {
		return err
	}
	sink, err := bench.StartRequestSink(ctx, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer sink.Close()

	measure := func(name, addr string, d time.Duration, pid int) (linkRow, error) {
		row := linkRow{name: name, delay: d, relayed: pid != 0, cpuMsPerMi: -1}
		p, err := bench.DialProbe(ctx, addr, time.Minute)
		if err != nil {
			return row, err
		}
		defer p.Close()
		// The first request also opens the path (the relay's handshake
		// delays); it is not counted.
		if _, err := p.Request(0, time.Minute); err != nil {
			return row, err
		}
		lat, err := p.Requests(0, *pings, time.Minute)
		if err != nil {
			return row, err
		}
		row.rtt = bench.Summarize(lat)
		if lat, err = p.Requests(*bigSize, *bigN, time.Minute); err != nil {
			return row, err
		}
		row.big = bench.Summarize(lat)
		var sampler *bench.Sampler
		if pid != 0 {
			if sampler, err = bench.StartSampler(pid, false, 100*time.Millisecond); err != nil {
				return row, err
			}
		}
		el, err := p.Request(*bulk, 10*time.Minute)
		if sampler != nil {
			ps := sampler.Stop()
			row.cpuMsPerMi = ps.CPUSeconds * 1000 / (float64(*bulk) / (1 << 20))
		}
		if err != nil {
			return row, err
		}
		row.mibPerSec = float64(*bulk) / (1 << 20) / el.Seconds()
		fmt.Fprintf(stdout, "%-22s rtt p50 %.3f p99 %.3f ms, %s p50 %.2f ms, %.0f MiB/s, relay CPU %s ms/MiB\n", name,
			row.rtt.P50Ms, row.rtt.P99Ms, bench.FormatSize(int(*bigSize)), row.big.P50Ms, row.mibPerSec, orDashF(row.cpuMsPerMi, "%.3f"))
		return row, nil
	}
	var rows []linkRow
	row, err := measure("direct (no relay)", sink.Addr(), 0, 0)
	if err != nil {
		return err
	}
	rows = append(rows, row)
	for _, d := range ds {
		rc, err := startRelayChild(ctx, sink.Addr(), d)
		if err != nil {
			return err
		}
		row, err := measure("relay, delay "+fmtDelay(d), rc.Addr, d, rc.PID())
		rc.Stop()
		if err != nil {
			return err
		}
		rows = append(rows, row)
	}

	w := stdout
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	renderLinkRows(w, rows, *bigSize, *bulk, *pings, *bigN)
	if f, ok := w.(*os.File); ok && *out != "" {
		return f.Close()
	}
	return nil
}

func renderLinkRows(w io.Writer, rows []linkRow, bigSize, bulk int64, pings, bigN int) {
	direct := rows[0]
	fmt.Fprintf(w, "The relay (internal/bench.DelayRelay) measured alone, as a child process of its own (`lmtpbench delay-relay`) between a client and a sink in `lmtpbench relaybench`, all on this machine's loopback: %d round trips of a 9-byte request and a 1-byte reply, %d requests of %s each answered by 1 byte, and one %s request for throughput (the relay's CPU is sampled during that one). Each path is one connection, opened before the clock starts.\n\n",
		pings, bigN, bench.FormatSize(int(bigSize)), bench.FormatSize(int(bulk)))
	fmt.Fprintf(w, "| path | round trip p50 ms | p99 ms | max ms | added one-way over the set delay, p50 µs | %s request p50 ms | expected: direct + 2 × delay, ms | throughput MiB/s | relay CPU ms / MiB |\n", bench.FormatSize(int(bigSize)))
	fmt.Fprintf(w, "|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rows {
		added, expect := "–", "–"
		if r.relayed {
			added = fmt.Sprintf("%.0f", ((r.rtt.P50Ms-direct.rtt.P50Ms)/2-float64(r.delay)/1e6)*1000)
			expect = fmt.Sprintf("%.2f", direct.big.P50Ms+2*float64(r.delay)/1e6)
		}
		fmt.Fprintf(w, "| %s | %.3f | %.3f | %.3f | %s | %.2f | %s | %.0f | %s |\n", r.name, r.rtt.P50Ms, r.rtt.P99Ms, r.rtt.MaxMs,
			added, r.big.P50Ms, expect, r.mibPerSec, orDashF(r.cpuMsPerMi, "%.3f"))
	}
	fmt.Fprintf(w, "\nThe client, the relay and the sink share the same cores, so the relayed throughput is bounded by the three of them together.")
	fmt.Fprintf(w, " A stop-and-wait relay would take a delay per segment for the large request (hundreds of segments); this one takes the direct time plus one round trip.\n")
}

// parseDelays reads "0,500us,2ms".
func parseDelays(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if f == "0" {
			out = append(out, 0)
			continue
		}
		d, err := time.ParseDuration(f)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("delay %q: want a duration such as 500us or 2ms", f)
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, errors.New("no delays given")
	}
	return out, nil
}

// fmtDelay writes a delay in milliseconds: "0 ms", "0.5 ms", "2 ms".
func fmtDelay(d time.Duration) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.3f", float64(d)/1e6), "0"), ".") + " ms"
}

func orDashF(v float64, format string) string {
	if v < 0 {
		return "–"
	}
	return fmt.Sprintf(format, v)
}
