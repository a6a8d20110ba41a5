// Package replica is the lookup source "master-replica": lmtpgate as its
// own replica of the murder master's mailbox list, which Cyrus's frontend
// otherwise keeps with a separate mupdate process writing mailboxes.db.
//
// One MUPDATE connection to the master sends UPDATE; the master dumps every
// mailbox, answers OK "streaming starts" and from then on pushes each
// change (cyrus-interop §10.3-10.5). The whole list is held in memory in a
// compact index, so a lookup is a hash probe with no I/O and no question
// to the master. A miss first sends NOOP on the stream and waits for its
// answer, which the master gives only after every change it has queued:
// a mailbox created a moment ago is found for its first message.
//
// When the stream breaks, the list keeps being served, marked stale with
// its age, while the stream reconnects with backoff and the master dumps
// again into a new index, swapped in at once when complete; lookups never
// wait for it. The list is also written to a snapshot file, after each
// dump and periodically, and read back at start while the stream
// connects, so that lmtpgate restarted during a master outage still
// routes. Stop ends the stream (no connection to the master at all, for
// no-master mode) and keeps serving the last list; Start resumes it.
//
// PARTIAL-UPDATE (a dump of some servers only) is not used: a frontend
// routes to every backend. COMPRESS "DEFLATE" is used when configured and
// offered.
package replica

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mupdate"
)

// Name is the lookup source name.
const Name = "master-replica"

// DefaultSnapshotName is the snapshot's file name in lmtpgate's state
// directory.
const DefaultSnapshotName = "master-replica.snapshot"

// MaxMaxLiteral is the largest MaxLiteral accepted: one mailbox's name and
// ACL must fit in one chunk of the index.
const MaxMaxLiteral = 256 << 10

// Config says where the master is and how the replica behaves. The zero
// value of each field means what its comment says; DefaultConfig holds
// the defaults.
type Config struct {
	// Server is the master: its address (required), login, TLS, the
	// dial timeout, and QueryTimeout, which bounds the greeting,
	// STARTTLS, AUTHENTICATE and COMPRESS and how long the master may
	// take to answer a NOOP on an idle stream. MaxLiteral bounds each
	// line and string the master sends (and each name and ACL read from
	// the snapshot); it must be in 1..MaxMaxLiteral. "" is taken as
	// "none" for TLS.
	mupdate.Server
	// DumpIdleTimeout is the longest silence accepted while the master
	// dumps (before and between mailboxes); longer, and it is taken for
	// frozen. Must be > 0.
	DumpIdleTimeout time.Duration
	// KeepAlive sends NOOP after this long with nothing from the master,
	// so that a dead master or a dropped connection is noticed within
	// KeepAlive+QueryTimeout. Must be > 0.
	KeepAlive time.Duration
	// BackoffMin and BackoffMax bound the wait before reconnecting after
	// a failure, doubling from one to the other (with jitter). Both must
	// be > 0, and BackoffMax >= BackoffMin.
	BackoffMin, BackoffMax time.Duration
	// MissWait bounds how long a miss waits for its NOOP barrier; a
	// lookup's context bounds it too. 0 answers a miss from the list at
	// once, without a barrier.
	MissWait time.Duration
	// StaleMissUnavailable makes a miss while the stream is down (in
	// master mode) an error, so a 4xx, instead of lookup.ErrNotFound.
	// A mailbox created while the stream was down would otherwise be
	// unknown until the re-dump. In no-master mode (Stop) a miss is
	// always lookup.ErrNotFound: the last list is all there is.
	StaleMissUnavailable bool
	// Compress turns on COMPRESS "DEFLATE" when the master offers it:
	// the dump is many times smaller on the wire, at some CPU cost on
	// both ends.
	Compress bool
	// SnapshotPath is the snapshot file; "" keeps no snapshot.
	SnapshotPath string
	// SnapshotReadOnly reads the snapshot but never writes it: for a
	// second process (`lmtpgate resolve --local`) next to the daemon
	// that owns the file.
	SnapshotReadOnly bool
	// SnapshotInterval is how often a list that changed is written to
	// the snapshot, besides after each dump and at Stop and Close; 0
	// writes only then.
	SnapshotInterval time.Duration
}

