package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/bench"
	"github.com/lmtpgate/lmtpgate/internal/murderlab"
)

// cmdLab stands up a real Cyrus murder (internal/murderlab) with Cyrus's
// own LMTP proxy, creates mailboxes on every backend and runs the same load
// against (a) Cyrus's frontend proxy and (d) the backends directly, then
// writes the JSON results and a Markdown report. Runs b and c (lmtpgate)
// are added by passing their JSON results to `lmtpbench report`.
func cmdLab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		dir       = fs.String("dir", "", "directory for the lab and the results (required; must be new or empty)")
		backends  = fs.Int("backends", 2, "number of Cyrus backends")
		mailboxes = fs.Int("mailboxes", 10, "mailboxes per backend")
		conns     = fs.Int("conns", 8, "parallel connections")
		messages  = fs.Int("messages", 2000, "messages per run")
		rcptMix   = fs.String("rcpts-mix", "1:50,2x:30,10:20", "recipient mix")
		sizeMix   = fs.String("size-mix", bench.DefaultSizeMix, "size mix")
		seed      = fs.Uint64("seed", 1, "seed")
		runs      = fs.String("runs", "a,d", "runs to do: a (Cyrus proxy), b (lmtpgate, mailboxes-db), c (lmtpgate, master-mupdate), d (backends directly)")
		gateBin   = fs.String("lmtpgate", "", "lmtpgate binary for runs b and c")
		loads     multiFlag
	)
	fs.Var(&loads, "load", "a load as RCPTMIX/SIZEMIX, e.g. '2x:1/1KiB:1'; repeat for several (default: --rcpts-mix/--size-mix)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("lab: --dir is required")
	}
	if err := murderlab.Available(); err != nil {
		return err
	}
	if len(loads) == 0 {
		loads = multiFlag{*rcptMix + "/" + *sizeMix}
	}
	type load struct {
		rm bench.RcptMix
		sm bench.SizeMix
	}
	var lds []load
	for _, l := range loads {
		r, sz, ok := strings.Cut(l, "/")
		if !ok {
			return fmt.Errorf("lab: --load %q: want RCPTMIX/SIZEMIX", l)
		}
		rm, err := bench.ParseRcptMix(r)
		if err != nil {
			return err
		}
		sm, err := bench.ParseSizeMix(sz)
		if err != nil {
			return err
		}
		lds = append(lds, load{rm, sm})
	}
	keys := strings.Split(*runs, ",")
	for i, k := range keys {
		keys[i] = strings.TrimSpace(k)
		switch keys[i] {
		case "a", "d":
		case "b", "c":
			if *gateBin == "" {
				return fmt.Errorf("lab: run %s needs --lmtpgate", keys[i])
			}
		default:
			return fmt.Errorf("lab: unknown run %q", k)
		}
	}
	labDir := filepath.Join(*dir, "lab")
	if err := os.MkdirAll(labDir, 0o755); err != nil {
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	lab, err := murderlab.Start(startCtx, murderlab.Options{Dir: labDir, Backends: *backends, CyrusProxy: true, Log: stderr})
	if err != nil {
		return err
	}
	defer lab.Close()

	// Mailboxes b<i>u<j> on backend i; without virtdomains Cyrus ignores
	// the recipient's domain.
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
		direct = append(direct, lab.BackendLMTPAddr(i))
	}
	pids := lab.PIDs()
	frontendPID := pids[len(pids)-1] // master, backends..., frontend
	creds := lab.Creds()
	machine := bench.CollectMachine(ctx)

	// Every MUPDATE question lmtpgate asks the master in run c passes
	// through this relay, which counts them.
	relay, err := bench.NewCountingRelay(ctx, "127.0.0.1:0", lab.MasterMupdateAddr())
	if err != nil {
		return err
	}
	defer relay.Close()

	out, err := os.Create(filepath.Join(*dir, "results.md"))
	if err != nil {
		return err
	}
	defer out.Close()
	fmt.Fprintf(out, "## Real murder: %d backends, %d mailboxes each\n\n", lab.Backends(), *mailboxes)
	fmt.Fprintf(out, "One Cyrus 3.6 murder on loopback (master, %d backends, a frontend with its mupdate replica and Cyrus's LMTP proxy), the same mailboxes and the same seeded message sequence for every run. lmtpgate runs as its own process; its CPU and peak RSS are sampled from /proc. Cyrus's figures are those of the frontend's whole process tree (master, lmtpd -a children, the mupdate replica and idle services), an upper bound for its LMTP proxy alone. The backends do the real work (each delivery is written and fsynced by a Cyrus lmtpd), so every run shares their cost.\n\n", lab.Backends())
	for li, ld := range lds {
		base := bench.Config{Backends: bes, Conns: *conns, Messages: *messages, RcptMix: ld.rm, SizeMix: ld.sm, Seed: *seed}
		var labeled []bench.Labeled
		var mupdateNote string
		for _, key := range keys {
			cfg := base
			var g *gate
			switch key {
			case "a":
				// The frontend master's whole tree: lmtpd -a children, and
				// also the idle imapd and the mupdate replica.
				cfg.Label = bench.DefaultDescriptions["a"]
				cfg.Target = lab.CyrusProxyLMTPAddr()
				cfg.PID, cfg.PIDTree = frontendPID, true
			case "d":
				cfg.Label = bench.DefaultDescriptions["d"]
				cfg.Direct = direct
				cfg.AuthUser, cfg.AuthPass = creds.Proxy, creds.ProxyPassword
			case "b", "c":
				order, master := "[mailboxes-db]", lab.MasterMupdateAddr()
				if key == "c" {
					order, master = "[master-mupdate]", relay.Addr()
				}
				yaml := labGateConfig(lab, order, master, *conns)
				g, err = startGate(ctx, *gateBin, filepath.Join(*dir, fmt.Sprintf("gate-%d-%s", li+1, key)), yaml)
				if err != nil {
					return err
				}
				cfg.Label = bench.DefaultDescriptions[key]
				cfg.Target = g.LMTP
				cfg.PID = g.PID()
				relay.Reset()
			}
			fmt.Fprintf(stdout, "== load %d run %s: %s\n", li+1, key, cfg.Label)
			res, err := bench.Run(ctx, cfg)
			if g != nil {
				g.Stop()
			}
			if err != nil {
				return err
			}
			res.Machine = machine
			printResult(stdout, res)
			if key == "c" {
				mupdateNote = mupdateSummary(relay, res, labCacheTTL)
				fmt.Fprintln(stdout, mupdateNote)
			}
			b, err := bench.EncodeResult(res)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(*dir, fmt.Sprintf("load%d-%s.json", li+1, key)), b, 0o644); err != nil {
				return err
			}
			labeled = append(labeled, bench.Labeled{Key: key, Result: res})
		}
		fmt.Fprintf(out, "### Load %d: rcpts `%s`, sizes `%s`\n\n", li+1, ld.rm, ld.sm)
		if err := bench.RenderRuns(out, labeled, "####"); err != nil {
			return err
		}
		renderLabTargets(out, labeled)
		if mupdateNote != "" {
			fmt.Fprintf(out, "\n#### MUPDATE queries in run c\n\n%s\n", mupdateNote)
		}
		fmt.Fprintln(out)
	}
	if err := bench.RenderMachine(out, machine, "###"); err != nil {
		return err
	}
	return out.Close()
}

