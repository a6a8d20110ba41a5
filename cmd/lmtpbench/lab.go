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
		runs      = fs.String("runs", "a,d", "runs to do: a (Cyrus proxy), d (backends directly)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("lab: --dir is required")
	}
	if err := murderlab.Available(); err != nil {
		return err
	}
	rm, err := bench.ParseRcptMix(*rcptMix)
	if err != nil {
		return err
	}
	sm, err := bench.ParseSizeMix(*sizeMix)
	if err != nil {
		return err
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

	base := bench.Config{Backends: bes, Conns: *conns, Messages: *messages, RcptMix: rm, SizeMix: sm, Seed: *seed}
	var labeled []bench.Labeled
	for _, key := range strings.Split(*runs, ",") {
		cfg := base
		switch strings.TrimSpace(key) {
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
		default:
			return fmt.Errorf("lab: unknown run %q", key)
		}
		fmt.Fprintf(stdout, "== run %s: %s\n", key, cfg.Label)
		res, err := bench.Run(ctx, cfg)
		if err != nil {
			return err
		}
		res.Machine = machine
		printResult(stdout, res)
		b, err := bench.EncodeResult(res)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(*dir, key+".json"), b, 0o644); err != nil {
			return err
		}
		labeled = append(labeled, bench.Labeled{Key: key, Result: res})
	}
	f, err := os.Create(filepath.Join(*dir, "results.md"))
	if err != nil {
		return err
	}
	if err := bench.RenderReport(f, labeled, machine); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
