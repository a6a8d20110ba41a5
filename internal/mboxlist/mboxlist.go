// Package mboxlist routes mailboxes from the Cyrus frontend's own
// mailboxes.db: it decodes every generation of mailbox record (Cyrus 2.x
// text, 2.5–3.4 dlists, 3.6+ 'N' + dbname keys) into an immutable in-memory
// index, and keeps that index current by watching the file.
//
// The index is replaced as a whole through an atomic pointer, so a lookup
// never waits for a reload and never sees half of one. A file that is
// missing, truncated, corrupt or not a Cyrus database never empties the
// table: the last good index stays in use, the problem is logged once, and
// the next good version of the file is picked up by itself. Before the
// first good load the source reports itself unavailable rather than
// answering "no such mailbox", so nothing is bounced for lack of data.
package mboxlist

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/cyrusdb"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// SourceName is the name of this lookup source in configuration and logs.
const SourceName = "mailboxes-db"

// Config says which file to read and how to watch it. Every field means
// what its comment says, zero included; the defaults are DefaultConfig's.
type Config struct {
	// Path of mailboxes.db (mboxlist_db_path, or
	// <configdirectory>/mailboxes.db).
	Path string
	// Format of the file; Auto sniffs the magic as Cyrus does.
	Format cyrusdb.Format
	// Debounce is how long to let a burst of change events settle before
	// re-checking the file (a Cyrus commit is several writes); 0 checks at
	// once.
	Debounce time.Duration
	// PollInterval is the safety-net stat interval with inotify and the
	// only trigger in polling mode. Must be positive.
	PollInterval time.Duration
	// ForcePolling disables inotify (for filesystems that do not deliver
	// events, such as NFS).
	ForcePolling bool
	// LockTimeout bounds waiting for Cyrus's lock on each read. Must be
	// positive.
	LockTimeout time.Duration
	// ReplicaSocket is the local mupdate replica's kick socket
	// (<configdirectory>/socket/mupdate.target); on a miss it is poked and
	// the file re-checked before the miss is answered. Empty disables.
	ReplicaSocket string
	// ReplicaTimeout bounds one poke. Must be positive.
	ReplicaTimeout time.Duration
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{
		Format:         cyrusdb.Auto,
		Debounce:       25 * time.Millisecond,
		PollInterval:   time.Second,
		LockTimeout:    2 * time.Second,
		ReplicaTimeout: 3 * time.Second,
	}
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.Path == "":
		return errors.New("Path is required")
	case c.Debounce < 0:
		return errors.New("Debounce must not be negative")
	case c.PollInterval <= 0:
		return errors.New("PollInterval must be positive")
	case c.LockTimeout <= 0:
		return errors.New("LockTimeout must be positive")
	case c.ReplicaTimeout <= 0:
		return errors.New("ReplicaTimeout must be positive")
	}
	return nil
}

// bigFile is the mailboxes.db size from which memory is returned to the
// operating system right after a rebuild.
const bigFile = 32 << 20

// ErrUnavailable is returned (wrapped) by Lookup before a first good load:
// the source cannot answer, which is not the same as "no such mailbox".
var ErrUnavailable = errors.New("mailboxes.db not loaded")

var errUnavailable = fmt.Errorf("%s: %w", SourceName, ErrUnavailable)

// fileInfo is the identity of one committed state of the file: if none of
// these changed, the contents did not either (Cyrus appends on commit,
// repacks to a new inode with a new generation, and rewrites flat files
// by rename).
type fileInfo struct {
	Format        cyrusdb.Format
	Inode         uint64
	Generation    uint64
	FileSize      int64
	CommittedSize int64
	Dirty         bool
	Ctime         int64 // status-change time, ns; 0 if unknown
}

func (a fileInfo) same(b fileInfo) bool {
	return a.Inode == b.Inode && a.Generation == b.Generation &&
		a.FileSize == b.FileSize && a.CommittedSize == b.CommittedSize &&
		a.Format == b.Format && a.Ctime == b.Ctime
}

// store is how the DB reads the file; the cyrusdb package in production,
// a fake in tests.
type store interface {
	stat(path string, f cyrusdb.Format) (fileInfo, error)
	// read returns the committed records and the identity of the state
	// it actually read.
	read(ctx context.Context, path string, f cyrusdb.Format) (recordSource, fileInfo, error)
}

// Status describes the source for health checks and `lmtpgate status`.
type Status struct {
	Path        string
	Format      cyrusdb.Format
	Loaded      bool
	Entries     int
	LoadedAt    time.Time
	Generation  uint64
	Inode       uint64
	LastError   string
	LastErrorAt time.Time
	Watching    string // "inotify" or "polling"
}

