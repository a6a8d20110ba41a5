// Command lmtpbench measures LMTP delivery. It is the only source of the
// performance figures published for lmtpgate.
//
//	lmtpbench run --target ADDR --conns N --messages M [--rcpts-mix MIX] [--size-mix MIX]
//	              --backend-addrs 'be1=a@x,b@x;be2=c@x' [--json out.json] [--pid PID --pid-tree]
//	lmtpbench run --direct 'be1=127.0.0.2:2003;be2=127.0.0.3:2003' --auth-user proxy --auth-pass ... ...
//	lmtpbench null-backend --listen 127.0.0.2:2003 --listen 127.0.0.3:2003
//	lmtpbench report [-o results.md] a=cyrus.json b=lmtpgate-db.json c=lmtpgate-mupdate.json d=direct.json
//	lmtpbench lab --dir /tmp/bench [--messages 2000 --conns 8] [--runs a,b,c,d --lmtpgate BIN] [--load RCPTS/SIZES ...]   (root, Cyrus installed)
//	lmtpbench ceiling --dir /tmp/ceil --lmtpgate BIN   (lmtpgate against null backends)
//	lmtpbench mboxdb --dir /tmp/mdb [--entries 1000000]  (index build, lookup, memory)
//	lmtpbench delay-relay --delay 2ms --route 127.0.0.1:0=127.0.0.2:2003  (a slow link on loopback)
//	lmtpbench relaybench [-o relay.md]  (what the relay itself costs)
//
// run drives an LMTP server (lmtpgate, Cyrus's frontend lmtpd -a, or the
// backends directly) and prints deliveries/s, messages/s and latency
// percentiles; null-backend serves LMTP that accepts and discards
// everything, for measuring a proxy's own ceiling; report turns JSON results
// into a Markdown comparison.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "lmtpbench:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage: lmtpbench run|null-backend|report|lab|ceiling|mboxdb|delay-relay|relaybench [flags]; lmtpbench CMD -h for help")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case "null-backend":
		return cmdNull(ctx, args[1:], stdout, stderr)
	case "report":
		return cmdReport(ctx, args[1:], stdout, stderr)
	case "lab":
		return cmdLab(ctx, args[1:], stdout, stderr)
	case "ceiling":
		return cmdCeiling(ctx, args[1:], stdout, stderr)
	case "mboxdb":
		return cmdMboxDB(ctx, args[1:], stdout, stderr)
	case "delay-relay":
		return cmdDelayRelay(ctx, args[1:], stdout, stderr)
	case "relaybench":
		return cmdRelayBench(ctx, args[1:], stdout, stderr)
	}
	return errUsage
}

// multiFlag collects a repeated flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg      bench.Config
		rcptMix  = fs.String("rcpts-mix", bench.DefaultRcptMix, "recipient mix N[x|s]:WEIGHT,... (N: dealt over all backends, Nx: N distinct backends, Ns: all on one backend)")
		sizeMix  = fs.String("size-mix", bench.DefaultSizeMix, "message size mix SIZE:WEIGHT,... (units B, KiB, MiB)")
		backends = fs.String("backend-addrs", "", "recipient addresses per backend: 'be1=a@x,b@x;be2=c@x'")
		direct   = fs.String("direct", "", "send straight to the backends instead of --target: 'be1=127.0.0.2:2003;be2=127.0.0.3:2003'")
		jsonOut  = fs.String("json", "", "write the result as JSON to this file")
		pidFile  = fs.String("pid-file", "", "sample the process whose PID is in this file (alternative to --pid)")
		machine  = fs.Bool("machine", true, "record this machine's description in the JSON result")
	)
	fs.StringVar(&cfg.Label, "label", "", "a description of the target for reports")
	fs.StringVar(&cfg.Target, "target", "", "LMTP server: host:port, tcp:host:port or unix:/path")
	fs.IntVar(&cfg.Conns, "conns", 1, "parallel persistent connections")
	fs.IntVar(&cfg.Messages, "messages", 1000, "messages in total (0: run for --duration)")
	fs.DurationVar(&cfg.Duration, "duration", 0, "run this long when --messages is 0")
	fs.StringVar(&cfg.From, "from", "", "envelope sender")
	fs.StringVar(&cfg.AuthUser, "auth-user", "", "AUTH PLAIN as this user after LHLO (Cyrus backends need an lmtp_admins identity)")
	fs.StringVar(&cfg.AuthPass, "auth-pass", "", "password for --auth-user")
	fs.BoolVar(&cfg.NoPipelining, "no-pipelining", false, "wait for each reply even if the server offers PIPELINING")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "seed for the choice of recipients and sizes")
	fs.DurationVar(&cfg.Timeout, "timeout", 2*time.Minute, "deadline for each protocol phase")
	fs.IntVar(&cfg.PID, "pid", 0, "sample CPU and RSS of this process during the run")
	fs.BoolVar(&cfg.PIDTree, "pid-tree", false, "include the sampled process's descendants (Cyrus master and its lmtpd children)")
	fs.DurationVar(&cfg.SampleInterval, "sample-interval", 200*time.Millisecond, "CPU/RSS sampling interval")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("run: unexpected arguments %q", fs.Args())
	}
	var err error
	if cfg.RcptMix, err = bench.ParseRcptMix(*rcptMix); err != nil {
		return err
	}
	if cfg.SizeMix, err = bench.ParseSizeMix(*sizeMix); err != nil {
		return err
	}
	if cfg.Backends, err = bench.ParseBackends(*backends); err != nil {
		return fmt.Errorf("--backend-addrs: %w", err)
	}
	if *direct != "" {
		if cfg.Direct, err = parseDirect(*direct, cfg.Backends); err != nil {
			return fmt.Errorf("--direct: %w", err)
		}
	}
	if *pidFile != "" {
		b, err := os.ReadFile(*pidFile)
		if err != nil {
			return err
		}
		if cfg.PID, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			return fmt.Errorf("--pid-file %s: %w", *pidFile, err)
		}
	}
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if *machine {
		res.Machine = bench.CollectMachine(ctx)
	}
	printResult(stdout, res)
	if *jsonOut != "" {
		b, err := bench.EncodeResult(res)
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if res.Completed == 0 && res.Messages > 0 {
		return fmt.Errorf("no message completed: %s", res.FirstError)
	}
	return nil
}

