package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/bench"
	"github.com/lmtpgate/lmtpgate/internal/murderlab"
)

// cmdLab stands up a real Cyrus murder (internal/murderlab) with Cyrus's
// own LMTP proxy, puts its backends and its master across an emulated
// network (delay relays, see labNet), creates mailboxes on every backend
// and, at each one-way delay, runs every load against (a) Cyrus's frontend
// proxy, (b) lmtpgate on the frontend's mailboxes.db and any variants of it
// with extra configuration, (c) lmtpgate asking the master's MUPDATE, and
// (d) the backends directly across the same relays. It writes one JSON
// result per run, a Markdown report and, on request, a plot.
func cmdLab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		dir       = fs.String("dir", "", "directory for the lab and the results (required; must be new or empty)")
		backends  = fs.Int("backends", 2, "number of Cyrus backends")
		mailboxes = fs.Int("mailboxes", 10, "mailboxes per backend")
		conns     = fs.Int("conns", 8, "parallel connections")
		messages  = fs.Int("messages", 2000, "messages per run")
		warmup    = fs.Int("warmup", 2, "messages per connection sent before each run and not counted, so that the connections a proxy keeps to the backends are open when the clock starts")
		rcptMix   = fs.String("rcpts-mix", "1:50,2x:30,10:20", "recipient mix")
		sizeMix   = fs.String("size-mix", bench.DefaultSizeMix, "size mix")
		seed      = fs.Uint64("seed", 1, "seed")
		runs      = fs.String("runs", "a,d", "runs to do: a (Cyrus proxy), b (lmtpgate, mailboxes-db), c (lmtpgate, master-mupdate), d (backends directly)")
		gateBin   = fs.String("lmtpgate", "", "lmtpgate binary for runs b and c")
		delays    = fs.String("delays", "0", "one-way delays of the emulated network between the frontend and the backends and master, comma-separated, e.g. 0,500us,2ms")
		bigSize   = fs.String("big-size", "5MiB", "message size of the large-message latency comparison")
		bigMsgs   = fs.Int("big-messages", 0, "messages (one connection, one recipient) in the large-message latency comparison; 0 skips it")
		bigDelay  = fs.Duration("big-delay", 2*time.Millisecond, "one-way delay of the large-message latency comparison")
		plot      = fs.String("plot", "", "draw deliveries/s and p99 against delay into this PNG file with gnuplot")
		repeat    = fs.Int("repeat", 1, "measure every run this many times, in alternating order of runs, and keep the best (highest deliveries/s; lowest p50 for the large messages): the machine is shared and its neighbours come and go")
		retries   = fs.Int("retries", 2, "do a run again up to this many times when other programs used more than --max-other of a core during it, keeping the least disturbed attempt; above 0, each attempt also waits (up to 10 s) for the machine to calm down first")
		budget    = fs.Duration("retry-budget", 4*time.Minute, "time the whole lab may spend waiting for a quiet machine and on retries")
		maxOther  = fs.Float64("max-other", 0.25, "CPU other programs may use during a run, as a fraction of one core, before the run is done again")
		relayMD   = fs.String("relay-report", "", "Markdown written by `lmtpbench relaybench`, included as the section on the emulated network alone")
		loads     multiFlag
		extras    multiFlag
	)
	fs.Var(&loads, "load", "a load as RCPTMIX/SIZEMIX, e.g. '2x:1/1KiB:1'; repeat for several (default: --rcpts-mix/--size-mix). The first is the headline load of the targets, the second the mixed one")
	fs.Var(&extras, "gate-extra", "NAME=YAML: also run lmtpgate (as run b) with YAML merged into its configuration, as run b-NAME, e.g. 'verify=backends: {verify_rcpt: true}'; YAML may be @FILE; repeat for several")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("lab: --dir is required")
	}
	if len(loads) == 0 {
		loads = multiFlag{*rcptMix + "/" + *sizeMix}
	}
	var lds []labLoad
	for _, l := range loads {
		ld, err := parseLoad(l)
		if err != nil {
			return err
		}
		lds = append(lds, ld)
	}
	ds, err := parseDelays(*delays)
	if err != nil {
		return fmt.Errorf("lab: --delays: %w", err)
	}
	big, err := bench.ParseSizeMix(*bigSize + ":1")
	if err != nil {
		return fmt.Errorf("lab: --big-size: %w", err)
	}
	variants, err := parseGateExtras(extras)
	if err != nil {
		return err
	}
	keys, err := labKeys(*runs, variants)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if (k == "c" || strings.HasPrefix(k, "b")) && *gateBin == "" {
			return fmt.Errorf("lab: run %s needs --lmtpgate", k)
		}
	}
	if *plot != "" {
		if err := gnuplotAvailable(); err != nil {
			return err
		}
	}
	if err := murderlab.Available(); err != nil {
		return err
	}
	labDir := filepath.Join(*dir, "lab")
	if err := os.MkdirAll(labDir, 0o755); err != nil {
		return err
	}

	nw, err := newLabNet(*backends)
	if err != nil {
		return err
	}
	defer nw.Close()
	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	lab, err := murderlab.Start(startCtx, murderlab.Options{Dir: labDir, Backends: *backends, CyrusProxy: true, Log: stderr,
		BackendServername: func(i int, addr string) (string, error) { return nw.backend(ctx, i, addr) },
		FrontendMupdate:   func(addr string) (string, error) { return nw.masterMupdate(ctx, addr) },
	})
	if err != nil {
		return err
	}
	defer lab.Close()

	// Mailboxes b<i>u<j> on backend i; without virtdomains Cyrus ignores
	// the recipient's domain. They are created on the backends directly:
	// setting up is not part of any measurement.
	var bes []bench.Backend
	var direct []string
	for i := 1; i <= lab.Backends(); i++ {
		be := bench.Backend{Name: fmt.Sprintf("backend%d", i)}
		for j := 1; j <= *mailboxes; j++ {
			u := fmt.Sprintf("b%du%03d", i, j)
			if err := lab.CreateMailbox(startCtx, i, "user/"+u, nil); err != nil {
				return err
			}
			if err := lab.WaitFrontend(startCtx, "user."+u, true); err != nil {
				return err
			}
			be.Addrs = append(be.Addrs, u+"@example.org")
		}
		bes = append(bes, be)
		direct = append(direct, nw.LMTPAddr(i))
	}
	pids := lab.PIDs()
	frontendPID := pids[len(pids)-1] // master, backends..., frontend
	machine := bench.CollectMachine(ctx)

	// Every MUPDATE question lmtpgate asks the master in run c passes
	// through this relay, which counts them, and then across the network.
	counter, err := bench.NewCountingRelay(ctx, "127.0.0.1:0", nw.master.Addr())
	if err != nil {
		return err
	}
	defer counter.Close()

	r := &labRunner{dir: *dir, stdout: stdout, lab: lab, nw: nw, gateBin: *gateBin, conns: *conns, warmup: *warmup,
		frontendPID: frontendPID, direct: direct, counter: counter, machine: machine, variants: variants,
		retries: max(0, *retries), maxOther: *maxOther, budget: *budget}
	var all []*labRun
	faster := func(x, y *labRun) bool { return x.Res.DeliveriesPerSec > y.Res.DeliveriesPerSec }
	for _, d := range ds {
		nw.SetDelay(d)
		for li, ld := range lds {
			base := bench.Config{Backends: bes, Conns: *conns, Messages: *messages, RcptMix: ld.rm, SizeMix: ld.sm, Seed: *seed}
			runs, err := r.repeated(ctx, keys, *repeat, base, d, fmt.Sprintf("%s-load%d", delayName(d), li+1), faster)
			if err != nil {
				return err
			}
			for _, run := range runs {
				run.Load = li
			}
			all = append(all, runs...)
		}
	}
	var bigRuns []*labRun
	if *bigMsgs > 0 {
		nw.SetDelay(*bigDelay)
		rm, _ := bench.ParseRcptMix("1:1")
		base := bench.Config{Backends: bes, Conns: 1, Messages: *bigMsgs, RcptMix: rm, SizeMix: big, Seed: *seed}
		var bigKeys []string
		for _, key := range keys {
			if key != "c" {
				bigKeys = append(bigKeys, key)
			}
		}
		quicker := func(x, y *labRun) bool { return x.Res.Latency.P50Ms < y.Res.Latency.P50Ms }
		if bigRuns, err = r.repeated(ctx, bigKeys, *repeat, base, *bigDelay, "big-"+delayName(*bigDelay), quicker); err != nil {
			return err
		}
	}

	rep := &labReport{backends: lab.Backends(), mailboxes: *mailboxes, conns: *conns, messages: *messages, warmup: *warmup,
		loads: lds, delays: ds, keys: keys, runs: all, big: bigRuns, bigDelay: *bigDelay, bigSize: big[0].Bytes, bigMsgs: *bigMsgs,
		variants: variants, machine: machine, nw: nw, lab: lab, maxOther: *maxOther, retries: max(0, *retries), repeat: max(1, *repeat),
		budget: *budget, spent: r.spent}
	if *relayMD != "" {
		b, err := os.ReadFile(*relayMD)
		if err != nil {
			return err
		}
		rep.relaySection = string(b)
	}
	if *plot != "" {
		if err := rep.plot(*dir, *plot); err != nil {
			return err
		}
		rep.plotFile = filepath.Base(*plot)
	}
	out, err := os.Create(filepath.Join(*dir, "results.md"))
	if err != nil {
		return err
	}
	defer out.Close()
	if err := rep.render(out); err != nil {
		return err
	}
	return out.Close()
}

