package service

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"

	"github.com/lmtpgate/lmtpgate/internal/address"
	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/config"
	"github.com/lmtpgate/lmtpgate/internal/cyrusdb"
	"github.com/lmtpgate/lmtpgate/internal/front"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mboxlist"
	"github.com/lmtpgate/lmtpgate/internal/mupdate"
)

// closer is a lookup source or backend pool that holds a file watch or
// connections.
type closer interface{ Close() error }

// part is one long-lived piece of a routing state (a source or the backend
// pool) together with the settings it was built from, so that a reload can
// keep it when its settings did not change: the mailboxes.db index is not
// re-read and MUPDATE connections are not dropped for an unrelated edit.
type part struct {
	key any
	obj closer
}

// state is one configuration snapshot made live.
type state struct {
	cfg   *config.Config
	rt    *front.Runtime
	parts map[string]part // by source name, and "backends"
}

// sourceOf returns the lookup source named name in st, unwrapping the cache.
func (st *state) source(name string) lookup.Source {
	p, ok := st.parts[name]
	if !ok {
		return nil
	}
	s, _ := p.obj.(lookup.Source)
	return s
}

type mailboxesDBKey struct {
	path    string
	format  string
	poll    string
	force   bool
	replica string
}

type mupdateKey struct {
	m     config.Mupdate
	cache any
}

type backendsKey struct {
	b        any
	hostname string
}

// build makes the routing state for cfg, taking over from prev every part
// whose settings are unchanged. On error nothing of the new state is left
// running and prev is untouched.
func build(ctx context.Context, cfg *config.Config, prev *state, log *slog.Logger) (*state, error) {
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
			key = mailboxesDBKey{cfg.Lookup.MailboxesDB, cfg.Lookup.MailboxesDBFormat, cfg.Lookup.PollInterval.String(), cfg.Lookup.ForcePolling, cfg.Lookup.ReplicaSocket}
		case config.SourceLocalMupdate:
			key = mupdateKey{cfg.Lookup.Local, cfg.Lookup.Cache}
		case config.SourceMasterMupdate:
			key = mupdateKey{cfg.Lookup.Master, cfg.Lookup.Cache}
		}
		obj, ok := reuse(name, key)
		if !ok {
			var err error
			obj, err = newSource(ctx, cfg, name, log)
			if err != nil {
				return fail(err)
			}
			created = append(created, obj)
		}
		st.parts[name] = part{key: key, obj: obj}
		sources = append(sources, obj.(lookup.Source))
	}

	bkey := backendsKey{cfg.Backends, cfg.Hostname}
	pool, ok := reuse("backends", bkey)
	if !ok {
		bc, err := backendConfig(cfg)
		if err != nil {
			return fail(err)
		}
		pool = backend.NewPool(bc, log)
		created = append(created, pool)
	}
	st.parts["backends"] = part{key: bkey, obj: pool}

	st.rt = &front.Runtime{
		Mode: string(cfg.Mode),
		Address: address.Settings{
			UnixHierarchySep: cfg.Address.UnixHierarchySep,
			VirtDomains:      cfg.Address.VirtDomains,
			DefaultDomain:    cfg.Address.DefaultDomain,
			PostUser:         cfg.Address.PostUser,
			Downcase:         cfg.Address.DowncaseRcpt,
		},
		Chain:                lookup.NewChain(cfg.Lookup.Timeout, sources...),
		Deliver:              pool.(front.Deliverer),
		OverQuotaPermFailure: cfg.Address.OverQuotaPermFailure,
		DeletedPrefix:        cfg.Address.DeletedPrefix,
		SpoolMemoryLimit:     cfg.LMTP.SpoolMemoryLimit,
		SpoolDir:             cfg.LMTP.SpoolDir,
	}
	return st, nil
}

func newSource(ctx context.Context, cfg *config.Config, name string, log *slog.Logger) (closer, error) {
	switch name {
	case config.SourceMailboxesDB:
		f, err := cyrusdb.ParseFormat(cfg.Lookup.MailboxesDBFormat)
		if err != nil {
			return nil, err
		}
		db := mboxlist.New(mboxlist.Config{
			Path:          cfg.Lookup.MailboxesDB,
			Format:        f,
			PollInterval:  cfg.Lookup.PollInterval,
			ForcePolling:  cfg.Lookup.ForcePolling,
			ReplicaSocket: cfg.Lookup.ReplicaSocket,
		}, log)
		// A missing or damaged file is not a reason to refuse to run:
		// the source answers "unavailable" (never "not found") until a
		// good file appears, and the watcher keeps looking.
		if err := db.Start(context.WithoutCancel(ctx)); err != nil {
			log.Error("mailboxes.db not usable yet", "source", name, "path", cfg.Lookup.MailboxesDB, "err", err.Error())
		}
		return db, nil
	case config.SourceLocalMupdate, config.SourceMasterMupdate:
		m := cfg.Lookup.Local
		if name == config.SourceMasterMupdate {
			m = cfg.Lookup.Master
		}
		c := mupdate.New(name, mupdate.Config{
			Address:      m.Address,
			AuthName:     m.AuthName,
			AuthzID:      m.AuthzID,
			Password:     m.Password,
			TLS:          m.TLS,
			DialTimeout:  m.DialTimeout,
			QueryTimeout: m.QueryTimeout,
			KeepAlive:    m.KeepAlive,
			BackoffMin:   m.BackoffMin,
			BackoffMax:   m.BackoffMax,
		}, log)
		return &cachedMupdate{Cache: lookup.NewCache(c, cfg.Lookup.Cache.PositiveTTL, cfg.Lookup.Cache.NegativeTTL, cfg.Lookup.Cache.MaxEntries), client: c}, nil
	}
	return nil, fmt.Errorf("unknown lookup source %q", name)
}

// cachedMupdate is a MUPDATE client behind its answer cache.
type cachedMupdate struct {
	*lookup.Cache
	client *mupdate.Client
}

func (c *cachedMupdate) Close() error { return c.client.Close() }

func backendConfig(cfg *config.Config) (backend.Config, error) {
	b := cfg.Backends
	bc := backend.Config{
		DefaultPort:    b.Port,
		Addresses:      b.Addresses,
		HeloName:       cfg.Hostname,
		AuthName:       b.AuthName,
		Password:       b.Password,
		ConnectTimeout: b.ConnectTimeout,
		CommandTimeout: b.CommandTimeout,
		TxnTimeout:     b.TxnTimeout,
		IdleTimeout:    b.IdleTimeout,
		MaxIdle:        b.MaxIdle,
	}
	tc := &tls.Config{InsecureSkipVerify: b.TLSSkipVerify} // #nosec G402 -- operator's explicit choice
	if b.TLSCAFile != "" {
		pem, err := os.ReadFile(b.TLSCAFile)
		if err != nil {
			return bc, fmt.Errorf("backends.tls_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return bc, errors.New("backends.tls_ca_file: no certificate in " + b.TLSCAFile)
		}
		tc.RootCAs = pool
	}
	bc.TLSConfig = tc
	return bc, nil
}

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