// DefaultConfig returns the defaults. Address and the credentials have
// none; the connection's settings (TLS, timeouts, backoff, literal bound)
// are the MUPDATE client's, since the stream goes to the server that
// lookup.master_mupdate names; the snapshot goes to /var/lib/lmtpgate,
// lmtpgate's default state directory.
func DefaultConfig() Config {
	m := mupdate.DefaultConfig()
	return Config{
		Server:           m.Server,
		DumpIdleTimeout:  30 * time.Second,
		KeepAlive:        30 * time.Second,
		BackoffMin:       m.BackoffMin,
		BackoffMax:       m.BackoffMax,
		MissWait:         2 * time.Second,
		SnapshotPath:     "/var/lib/lmtpgate/" + DefaultSnapshotName,
		SnapshotInterval: 5 * time.Minute,
	}
}

// Validate reports the first field that is out of range.
func (c Config) Validate() error {
	switch {
	case c.Address == "":
		return errors.New("master-replica: no master address")
	case c.TLS != "" && c.TLS != "none" && c.TLS != "starttls" && c.TLS != "tls":
		return fmt.Errorf("master-replica: TLS mode %q: want none, starttls or tls", c.TLS)
	case c.DialTimeout <= 0, c.QueryTimeout <= 0, c.DumpIdleTimeout <= 0, c.KeepAlive <= 0:
		return errors.New("master-replica: dial, query and dump-idle timeouts and keep-alive must be > 0")
	case c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin:
		return fmt.Errorf("master-replica: backoff %v..%v: want 0 < min <= max", c.BackoffMin, c.BackoffMax)
	case c.MissWait < 0 || c.SnapshotInterval < 0:
		return errors.New("master-replica: miss wait and snapshot interval must be >= 0")
	case c.MaxLiteral <= 0 || c.MaxLiteral > MaxMaxLiteral:
		return fmt.Errorf("master-replica: max literal %d out of range 1..%d", c.MaxLiteral, MaxMaxLiteral)
	}
	if _, err := mupdate.TLSConfig(c.TLSCAFile); err != nil {
		return fmt.Errorf("master-replica: %w", err)
	}
	return nil
}

// ErrUnavailable is wrapped by every error Lookup returns: there is no
// list yet, a miss could not be confirmed with the master, or the replica
// is closed. It never means the mailbox does not exist.
var ErrUnavailable = errors.New("master replica unavailable")

// ErrClosed is returned (wrapping ErrUnavailable) after Close.
var ErrClosed = fmt.Errorf("%w: closed", ErrUnavailable)

// Stream states, as Status.Stream shows them.
const (
	StreamStopped    = "stopped"    // no-master mode, or not started
	StreamConnecting = "connecting" // dialling and logging in
	StreamDumping    = "dumping"    // the master is sending its list
	StreamStreaming  = "streaming"  // the list is current
	StreamBackoff    = "backoff"    // waiting to reconnect after a failure
	StreamClosed     = "closed"
)

// StreamStates lists every stream state, for metrics that show each.
var StreamStates = []string{StreamStopped, StreamConnecting, StreamDumping, StreamStreaming, StreamBackoff, StreamClosed}

// Status is the replica's state, for `lmtpgate status` and `resolve -v`.
type Status struct {
	Master string
	Stream string // one of the Stream* constants
	// List is where the list served came from: "dump" (the master, since
	// this process started), "snapshot" or "" (none yet: every lookup is
	// unavailable).
	List      string
	Mailboxes int
	// Stale is set when the list is not kept current: the stream is not
	// streaming.
	Stale bool
	// AsOf is when the list was last known to match the master (the
	// time of the Status call while streaming); Age is its age while
	// Stale, else 0.
	AsOf time.Time
	Age  time.Duration

	Connects, Dumps, Failures uint64
	Pushes                    uint64 // changes received while streaming
	Barriers                  uint64 // NOOPs sent (for misses and keep-alive)
	LastDump                  time.Time
	LastDumpDuration          time.Duration
	LastDumpMailboxes         int
	DumpProgress              int // mailboxes received of the dump in progress
	LastError                 string
	LastErrorAt               time.Time
	RetryAt                   time.Time // while Stream is "backoff"

	SnapshotPath    string
	SnapshotWritten time.Time // last written or loaded
	SnapshotError   string
}

