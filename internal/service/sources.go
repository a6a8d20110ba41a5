package service

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"

	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/config"
	"github.com/lmtpgate/lmtpgate/internal/control"
	"github.com/lmtpgate/lmtpgate/internal/front"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mboxlist"
	"github.com/lmtpgate/lmtpgate/internal/metrics"
	"github.com/lmtpgate/lmtpgate/internal/mupdate"
	"github.com/lmtpgate/lmtpgate/internal/replica"
)

// closer is a lookup source or backend pool that holds a file watch or
// connections.
type closer interface{ Close() error }

// part is one long-lived piece of a routing state (a source or the backend
// pool) together with the settings it was built from, so that a reload can
// keep it when its settings did not change: the mailboxes.db index is not
// re-read and MUPDATE or backend connections are not dropped for an
// unrelated edit. The settings are the packages' own Config values.
type part struct {
	key any
	obj closer
}

// state is one configuration snapshot made live. It hangs off the
// Runtime it built (Runtime.Ext), so the daemon has one holder for all
// that is live and a reader never mixes two snapshots.
type state struct {
	cfg   *config.Config
	rt    *front.Runtime
	pool  *backend.Pool
	parts map[string]part // by source name, and "backends"
}

// stateOf returns the snapshot a Runtime belongs to.
func stateOf(rt *front.Runtime) *state { return rt.Ext.(*state) }

// mupdateKey is what a MUPDATE source is built from.
type mupdateKey struct {
	m     mupdate.Config
	cache lookup.CacheConfig
}

// build makes the routing state for cfg, taking over from prev every part
// whose settings are unchanged. On error nothing of the new state is left
// running and prev is untouched.
func build(ctx context.Context, cfg *config.Config, prev *state, log *slog.Logger, m *metrics.Metrics) (*state, error) {
	st := &state{cfg: cfg, parts: map[string]part{}}
	var created []closer
	fail := func(err error) (*state, error) {
		for _, c := range created {
			c.Close()
		}
		return nil, err
	}
	reuse := func(name string, key any) (closer, bool) {
		if prev == nil {
			return nil, false
		}
		if p, ok := prev.parts[name]; ok && reflect.DeepEqual(p.key, key) {
			return p.obj, true
		}
		return nil, false
	}

	var sources []lookup.Source
	for _, name := range cfg.Order() {
		var key any
		switch name {
		case config.SourceMailboxesDB:
			key = cfg.Lookup.MailboxesDB
		case config.SourceLocalMupdate:
			key = mupdateKey{cfg.Lookup.Local, cfg.Lookup.Cache}
		case config.SourceMasterMupdate:
			key = mupdateKey{cfg.Lookup.Master, cfg.Lookup.Cache}
		case config.SourceMasterReplica:
			// The mode is not part of the key: a mode switch keeps the
			// replica and its list, and only starts or stops its stream
			// (activate).
			key = cfg.Lookup.Replica
		}
		obj, ok := reuse(name, key)
		if !ok {
			var err error
			if obj, err = newSource(ctx, cfg, name, log); err != nil {
				return fail(err)
			}
			created = append(created, obj)
		}
		st.parts[name] = part{key: key, obj: obj}
		sources = append(sources, obj.(lookup.Source))
	}

	obj, ok := reuse("backends", cfg.Backends)
	if !ok {
		pool := backend.NewPool(cfg.Backends, log)
		if m != nil {
			pool.SetObserver(m.BackendDelivery)
		}
		obj = pool
		created = append(created, obj)
	}
	st.parts["backends"] = part{key: cfg.Backends, obj: obj}
	st.pool = obj.(*backend.Pool)

	chain := lookup.NewChain(cfg.Lookup.Timeout, sources...)
	if m != nil {
		chain = chain.WithObserver(m.Lookup)
	}
	st.rt = &front.Runtime{
		Mode:                 string(cfg.Mode),
		Address:              cfg.Address.Settings,
		Chain:                chain,
		Backends:             st.pool,
		VerifyRcpt:           cfg.Backends.VerifyRcpt,
		OverQuotaPermFailure: cfg.Address.OverQuotaPermFailure,
		DeletedPrefix:        cfg.Address.DeletedPrefix,
		SpoolMemoryLimit:     cfg.LMTP.SpoolMemoryLimit,
		SpoolDir:             cfg.LMTP.SpoolDir,
		Ext:                  st,
	}
	return st, nil
}

func newSource(ctx context.Context, cfg *config.Config, name string, log *slog.Logger) (closer, error) {
	switch name {
	case config.SourceMailboxesDB:
		db := mboxlist.New(cfg.Lookup.MailboxesDB, log)
		// A missing or damaged file is not a reason to refuse to run:
		// the source answers "unavailable" (never "not found") until a
		// good file appears, and the watcher keeps looking.
		if err := db.Start(context.WithoutCancel(ctx)); err != nil {
			log.Error("mailboxes.db not usable yet", "source", name, "path", cfg.Lookup.MailboxesDB.Path, "err", err.Error())
		}
		return db, nil
	case config.SourceLocalMupdate, config.SourceMasterMupdate:
		m := cfg.Lookup.Local
		if name == config.SourceMasterMupdate {
			m = cfg.Lookup.Master
		}
		c := mupdate.New(name, m, log)
		return &cachedMupdate{Cache: lookup.NewCache(c, cfg.Lookup.Cache), client: c}, nil
	case config.SourceMasterReplica:
		r, err := replica.New(cfg.Lookup.Replica, log)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return r, nil
	}
	return nil, fmt.Errorf("unknown lookup source %q", name)
}

// activate applies st's mode to the parts that follow it: the master
// replica streams in master mode and, in no-master mode, holds no
// connection to the master and serves its last list (what Cyrus's
// `mupdate -m` does, without a restart). It is called once st is built,
// so a build that fails changes nothing.
func activate(st *state) {
	if r := st.replica(); r != nil {
		r.SetActive(st.cfg.Mode != config.ModeNoMaster)
	}
}

// replica is st's master replica, or nil.
func (st *state) replica() *replica.Replica {
	if p, ok := st.parts[config.SourceMasterReplica]; ok {
		return p.obj.(*replica.Replica)
	}
	return nil
}

// cachedMupdate is a MUPDATE client behind its answer cache.
type cachedMupdate struct {
	*lookup.Cache
	client *mupdate.Client
}

func (c *cachedMupdate) Close() error { return c.client.Close() }

// retire closes the parts of old that next did not take over.
func retire(old, next *state) {
	for name, p := range old.parts {
		if next != nil {
			if np, ok := next.parts[name]; ok && np.obj == p.obj {
				continue
			}
		}
		p.obj.Close()
	}
}

// sourceStatus is one source's health in st.
func sourceStatus(st *state, name string) control.SourceStatus {
	ss := control.SourceStatus{Name: name}
	p, ok := st.parts[name]
	if !ok {
		ss.Detail = "not configured"
		return ss
	}
	if hr, ok := p.obj.(lookup.HealthReporter); ok {
		ss.Health = hr.Health()
	}
	return ss
}

// sourceStatuses is every source of st in order.
func sourceStatuses(st *state) []control.SourceStatus {
	var out []control.SourceStatus
	for _, name := range st.cfg.Order() {
		out = append(out, sourceStatus(st, name))
	}
	return out
}
