package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/config"
	"github.com/lmtpgate/lmtpgate/internal/cyrusdb"
	"github.com/lmtpgate/lmtpgate/internal/journal"
	"github.com/lmtpgate/lmtpgate/internal/mboxlist"
	"github.com/lmtpgate/lmtpgate/internal/mupdate"
	"github.com/lmtpgate/lmtpgate/internal/replica"
)

// check validates the configuration as the daemon would load it, and then
// what the daemon will meet: whether each lookup source can answer, paths
// the packaged unit's sandbox hides, passwords that are empty or would go
// out in clear. It fails (non-zero) on anything that will surely fail and
// prints a warning for what only might. With connect it also logs in to
// every backend the directory names (a few per server) and every MUPDATE
// source: the pre-flight before the MTA is pointed at the socket.
func check(ctx context.Context, path string, connect bool, stdout io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	var problems []string
	problem := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stdout, "warning:", w)
	}
	for _, p := range cfg.Problems {
		problem("%s", p)
	}
	sb, err := config.LoadSandbox(config.UnitPaths())
	if err != nil {
		fmt.Fprintf(stdout, "warning: cannot read the unit: %v\n", err)
	}
	for _, p := range config.SandboxProblems(cfg, sb) {
		problem("%s", p)
	}
	if cfg.ModeProblem != "" {
		problem("state_dir: %s", cfg.ModeProblem)
	}

	answering, servers := checkSources(ctx, cfg, stdout)
	if answering == 0 {
		problem("lookup.order: no source in [%s] can answer, so every recipient would be deferred; give mailboxes-db a readable file or configure a MUPDATE source", strings.Join(cfg.Order(), ", "))
	}
	// The directory names the backends; their passwords must not go out
	// in clear.
	pool := backend.NewPool(cfg.Backends, nil)
	defer pool.Close()
	for _, s := range directoryServers(cfg, servers) {
		t, err := backend.ParseServer(s, &cfg.Backends)
		switch {
		case err != nil:
			fmt.Fprintf(stdout, "warning: the directory names the backend %q, which cannot be used: %v\n", s, err)
		case pool.Available(s) != nil:
			problem("backends.allowed_hosts: the directory names the backend %s, which is not allowed", s)
		case cfg.Backends.Cleartext(t):
			fmt.Fprintf(stdout, "warning: backend %s: the proxy password goes there in clear text; use a /tls server string or backends.require_tls\n", s)
		}
	}
	if connect {
		problems = append(problems, preflight(ctx, cfg, pool, directoryServers(cfg, servers), stdout)...)
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(stdout, "error:", p)
		}
		return fmt.Errorf("%s: %d problem(s), see above", path, len(problems))
	}
	fmt.Fprintf(stdout, "%s: OK (mode %s from %s; lookup order %s)\n", path, cfg.Mode, cfg.ModeFrom, strings.Join(cfg.Order(), ", "))
	return nil
}

// checkSources says how many sources in the order can answer, and
// returns the backends the loaded directories name.
func checkSources(ctx context.Context, cfg *config.Config, stdout io.Writer) (answering int, servers []string) {
	for _, name := range cfg.Order() {
		switch name {
		case config.SourceMailboxesDB:
			db := cfg.Lookup.MailboxesDB
			info, err := cyrusdb.Stat(db.Path)
			if err != nil {
				fmt.Fprintf(stdout, "warning: lookup.mailboxes_db: %v\n", err)
				continue
			}
			x, err := mboxlist.LoadOnce(ctx, db.Path, db.Format)
			if err != nil {
				fmt.Fprintf(stdout, "warning: lookup.mailboxes_db: %s cannot be read: %v\n", db.Path, err)
				continue
			}
			answering++
			servers = mergeServers(servers, x.Servers())
			fmt.Fprintf(stdout, "%s: %s format, %d bytes, %d mailboxes on %d backends\n", db.Path, info.Format, info.FileSize, x.Len(), len(servers))
		case config.SourceLocalMupdate, config.SourceMasterMupdate:
			if !hasProblem(cfg, "lookup."+strings.ReplaceAll(name, "-", "_")+".password") {
				answering++
			}
		case config.SourceMasterReplica:
			ok, fromSnapshot := checkReplica(cfg, stdout)
			if ok {
				answering++
			}
			servers = mergeServers(servers, fromSnapshot)
		}
	}
	return answering, servers
}