// DB is the mailboxes.db lookup source. Create it with New.
type DB struct {
	cfg   Config
	log   *slog.Logger
	store store

	idx atomic.Pointer[Index]

	// reloadMu serialises checks; the watcher and Reload both take it.
	reloadMu sync.Mutex
	cur      fileInfo // identity of the loaded file; valid if idx != nil
	failed   fileInfo // identity of a file that failed to load
	hasFail  bool
	// statFailed: the last stat failed, so the next good one reads the
	// file whatever its identity.
	statFailed bool
	problem    string // last logged problem; "" when healthy

	mu     sync.Mutex // guards status
	status Status

	startOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
	kick      chan struct{}
	pokes     pokes
}

// New returns a DB for cfg. It does not touch the file or start anything.
func New(cfg Config, log *slog.Logger) *DB {
	if log == nil {
		log = slog.Default()
	}
	return &DB{
		cfg:    cfg,
		log:    log.With("source", SourceName, "path", cfg.Path),
		store:  cyrusdbStore{},
		status: Status{Path: cfg.Path, Format: cfg.Format},
		kick:   make(chan struct{}, 1),
	}
}

// Name returns "mailboxes-db".
func (d *DB) Name() string { return SourceName }

// Lookup returns the routing entry of an internal mailbox name. It
// returns lookup.ErrNotFound when the loaded file has no such routable
// mailbox, an error wrapping ErrUnavailable before the first good load,
// and an error wrapping ErrBrokenEntry for a record that exists but
// cannot be decoded. A hit never blocks on a reload and does not allocate;
// a miss, with Config.ReplicaSocket set, first pokes the local replica and
// re-checks the file, as Cyrus's lmtpd does.
func (d *DB) Lookup(ctx context.Context, mailbox string) (lookup.Entry, error) {
	x := d.idx.Load()
	if x == nil {
		return lookup.Entry{}, errUnavailable
	}
	e, err := x.Lookup(mailbox)
	if !errors.Is(err, lookup.ErrNotFound) || d.cfg.ReplicaSocket == "" {
		return e, err
	}
	if perr := d.pokeReplica(ctx); perr != nil {
		d.log.Debug("local mupdate replica not poked; the miss stands", "socket", d.cfg.ReplicaSocket, "err", perr.Error())
		return e, err
	}
	if cerr := d.check(ctx, false); cerr != nil {
		return e, err
	}
	return d.idx.Load().Lookup(mailbox)
}

// Peek answers from the loaded index when it holds mailbox
// (lookup.Peeker); a miss, which may poke the replica, is Lookup's.
func (d *DB) Peek(mailbox string) (lookup.Entry, bool) {
	x := d.idx.Load()
	if x == nil {
		return lookup.Entry{}, false
	}
	e, err := x.Lookup(mailbox)
	return e, err == nil
}

// Index returns the current index, or nil before the first good load.
func (d *DB) Index() *Index { return d.idx.Load() }

// Start loads the file once and then watches it until ctx is done or
// Close is called. The error of the first load is returned, but watching
// starts regardless, so a file that appears or is repaired later is picked
// up. Start may be called once.
func (d *DB) Start(ctx context.Context) error {
	started := false
	d.startOnce.Do(func() { started = true })
	if !started {
		return errors.New("mboxlist: Start called twice or after Close")
	}
	w := d.startWatcher()
	err := d.check(ctx, true)
	{
		wctx, cancel := context.WithCancel(ctx)
		d.cancel = cancel
		d.done = make(chan struct{})
		go func() {
			defer close(d.done)
			d.watch(wctx, w)
		}()
	}
	return err
}

// Close stops the watcher and waits for it. The last index stays
// available to Lookup.
func (d *DB) Close() error {
	d.startOnce.Do(func() {}) // a later Start will not start a watcher
	if d.cancel != nil {
		d.cancel()
		<-d.done
	}
	return nil
}

// Reload re-reads the file now, even if it looks unchanged. On error the
// previous index stays in use.
func (d *DB) Reload(ctx context.Context) error {
	return d.check(ctx, true)
}

// Status returns a snapshot of the source's state.
func (d *DB) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status
}

// Health reports the source's state for status and metrics.
func (d *DB) Health() lookup.Health {
	s := d.Status()
	h := lookup.Health{Entries: s.Entries, LoadedAt: s.LoadedAt, LastError: s.LastError}
	if !s.Loaded {
		h.State, h.Detail = "unavailable", "not loaded: "+s.LastError
		return h
	}
	h.Healthy, h.State = true, "loaded"
	h.Detail = fmt.Sprintf("%d mailboxes, loaded %s ago, %s", s.Entries, time.Since(s.LoadedAt).Round(time.Second), s.Watching)
	if s.LastError != "" && s.LastErrorAt.After(s.LoadedAt) {
		h.State, h.Stale = "stale", true
		h.Detail += "; keeping last good index: " + s.LastError
	}
	d.pokes.mu.Lock()
	until := d.pokes.until
	d.pokes.mu.Unlock()
	if time.Now().Before(until) {
		h.Detail += "; the local replica does not answer pokes"
	}
	return h
}