// String renders the status on one line.
func (s Status) String() string {
	out := s.Stream
	switch s.Stream {
	case StreamBackoff:
		out += " until " + s.RetryAt.Format(time.TimeOnly)
	case StreamDumping:
		out += fmt.Sprintf(" (%d so far)", s.DumpProgress)
	}
	switch {
	case s.List == "":
		out += ", no list yet"
	case s.Stale:
		out += fmt.Sprintf(", %d mailboxes (%s), stale %s", s.Mailboxes, s.List, s.Age.Round(time.Second))
	default:
		out += fmt.Sprintf(", %d mailboxes, current", s.Mailboxes)
	}
	if s.LastError != "" && s.Stream != StreamStreaming {
		out += ": " + s.LastError
	}
	return out
}

// Replica is the master-replica lookup source. Its methods are safe for
// concurrent use.
type Replica struct {
	cfg Config
	tls *tls.Config // from cfg.TLSCAFile
	log *slog.Logger

	view   atomic.Pointer[view]
	sess   atomic.Pointer[session] // the streaming session, for barriers
	closed atomic.Bool
	// pushes and barriers count changes received and NOOPs sent.
	pushes, barriers atomic.Uint64
	// dumped counts the mailboxes of the dump in progress.
	dumped atomic.Int64
	ready  chan struct{}
	rOnce  sync.Once

	bgCtx    context.Context // the snapshot goroutines
	bgCancel context.CancelFunc
	bgDone   sync.WaitGroup
	snapReq  chan chan error

	// life serialises Start, Stop and Close, so that a Start during a
	// Stop cannot leave two streams or a wrong state behind.
	life sync.Mutex

	mu      sync.Mutex // guards everything below
	active  bool
	cancel  context.CancelFunc // of the running stream loop
	runDone chan struct{}
	st      Status    // counters and stream state; List etc. are computed
	asOf    time.Time // of a list not kept current
	written *view     // the view last written to (or read from) the snapshot
	failing bool
}

// New returns a replica for cfg. It starts reading the snapshot in the
// background, so that a list is there even if the master is not, but it
// does not contact the master until Start. log may be nil.
func New(cfg Config, log *slog.Logger) (*Replica, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tc, err := mupdate.TLSConfig(cfg.TLSCAFile)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Replica{
		cfg:     cfg,
		tls:     tc,
		log:     log.With("source", Name),
		ready:   make(chan struct{}),
		snapReq: make(chan chan error, 1),
	}
	r.st = Status{Master: cfg.Address, Stream: StreamStopped, SnapshotPath: cfg.SnapshotPath}
	r.bgCtx, r.bgCancel = context.WithCancel(context.Background())
	if cfg.SnapshotPath != "" {
		r.bgDone.Add(2)
		go r.loadSnapshot()
		go r.snapshotLoop()
	}
	return r, nil
}

// Name returns "master-replica".
func (r *Replica) Name() string { return Name }

// Ready is closed once there is a list to serve, from the snapshot or
// the first dump.
func (r *Replica) Ready() <-chan struct{} { return r.ready }