// mergeServers adds to a the servers of b it lacks.
func mergeServers(a, b []string) []string {
	for _, s := range b {
		if !slices.Contains(a, s) {
			a = append(a, s)
		}
	}
	return a
}

// checkReplica reports on the master replica's snapshot and says whether
// the replica will have a list to answer from: its snapshot, or the
// master's dump when the master's login is configured. It returns the
// backends the snapshot names, for --connect.
func checkReplica(cfg *config.Config, stdout io.Writer) (bool, []string) {
	rc := cfg.Lookup.Replica
	fromSnapshot := false
	var servers []string
	switch info, err := replica.CheckSnapshot(rc.SnapshotPath); {
	case rc.SnapshotPath == "":
		fmt.Fprintln(stdout, "warning: lookup.master_replica.snapshot is empty: after a restart during a master outage there is no list to route from")
	case errors.Is(err, fs.ErrNotExist):
		fmt.Fprintf(stdout, "%s: no snapshot yet (it is written after the first dump from the master)\n", rc.SnapshotPath)
	case err != nil:
		fmt.Fprintf(stdout, "warning: lookup.master_replica.snapshot: %v (the replica refuses it and waits for the master's dump)\n", err)
	default:
		fromSnapshot = true
		fmt.Fprintf(stdout, "%s: %d mailboxes on %d backends from %s, as of %s (%s ago)\n", rc.SnapshotPath, info.Mailboxes, len(info.Servers), info.Master, info.AsOf.Format(time.RFC3339), time.Since(info.AsOf).Round(time.Second))
		servers = info.Servers
	}
	if fromSnapshot {
		return true, servers
	}
	return cfg.Mode != config.ModeNoMaster && !hasProblem(cfg, "lookup.master_mupdate.password"), nil
}

func hasProblem(cfg *config.Config, key string) bool {
	for _, p := range cfg.Problems {
		if p.Key == key {
			return true
		}
	}
	return false
}

// directoryServers is every backend the directory and backends.addresses
// name.
func directoryServers(cfg *config.Config, fromDB []string) []string {
	out := slices.Clone(fromDB)
	for name := range cfg.Backends.Addresses {
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// preflight logs in to every backend (LHLO, STARTTLS, AUTH, QUIT; at most
// four servers at once) and every MUPDATE source, and reports each by name.
func preflight(ctx context.Context, cfg *config.Config, pool *backend.Pool, servers []string, stdout io.Writer) []string {
	var problems []string
	type result struct {
		name string
		err  error
		dur  time.Duration
	}
	results := make([]result, len(servers))
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			start := time.Now()
			err := pool.Probe(ctx, s)
			results[i] = result{s, err, time.Since(start)}
		}()
	}
	wg.Wait()
	for _, r := range results {
		if r.err != nil {
			problems = append(problems, fmt.Sprintf("backend %s: %v", r.name, r.err))
			continue
		}
		fmt.Fprintf(stdout, "backend %s: LMTP login as %q OK (%d ms)\n", r.name, cfg.Backends.AuthName, r.dur.Milliseconds())
	}
	if len(servers) == 0 {
		fmt.Fprintln(stdout, "warning: no backend to try: the directory names none (is mailboxes.db readable, or has the master replica written its snapshot? backends.addresses can name them)")
	}
	for _, name := range cfg.Order() {
		var m mupdate.Config
		switch name {
		case config.SourceLocalMupdate:
			m = cfg.Lookup.Local
		case config.SourceMasterMupdate, config.SourceMasterReplica:
			if name == config.SourceMasterReplica && (cfg.Mode == config.ModeNoMaster || slices.Contains(cfg.Order(), config.SourceMasterMupdate)) {
				// No stream in no-master mode; the master's login is
				// tried once.
				continue
			}
			m = cfg.Lookup.Master
		default:
			continue
		}
		c := mupdate.New(name, m, nil)
		pctx, cancel := context.WithTimeout(ctx, m.Budget())
		start := time.Now()
		err := c.Ping(pctx)
		cancel()
		c.Close()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s at %s: %v", name, m.Address, err))
			continue
		}
		fmt.Fprintf(stdout, "%s at %s: MUPDATE login as %q OK (%d ms)\n", name, m.Address, m.AuthName, time.Since(start).Milliseconds())
	}
	return problems
}

// newCLILogger is the log of a command run by hand: warnings and worse on
// stderr.
func newCLILogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn, ReplaceAttr: journal.ReplaceLevel}))
}