// check stats the file and rebuilds the index if the file changed (or
// always, with force). It runs off the lookup path; lookups keep using the
// old index until the new one is stored.
func (d *DB) check(ctx context.Context, force bool) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()

	info, err := d.store.stat(d.cfg.Path, d.cfg.Format)
	if err != nil {
		// Whatever the file becomes next, read it in full.
		d.statFailed = true
		d.report(err)
		return err
	}
	if !force && !d.statFailed {
		if d.idx.Load() != nil && info.same(d.cur) && !d.hasFail {
			return nil
		}
		if d.hasFail && info.same(d.failed) {
			// Same bad file as last time: nothing new to learn.
			return nil
		}
	}
	// The identity recorded is that of the state actually read: if the
	// file changes after the read, the next check sees a different
	// identity and reads again, so no change can be missed.
	rctx, cancel := context.WithTimeout(ctx, d.cfg.LockTimeout)
	start := time.Now()
	src, rinfo, err := d.store.read(rctx, d.cfg.Path, d.cfg.Format)
	cancel()
	if err != nil {
		d.failed, d.hasFail, d.statFailed = info, true, false
		d.report(err)
		return err
	}
	info = rinfo
	x, st, err := buildIndex(src)
	if err != nil {
		d.failed, d.hasFail, d.statFailed = info, true, false
		d.report(err)
		return err
	}
	d.idx.Store(x)
	d.cur, d.hasFail, d.statFailed = info, false, false
	if info.FileSize >= bigFile {
		// The file image and the previous index are garbage now. Go
		// would keep their pages until the scavenger gets round to them,
		// so a daemon routing a million mailboxes would sit at several
		// times its live heap; hand them back at once instead.
		defer func() { go debug.FreeOSMemory() }()
	}
	now := time.Now()
	d.mu.Lock()
	d.status.Loaded = true
	d.status.Entries = x.Len()
	d.status.LoadedAt = now
	d.status.Generation = info.Generation
	d.status.Inode = info.Inode
	d.status.Format = info.Format
	d.mu.Unlock()

	attrs := []any{"format", info.Format.String(), "entries", x.Len(), "era", x.Era().String(),
		"generation", info.Generation, "dur_ms", time.Since(start).Milliseconds()}
	if d.problem != "" {
		d.log.Info("mailboxes.db readable again; routing table updated", attrs...)
		d.problem = ""
	} else {
		d.log.Debug("mailboxes.db loaded", attrs...)
	}
	if info.Dirty || info.FileSize != info.CommittedSize {
		// Cyrus repairs a crashed file on its next open; we never write.
		d.log.Warn("mailboxes.db has an uncommitted tail; using its last committed state",
			"format", info.Format.String(), "file_size", info.FileSize, "committed_size", info.CommittedSize)
	}
	if st.firstBad != nil {
		// Logged once per load, and loads happen only when the file
		// changed.
		d.log.Warn("mailboxes.db has undecodable records; those mailboxes are left to the other sources",
			"records", x.Broken(), "first", st.firstBad.Error())
	}
	return nil
}

// report logs a load problem once per distinct problem and records it in
// the status.
func (d *DB) report(err error) {
	msg := err.Error()
	now := time.Now()
	d.mu.Lock()
	d.status.LastError = msg
	d.status.LastErrorAt = now
	d.mu.Unlock()
	if msg == d.problem {
		return
	}
	d.problem = msg
	var attrs []any
	var fe *cyrusdb.FormatError
	if errors.As(err, &fe) {
		attrs = []any{"format", fe.Format.String(), "offset", fe.Offset, "reason", fe.Reason, "err", msg}
	} else {
		attrs = []any{"format", d.cfg.Format.String(), "err", msg}
	}
	if d.idx.Load() != nil {
		d.log.Error("cannot read mailboxes.db; keeping the previous routing table", attrs...)
	} else {
		d.log.Error("cannot read mailboxes.db; source unavailable until it can be read", attrs...)
	}
}

// Index loading for one-shot tools.

// LoadOnce reads path once and returns its index, for `lmtpgate resolve`
// and other tools that do not need a watcher.
func LoadOnce(ctx context.Context, path string, f cyrusdb.Format) (*Index, error) {
	src, _, err := cyrusdbStore{}.read(ctx, path, f)
	if err != nil {
		return nil, err
	}
	x, _, err := buildIndex(src)
	return x, err
}