// parseDirect maps "be1=addr;be2=addr" onto the backends' order.
func parseDirect(s string, bes []bench.Backend) ([]string, error) {
	m := map[string]string{}
	for _, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, addr, ok := strings.Cut(part, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("%q: want NAME=ADDR", part)
		}
		m[strings.TrimSpace(name)] = strings.TrimSpace(addr)
	}
	out := make([]string, len(bes))
	for i, b := range bes {
		if out[i] = m[b.Name]; out[i] == "" {
			return nil, fmt.Errorf("no address for backend %q", b.Name)
		}
		delete(m, b.Name)
	}
	for name := range m {
		return nil, fmt.Errorf("backend %q is not in --backend-addrs", name)
	}
	return out, nil
}

func printResult(w io.Writer, r *bench.Result) {
	fmt.Fprintf(w, "target        %s\n", r.Target)
	fmt.Fprintf(w, "load          %d conns, rcpts %s, sizes %s, pipelining %t\n", r.Conns, r.RcptMix, r.SizeMix, r.Pipeline)
	fmt.Fprintf(w, "messages      %d sent, %d completed in %.2f s\n", r.Messages, r.Completed, r.WallSeconds)
	fmt.Fprintf(w, "recipients    %d: 2xx %d, 4xx %d, 5xx %d, no reply %d\n", r.Recipients, r.Replies2xx, r.Replies4xx, r.Replies5xx, r.NoReply)
	fmt.Fprintf(w, "deliveries/s  %.1f\n", r.DeliveriesPerSec)
	fmt.Fprintf(w, "messages/s    %.1f\n", r.MsgsPerSec)
	l := r.Latency
	fmt.Fprintf(w, "latency ms    p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (mean %.2f)\n", l.P50Ms, l.P90Ms, l.P99Ms, l.MaxMs, l.MeanMs)
	if r.Proc != nil {
		fmt.Fprintf(w, "pid %d        CPU %.2f s (%.2f s / 1000 msgs), peak RSS %.1f MiB, up to %d processes\n",
			r.Proc.PID, r.Proc.CPUSeconds, r.CPUPer1000(), float64(r.Proc.PeakRSSBytes)/(1<<20), r.Proc.MaxProcs)
	}
	if r.ConnErrors > 0 {
		fmt.Fprintf(w, "conn errors   %d, first: %s\n", r.ConnErrors, r.FirstError)
	}
}

func cmdNull(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("null-backend", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var listen multiFlag
	fs.Var(&listen, "listen", "address to serve LMTP on (host:port or unix:/path); repeat for several backends")
	stats := fs.Duration("stats-interval", 0, "print counters this often (0: only at exit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(listen) == 0 {
		return errors.New("null-backend: give at least one --listen")
	}
	// Go raises the soft RLIMIT_NOFILE to the hard limit at start-up, so
	// thousands of connections need no ulimit here.
	nb := &bench.NullBackend{}
	defer nb.Close()
	for _, a := range listen {
		addr, err := nb.Listen(ctx, a)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "listening on %s\n", addr)
	}
	printStats := func() {
		fmt.Fprintf(stdout, "conns %d active %d messages %d deliveries %d bytes %d\n",
			nb.Conns.Load(), nb.Active.Load(), nb.Messages.Load(), nb.Deliveries.Load(), nb.Bytes.Load())
	}
	var tick <-chan time.Time
	if *stats > 0 {
		t := time.NewTicker(*stats)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			printStats()
			return nil
		case <-tick:
			printStats()
		}
	}
}

func cmdReport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "write the Markdown here instead of standard output")
	here := fs.Bool("this-machine", false, "describe this machine instead of the one recorded in the first result")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("report: give KEY=result.json arguments, e.g. a=cyrus.json b=lmtpgate.json")
	}
	var runs []bench.Labeled
	for _, arg := range fs.Args() {
		key, path, ok := strings.Cut(arg, "=")
		if !ok || key == "" || path == "" {
			return fmt.Errorf("report: %q: want KEY=result.json", arg)
		}
		r, err := bench.ReadResult(path)
		if err != nil {
			return fmt.Errorf("report: %s: %w", path, err)
		}
		runs = append(runs, bench.Labeled{Key: key, Result: r})
	}
	var m *bench.Machine
	if *here {
		m = bench.CollectMachine(ctx)
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
	if err := bench.RenderReport(w, runs, m); err != nil {
		return err
	}
	if f, ok := w.(*os.File); ok && *out != "" {
		return f.Close()
	}
	return nil
}