// Lookup returns the entry for the internal mailbox name. A hit costs one
// hash probe and allocates nothing. A miss while streaming waits (at most
// MissWait, and within ctx) for a NOOP barrier and looks again; its
// answer is then lookup.ErrNotFound, or an error wrapping ErrUnavailable
// if the barrier did not complete. Without a list, every lookup is
// unavailable.
func (r *Replica) Lookup(ctx context.Context, mailbox string) (lookup.Entry, error) {
	if r.closed.Load() {
		return lookup.Entry{}, ErrClosed
	}
	v := r.view.Load()
	if v == nil {
		return lookup.Entry{}, r.noList()
	}
	if e, ok := v.lookup(mailbox); ok {
		return e, nil
	}
	s := r.sess.Load()
	if s == nil {
		if r.staleMissIsError() {
			return lookup.Entry{}, fmt.Errorf("%w: %q is not in the list, and the stream to %s is down", ErrUnavailable, mailbox, r.cfg.Address)
		}
		return lookup.Entry{}, lookup.ErrNotFound
	}
	if r.cfg.MissWait <= 0 {
		return lookup.Entry{}, lookup.ErrNotFound
	}
	bctx, cancel := context.WithTimeout(ctx, r.cfg.MissWait)
	defer cancel()
	if err := s.barrier(bctx); err != nil {
		return lookup.Entry{}, fmt.Errorf("%w: %q is not in the list and the master did not confirm it: %w", ErrUnavailable, mailbox, err)
	}
	if e, ok := r.view.Load().lookup(mailbox); ok {
		return e, nil
	}
	return lookup.Entry{}, lookup.ErrNotFound
}

// Peek answers from the list when it holds mailbox (lookup.Peeker); a
// miss, which may wait for the master, is Lookup's.
func (r *Replica) Peek(mailbox string) (lookup.Entry, bool) {
	if r.closed.Load() {
		return lookup.Entry{}, false
	}
	v := r.view.Load()
	if v == nil {
		return lookup.Entry{}, false
	}
	return v.lookup(mailbox)
}

// staleMissIsError reports whether a miss without a streaming session is
// an error rather than lookup.ErrNotFound: with StaleMissUnavailable set,
// while the stream is meant to run (master mode).
func (r *Replica) staleMissIsError() bool {
	if !r.cfg.StaleMissUnavailable {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.active
}

func (r *Replica) noList() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	why := "the stream is stopped"
	if r.active {
		why = "the first dump is not complete"
	}
	if r.st.LastError != "" {
		why += " (" + r.st.LastError + ")"
	}
	return fmt.Errorf("%w: no mailbox list yet: no usable snapshot and %s", ErrUnavailable, why)
}

// Sync waits until every change the master had committed when Sync was
// called is in the list: the NOOP barrier a miss uses. It fails when the
// stream is not streaming.
func (r *Replica) Sync(ctx context.Context) error {
	s := r.sess.Load()
	if s == nil {
		return fmt.Errorf("%w: not streaming", ErrUnavailable)
	}
	return s.barrier(ctx)
}

// Start starts the stream (master mode). It returns at once; the stream
// connects, dumps and streams in the background, and reconnects after
// failures until Stop or Close. Start on a running stream does nothing.
func (r *Replica) Start() {
	r.life.Lock()
	defer r.life.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.active || r.closed.Load() {
		return
	}
	r.active = true
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.runDone = cancel, make(chan struct{})
	r.st.Stream = StreamConnecting
	r.log.Info("starting the stream from the master", "address", r.cfg.Address)
	go r.run(ctx, r.runDone)
}

// Stop ends the stream (no-master mode) and waits until its connection is
// closed; the last list goes on being served, and a changed list is
// written to the snapshot. Stop on a stopped stream does nothing.
func (r *Replica) Stop() {
	r.life.Lock()
	defer r.life.Unlock()
	r.stop()
}

func (r *Replica) stop() {
	r.mu.Lock()
	if !r.active {
		r.mu.Unlock()
		return
	}
	r.active = false
	cancel, done := r.cancel, r.runDone
	r.mu.Unlock()
	cancel()
	<-done
	r.mu.Lock()
	if r.st.Stream != StreamClosed {
		r.st.Stream = StreamStopped
	}
	r.mu.Unlock()
	r.log.Info("stream from the master stopped; serving the last list")
	r.requestSnapshot(true)
}

// SetActive is Start for true and Stop for false: master mode and
// no-master mode.
func (r *Replica) SetActive(on bool) {
	if on {
		r.Start()
	} else {
		r.Stop()
	}
}