// labLoad is one --load.
type labLoad struct {
	rm bench.RcptMix
	sm bench.SizeMix
}

func parseLoad(s string) (labLoad, error) {
	r, sz, ok := strings.Cut(s, "/")
	if !ok {
		return labLoad{}, fmt.Errorf("lab: --load %q: want RCPTMIX/SIZEMIX", s)
	}
	rm, err := bench.ParseRcptMix(r)
	if err != nil {
		return labLoad{}, err
	}
	sm, err := bench.ParseSizeMix(sz)
	if err != nil {
		return labLoad{}, err
	}
	return labLoad{rm, sm}, nil
}

// gateVariant is one --gate-extra: run b with more configuration.
type gateVariant struct {
	name, yaml string
}

var variantName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.]*$`)

func parseGateExtras(extras []string) ([]gateVariant, error) {
	var out []gateVariant
	seen := map[string]bool{}
	for _, e := range extras {
		name, y, ok := strings.Cut(e, "=")
		if !ok || !variantName.MatchString(name) || seen[name] {
			return nil, fmt.Errorf("lab: --gate-extra %q: want NAME=YAML with a new NAME of lower-case letters, digits, '_' and '.'", e)
		}
		if file, ok := strings.CutPrefix(y, "@"); ok {
			b, err := os.ReadFile(file)
			if err != nil {
				return nil, fmt.Errorf("lab: --gate-extra %s: %w", name, err)
			}
			y = string(b)
		}
		// Fail now, not after the murder is up.
		if _, err := mergeYAML("hostname: x\n", y); err != nil {
			return nil, fmt.Errorf("lab: --gate-extra %s: %w", name, err)
		}
		seen[name] = true
		out = append(out, gateVariant{name, y})
	}
	return out, nil
}

// labKeys turns --runs into the run keys, each variant of b right after b
// (or at the end without b).
func labKeys(runs string, variants []gateVariant) ([]string, error) {
	var keys []string
	placed := false
	for _, k := range strings.Split(runs, ",") {
		k = strings.TrimSpace(k)
		switch k {
		case "a", "c", "d":
			keys = append(keys, k)
		case "b":
			keys = append(keys, k)
			for _, v := range variants {
				keys = append(keys, "b-"+v.name)
			}
			placed = true
		default:
			return nil, fmt.Errorf("lab: unknown run %q", k)
		}
	}
	if !placed {
		for _, v := range variants {
			keys = append(keys, "b-"+v.name)
		}
	}
	return keys, nil
}

// labRun is one measured run.
type labRun struct {
	Key   string
	Delay time.Duration
	Load  int // index into the loads
	Res   *bench.Result
	// RelayUp and RelayDown are the bytes that crossed the backends'
	// LMTP relays during the run, toward the backends and back.
	RelayUp, RelayDown int64
	// Mupdate summarises the FIND queries of a run c.
	Mupdate string
	// OtherCPU is the CPU other programs and the kernel's threads used
	// during the run, as a fraction of one core; Attempts is how many
	// times the run was done to find one they left alone.
	OtherCPU float64
	Attempts int
	// Repeats holds the deliveries/s of every repeat of this run (see
	// --repeat); the run itself is the best of them.
	Repeats []float64
}

// labRunner runs one configuration against one target of the lab.
type labRunner struct {
	dir         string
	stdout      io.Writer
	lab         *murderlab.Lab
	nw          *labNet
	gateBin     string
	conns       int
	warmup      int
	frontendPID int
	direct      []string
	counter     *bench.CountingRelay
	machine     *bench.Machine
	variants    []gateVariant
	retries     int
	maxOther    float64
	budget      time.Duration // for waiting and retries, over the whole lab
	spent       time.Duration
}

// repeated runs every key n times at one delay and load, in the order of
// keys and then in reverse, and so on, so that the mailboxes' growth and
// any drift weigh on every key alike. Per key it keeps the run better
// says is best, with the deliveries/s of every repeat in Repeats. Each
// repeat's result is written as prefix-key.json, later ones as
// prefix-key-rN.json.
func (r *labRunner) repeated(ctx context.Context, keys []string, n int, cfg bench.Config, d time.Duration, prefix string, better func(x, y *labRun) bool) ([]*labRun, error) {
	best := map[string]*labRun{}
	rates := map[string][]float64{}
	order := slices.Clone(keys)
	for i := range max(n, 1) {
		for _, key := range order {
			name := prefix + "-" + key
			if i > 0 {
				name += fmt.Sprintf("-r%d", i+1)
			}
			run, err := r.run(ctx, key, cfg, d, name)
			if err != nil {
				return nil, err
			}
			rates[key] = append(rates[key], run.Res.DeliveriesPerSec)
			if best[key] == nil || better(run, best[key]) {
				best[key] = run
			}
		}
		slices.Reverse(order)
	}
	out := make([]*labRun, 0, len(keys))
	for _, key := range keys {
		best[key].Repeats = rates[key]
		out = append(out, best[key])
	}
	return out, nil
}

// run measures one configuration. A run during which other programs took
// more than maxOther of a core from the shared machine is done again, up
// to retries times, and the least disturbed attempt is kept. The time
// spent waiting for a quiet machine and on retries is bounded over the
// whole lab by budget, so that a machine that never calms down does not
// make the benchmark take hours.
func (r *labRunner) run(ctx context.Context, key string, cfg bench.Config, d time.Duration, name string) (*labRun, error) {
	var best *labRun
	n := 0
	for n < 1+r.retries {
		n++
		t0 := time.Now()
		if n > 1 && r.spent >= r.budget {
			fmt.Fprintf(r.stdout, "no retry      the %s allowed for waiting and retries is used up\n", r.budget)
			break
		}
		if r.retries > 0 && r.spent < r.budget {
			w0 := time.Now()
			r.waitQuiet(ctx)
			if n == 1 {
				r.spent += time.Since(w0) // a retry's wait is in its own time
			}
		}
		run, err := r.attempt(ctx, key, cfg, d, name)
		if err != nil {
			return nil, err
		}
		if n > 1 {
			r.spent += time.Since(t0)
		}
		if best == nil || run.OtherCPU < best.OtherCPU {
			best = run
		}
		if run.OtherCPU <= r.maxOther {
			break
		}
		fmt.Fprintf(r.stdout, "disturbed     other programs used %.0f%% of a core during the run\n", 100*run.OtherCPU)
	}
	best.Attempts = n
	b, err := bench.EncodeResult(best.Res)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(r.dir, name+".json"), b, 0o644); err != nil {
		return nil, err
	}
	return best, nil
}

// quietWait bounds how long a run waits for other programs to calm down.
const quietWait = 10 * time.Second

// waitQuiet waits, up to quietWait, until other programs leave the cores
// to the benchmark: until, over one second, they use no more than
// maxOther of a core.
func (r *labRunner) waitQuiet(ctx context.Context) {
	for deadline := time.Now().Add(quietWait); time.Now().Before(deadline) && ctx.Err() == nil; {
		other, _, err := measureCPU(func() { time.Sleep(time.Second) })
		if err != nil || other <= r.maxOther {
			return
		}
		fmt.Fprintf(r.stdout, "waiting       other programs use %.0f%% of a core\n", 100*other)
	}
}

// measureCPU runs f and returns the CPU, as a fraction of one core over
// f's duration, that other programs and the kernel's threads used and
// that this process and its descendants (the load generator, the relays,
// Cyrus, lmtpgate) used.
func measureCPU(f func()) (other, own float64, err error) {
	busy0, err := bench.SystemBusySeconds()
	if err != nil {
		return 0, 0, err
	}
	s, err := bench.StartSampler(os.Getpid(), true, 500*time.Millisecond)
	if err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	f()
	el := time.Since(t0).Seconds()
	ps := s.Stop()
	busy1, err := bench.SystemBusySeconds()
	if err != nil || el <= 0 {
		return 0, 0, err
	}
	return max(0, busy1-busy0-ps.CPUSeconds) / el, ps.CPUSeconds / el, nil
}

func (r *labRunner) attempt(ctx context.Context, key string, cfg bench.Config, d time.Duration, name string) (*labRun, error) {
	var g *gate
	switch {
	case key == "a":
		// The frontend master's whole tree: lmtpd -a children, and also
		// the idle imapd and the mupdate replica.
		cfg.Label = bench.DefaultDescriptions["a"]
		cfg.Target = r.lab.CyrusProxyLMTPAddr()
		cfg.PID, cfg.PIDTree = r.frontendPID, true
	case key == "d":
		cfg.Label = bench.DefaultDescriptions["d"] + ", across the same relays"
		cfg.Direct = r.direct
		cfg.AuthUser, cfg.AuthPass = r.lab.Creds().Proxy, r.lab.Creds().ProxyPassword
	default: // b, b-NAME, c
		order, master := "[mailboxes-db]", r.nw.master.Addr()
		if key == "c" {
			order, master = "[master-mupdate]", r.counter.Addr()
		}
		yaml := labGateConfig(r.lab, order, master, r.conns)
		cfg.Label = bench.DefaultDescriptions[key]
		if v, ok := strings.CutPrefix(key, "b-"); ok {
			for _, gv := range r.variants {
				if gv.name == v {
					merged, err := mergeYAML(yaml, gv.yaml)
					if err != nil {
						return nil, err
					}
					yaml = merged
					cfg.Label = fmt.Sprintf("%s, with %s", bench.DefaultDescriptions["b"], oneLine(gv.yaml))
				}
			}
		}
		gdir := filepath.Join(r.dir, "gate-"+name)
		os.RemoveAll(gdir) // an earlier attempt's
		var err error
		if g, err = startGate(ctx, r.gateBin, gdir, yaml); err != nil {
			return nil, err
		}
		defer g.Stop()
		cfg.Target = g.LMTP
		cfg.PID = g.PID()
	}
	fmt.Fprintf(r.stdout, "== %s (one-way delay %s): %s\n", name, fmtDelay(d), cfg.Label)
	if r.warmup > 0 {
		w := cfg
		w.Messages, w.PID, w.Seed = r.warmup*cfg.Conns, 0, cfg.Seed+1<<32
		if _, err := bench.Run(ctx, w); err != nil {
			return nil, err
		}
	}
	r.counter.Reset()
	up0, down0 := r.nw.LMTPBytes()
	// Everything this benchmark runs (the load generator and the relays
	// in this process, Cyrus, lmtpgate) descends from this process; the
	// rest of the machine's busy time went to other programs.
	var res *bench.Result
	var runErr error
	other, own, err := measureCPU(func() { res, runErr = bench.Run(ctx, cfg) })
	if runErr != nil {
		return nil, runErr
	}
	if err != nil {
		return nil, err
	}
	up1, down1 := r.nw.LMTPBytes()
	res.Machine = r.machine
	run := &labRun{Key: key, Delay: d, Res: res, RelayUp: up1 - up0, RelayDown: down1 - down0, OtherCPU: other}
	printResult(r.stdout, res)
	fmt.Fprintf(r.stdout, "relays        %.1f MiB to the backends, %.1f MiB back\n", float64(run.RelayUp)/(1<<20), float64(run.RelayDown)/(1<<20))
	fmt.Fprintf(r.stdout, "machine       this benchmark %.0f%% of a core, other programs %.0f%%\n", 100*own, 100*other)
	if key == "c" {
		run.Mupdate = mupdateSummary(r.counter, res, labCacheTTL)
		fmt.Fprintln(r.stdout, run.Mupdate)
	}
	// Every message crosses the network to at least one backend, so less
	// than the message bytes on the relays means some path bypasses them.
	if res.Replies4xx+res.Replies5xx+res.NoReply == 0 && run.RelayUp < res.BytesSent {
		return nil, fmt.Errorf("lab: run %s sent %d message bytes but only %d crossed the backend relays: a path to the backends bypasses the emulated network", name, res.BytesSent, run.RelayUp)
	}
	return run, nil
}

// oneLine shows a YAML snippet on one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// delayName is a delay for a file name: "0ms", "0.5ms", "2ms".
func delayName(d time.Duration) string {
	return strings.ReplaceAll(fmtDelay(d), " ", "")
}

// labCacheTTL is the positive cache TTL lmtpgate runs with in the lab: the
// packaged default.
const labCacheTTL = 30 * time.Second

// labGateConfig is lmtpgate's configuration for the lab: the frontend's
// imapd.conf (for mailboxes.db and the address rules), the proxy
// credentials for the backends, and the master's MUPDATE at master. The
// backends are reached at their servernames (the relays) on the default
// LMTP port, 2003. Only keys today's lmtpgate knows are used, so that any
// version can be measured; levers are added with --gate-extra.
func labGateConfig(l *murderlab.Lab, order, master string, conns int) string {
	c := l.Creds()
	return fmt.Sprintf(`hostname: lmtpgate.bench