// labCacheTTL is the positive cache TTL lmtpgate runs with in the lab: the
// packaged default.
const labCacheTTL = 30 * time.Second

// labGateConfig is lmtpgate's configuration for the lab: the frontend's
// imapd.conf (for mailboxes.db and the address rules), the proxy
// credentials for the backends, and the master's MUPDATE at master.
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

// renderLabTargets says where the delivery rates stand against lmtpgate's
// targets: at least 1.5 times Cyrus's proxy, at least 0.9 times no proxy,
// and the master-only setup within 10% of the local mailboxes.db.
func renderLabTargets(w io.Writer, runs []bench.Labeled) {
	rate := map[string]float64{}
	for _, l := range runs {
		rate[l.Key] = l.Result.DeliveriesPerSec
	}
	var lines []string
	check := func(x, y string, want float64, text string, atLeast bool) {
		if rate[x] <= 0 || rate[y] <= 0 {
			return
		}
		r := rate[x] / rate[y]
		ok := r >= want
		if !atLeast {
			ok = r >= want && r <= 2-want
		}
		verdict := "met"
		if !ok {
			verdict = "**missed**"
		}
		lines = append(lines, fmt.Sprintf("- deliveries/s %s/%s = %.2f (target: %s): %s", x, y, r, text, verdict))
	}
	check("b", "a", 1.5, "≥ 1.5", true)
	check("b", "d", 0.9, "≥ 0.9", true)
	check("c", "b", 0.9, "within 10% of b", false)
	if len(lines) > 0 {
		fmt.Fprintf(w, "\n#### Targets\n\n%s\n", strings.Join(lines, "\n"))
	}
}