// Close stops the stream, writes a changed list to the snapshot and ends
// the replica; Lookup then returns ErrClosed. Close is idempotent.
func (r *Replica) Close() error {
	r.life.Lock()
	defer r.life.Unlock()
	if r.closed.Load() {
		return nil
	}
	r.stop()
	r.requestSnapshot(true)
	r.closed.Store(true)
	r.bgCancel()
	r.bgDone.Wait()
	r.mu.Lock()
	r.st.Stream = StreamClosed
	r.mu.Unlock()
	return nil
}

// Status returns the current state.
func (r *Replica) Status() Status {
	v := r.view.Load()
	r.mu.Lock()
	s := r.st
	asOf := r.asOf
	r.mu.Unlock()
	if v != nil {
		s.List, s.Mailboxes = v.from, v.n
	}
	s.Pushes, s.Barriers = r.pushes.Load(), r.barriers.Load()
	if s.Stream == StreamDumping {
		s.DumpProgress = int(r.dumped.Load())
	}
	s.Stale = s.Stream != StreamStreaming
	if s.Stale {
		s.AsOf = asOf
		if v != nil && !asOf.IsZero() {
			s.Age = time.Since(asOf)
		}
	} else {
		s.AsOf = time.Now()
	}
	return s
}

func (r *Replica) markReady() { r.rOnce.Do(func() { close(r.ready) }) }

// setStream records a stream state change.
func (r *Replica) setStream(state string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st.Stream != StreamClosed {
		r.st.Stream = state
	}
}

// run is the stream loop: a session, and after it fails a backoff, until
// ctx ends.
func (r *Replica) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	var backoff time.Duration
	for {
		streamed, err := r.session(ctx)
		if ctx.Err() != nil {
			return
		}
		// A session that reached streaming was healthy: start over
		// from the shortest wait.
		if streamed || backoff == 0 {
			backoff = r.cfg.BackoffMin
		} else {
			backoff = min(2*backoff, r.cfg.BackoffMax)
		}
		// Jitter (up to a quarter less) keeps frontends that lost the
		// same master from coming back in step.
		wait := backoff
		if q := int64(wait / 4); q > 0 {
			wait -= time.Duration(rand.Int64N(q))
		}
		r.failed(err, time.Now().Add(wait))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		r.setStream(StreamConnecting)
	}
}

func (r *Replica) failed(err error, retry time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Failures++
	r.st.LastError = err.Error()
	r.st.LastErrorAt = time.Now()
	r.st.RetryAt = retry
	if r.st.Stream != StreamClosed {
		r.st.Stream = StreamBackoff
	}
	if !r.failing {
		r.failing = true
		r.log.Warn("stream from the master failed; serving the last list until it is back",
			"address", r.cfg.Address, "error", err, "retry_in", time.Until(retry).Round(time.Millisecond))
	} else {
		r.log.Debug("stream from the master failed again", "address", r.cfg.Address, "error", err)
	}
}

// installDump makes a complete dump the list.
func (r *Replica) installDump(l *list, took time.Duration) *view {
	now := time.Now()
	v := &view{base: l, n: l.Len(), from: "dump"}
	r.view.Store(v)
	r.mu.Lock()
	r.st.Dumps++
	r.st.LastDump, r.st.LastDumpDuration, r.st.LastDumpMailboxes = now, took, l.Len()
	r.st.Stream = StreamStreaming
	r.asOf = now
	recovered := r.failing
	r.failing = false
	r.mu.Unlock()
	r.markReady()
	if recovered {
		r.log.Info("stream from the master is back", "address", r.cfg.Address)
	}
	r.log.Info("mailbox list dumped by the master", "mailboxes", l.Len(), "dur_ms", took.Milliseconds())
	r.requestSnapshot(false)
	return v
}

// streamEnded records that a session that was streaming is over: from
// now on the list is stale, as of now.
func (r *Replica) streamEnded() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asOf = time.Now()
}