imapd_conf: %s
log: {level: warn, format: text}
lookup:
  order: %s
  master_mupdate: {address: "%s", authname: %s, password: %s}
  cache: {positive_ttl: %s}
backends:
  authname: %s
  password: %s
  max_idle: %d
`, l.FrontendImapdConf(), order, master, c.Mupdate, c.MupdatePassword, labCacheTTL, c.Proxy, c.ProxyPassword, max(conns, 4))
}

// mupdateSummary says how many FIND queries reached the master during a
// run, per distinct mailbox and per cache TTL: with a working cache each
// mailbox is asked for about once per TTL.
func mupdateSummary(r *bench.CountingRelay, res *bench.Result, ttl time.Duration) string {
	names := r.Names()
	finds := r.Finds.Load()
	periods := max(1, res.WallSeconds/ttl.Seconds())
	per := 0.0
	if len(names) > 0 {
		per = float64(finds) / float64(len(names)) / periods
	}
	most := 0
	for _, n := range names {
		most = max(most, n)
	}
	return fmt.Sprintf("- %d FIND queries reached the master for %d distinct mailboxes in %.1f s (cache positive TTL %s, so %.2f TTL periods): %.2f queries per distinct mailbox per TTL; the most-asked mailbox was asked %d times.",
		finds, len(names), res.WallSeconds, ttl, periods, per, most)
}