// loadSnapshot reads the snapshot and serves it unless a dump came first.
func (r *Replica) loadSnapshot() {
	defer r.bgDone.Done()
	t0 := time.Now()
	l, info, err := readSnapshot(r.cfg.SnapshotPath, r.cfg.MaxLiteral)
	if err != nil {
		r.mu.Lock()
		defer r.mu.Unlock()
		if errors.Is(err, os.ErrNotExist) {
			r.log.Info("no snapshot of the mailbox list yet", "path", r.cfg.SnapshotPath)
			return
		}
		r.st.SnapshotError = err.Error()
		r.log.Error("snapshot of the mailbox list refused; it is not used", "path", r.cfg.SnapshotPath, "error", err)
		return
	}
	v := &view{base: l, n: l.Len(), from: "snapshot"}
	if !r.view.CompareAndSwap(nil, v) {
		return // the master's dump was quicker
	}
	r.mu.Lock()
	r.asOf = info.AsOf
	r.written = v
	r.st.SnapshotWritten = info.Written
	r.mu.Unlock()
	// The line is logged before the replica says it is ready, so that
	// whoever waited for readiness finds it in the log.
	r.log.Info("mailbox list loaded from the snapshot", "path", r.cfg.SnapshotPath, "mailboxes", l.Len(),
		"as_of", info.AsOf.Format(time.RFC3339), "master", info.Master, "dur_ms", time.Since(t0).Milliseconds())
	r.markReady()
}

// requestSnapshot asks the snapshot goroutine to write the list if it
// changed; with wait it waits for the write.
func (r *Replica) requestSnapshot(wait bool) {
	if r.cfg.SnapshotPath == "" || r.bgCtx.Err() != nil {
		return
	}
	if !wait {
		select {
		case r.snapReq <- nil:
		default: // a write is already due
		}
		return
	}
	reply := make(chan error, 1)
	select {
	case r.snapReq <- reply:
		<-reply
	case <-r.bgCtx.Done():
	}
}

func (r *Replica) snapshotLoop() {
	defer r.bgDone.Done()
	var tick <-chan time.Time
	if r.cfg.SnapshotInterval > 0 {
		t := time.NewTicker(r.cfg.SnapshotInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-r.bgCtx.Done():
			return
		case <-tick:
			r.writeSnapshot()
		case reply := <-r.snapReq:
			err := r.writeSnapshot()
			if reply != nil {
				reply <- err
			}
		}
	}
}

// writeSnapshot writes the current list if it is not the one on disk.
func (r *Replica) writeSnapshot() error {
	if r.cfg.SnapshotReadOnly {
		return nil
	}
	v := r.view.Load()
	r.mu.Lock()
	if v == nil || v == r.written {
		r.mu.Unlock()
		return nil
	}
	asOf := r.asOf
	if r.st.Stream == StreamStreaming {
		asOf = time.Now()
	}
	r.mu.Unlock()
	t0 := time.Now()
	err := writeSnapshot(r.cfg.SnapshotPath, v, asOf, r.cfg.Address)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.st.SnapshotError = err.Error()
		r.log.Error("cannot write the snapshot of the mailbox list", "path", r.cfg.SnapshotPath, "error", err)
		return err
	}
	r.written = v
	r.st.SnapshotWritten, r.st.SnapshotError = time.Now(), ""
	r.log.Debug("snapshot of the mailbox list written", "path", r.cfg.SnapshotPath, "mailboxes", v.n, "dur_ms", time.Since(t0).Milliseconds())
	return nil
}

// Health is the replica's state for `lmtpgate status` and the metrics:
// healthy while it has a list to answer from, stale while that list is
// not kept current (the stream is down, or stopped in no-master mode).
// State is the stream's state; LoadedAt is when the list was last known
// to match the master.
func (r *Replica) Health() lookup.Health {
	s := r.Status()
	h := lookup.Health{
		Healthy:   s.List != "",
		State:     s.Stream,
		Detail:    s.String(),
		Entries:   s.Mailboxes,
		LoadedAt:  s.AsOf,
		Stale:     s.List != "" && s.Stale,
		LastError: s.LastError,
	}
	if s.List == "" {
		h.LoadedAt = time.Time{}
	}
	return h
}
