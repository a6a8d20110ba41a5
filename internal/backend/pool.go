package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// healthCheckAfter is how long a pooled connection may sit idle before it
// is checked with NOOP before reuse. Cyrus checks every time
// (imap/backend.c, backend_ping); a connection used moments ago is almost
// surely alive, and a dead one fails its first reply, which is then
// replayed on a fresh connection: nothing can be delivered twice, because
// nothing is retried once a reply was read.
const healthCheckAfter = 5 * time.Second

// Stats are the pool's counters, for monitoring.
type Stats struct {
	// Dials counts connections opened successfully.
	Dials uint64
	// Reuses counts pooled connections that served a transaction (their
	// first reply came).
	Reuses uint64
	// Broken counts connections closed instead of pooled: after an
	// error, a timeout, a failed health check, or a transaction that did
	// not end cleanly (MAIL or DATA refused, no recipient accepted).
	Broken uint64
	// Idle is the number of pooled connections now.
	Idle int
}

// Health is one backend's state, for `lmtpgate status` and metrics.
type Health struct {
	// Server is the Cyrus server string.
	Server string `json:"server"`
	// Up is false while the backend is out of service after a failure.
	Up bool `json:"up"`
	// Since is when Up last changed (or the first use).
	Since time.Time `json:"since"`
	// InFlight is the number of transactions running on it now.
	InFlight int `json:"in_flight"`
	// Idle is the number of pooled connections.
	Idle int `json:"idle"`
	// LastError is the last failure, and LastErrorAt its time.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// RetryAt is when the next probe runs, while down.
	RetryAt time.Time `json:"retry_at,omitzero"`
	// Delivered counts recipients the backend accepted after DATA;
	// Refused those it refused (at RCPT or after DATA); Failures the
	// transactions that failed, by cause (see Causes).
	Delivered uint64            `json:"delivered"`
	Refused   uint64            `json:"refused"`
	Failures  map[string]uint64 `json:"failures,omitempty"`
}

// Causes of a failed transaction, for Health.Failures and metrics.
const (
	CauseConnect  = "connect"  // refused, unreachable, TLS, greeting or LHLO failed
	CauseAuth     = "auth"     // AUTH refused or impossible
	CauseTimeout  = "timeout"  // the backend did not answer in time
	CauseProtocol = "protocol" // a reply that is not LMTP, or a lost connection
	CauseBusy     = "busy"     // no transaction slot within queue_timeout
	CauseDown     = "down"     // out of service after a failure
)

// Causes lists every cause, for metrics that show zeros too.
var Causes = []string{CauseConnect, CauseAuth, CauseTimeout, CauseProtocol, CauseBusy, CauseDown}

// cause classifies a transaction's failure.
func cause(st Stage, err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, ErrBusy):
		return CauseBusy
	case errors.Is(err, ErrDown):
		return CauseDown
	case errors.As(err, &ne) && ne.Timeout():
		return CauseTimeout
	case st == StageAuth:
		return CauseAuth
	case st == StageConnect:
		return CauseConnect
	}
	return CauseProtocol
}

// Pool delivers to backends, keeping connections and per-backend health.
// It is safe for concurrent use.
type Pool struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	servers map[string]*server
	closed  bool
	done    chan struct{}

	dials, reuses, broken atomic.Uint64
	observe               atomic.Pointer[func(server string, d time.Duration)]
}

// SetObserver installs f, called with the time from the backend's 354 to
// its last final reply for every transaction that got that far (metrics).
// f must not block.
func (p *Pool) SetObserver(f func(server string, d time.Duration)) { p.observe.Store(&f) }

// NewPool returns a pool for cfg, which Validate should have accepted. log
// may be nil.
func NewPool(cfg Config, log *slog.Logger) *Pool {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{cfg: cfg, log: log, servers: map[string]*server{}, done: make(chan struct{})}
	go p.janitor()
	return p
}

// Config returns the configuration the pool was made with.
func (p *Pool) Config() Config { return p.cfg }

// server is one backend: its connections, its transaction slots and its
// health.
type server struct {
	p      *Pool
	name   string
	target Target
	terr   error // the server string does not parse
	slots  chan struct{}

	mu          sync.Mutex
	idle        []*conn // most recently used last
	inflight    int
	up          bool
	since       time.Time
	lastErr     string
	lastErrAt   time.Time
	backoff     time.Duration
	retryAt     time.Time
	probing     bool
	cleartextOK bool // the cleartext warning was given

	delivered, refused atomic.Uint64
	failures           [6]atomic.Uint64 // by index in Causes
}

// count records a transaction's failure by its cause.
func (s *server) count(st Stage, err error) {
	c := cause(st, err)
	for i, x := range Causes {
		if x == c {
			s.failures[i].Add(1)
		}
	}
}

// server returns the state of the backend named name, creating it.
func (p *Pool) server(name string) *server {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.servers[name]
	if s == nil {
		s = &server{p: p, name: name, up: true, since: time.Now()}
		s.target, s.terr = ParseServer(name, &p.cfg)
		if p.cfg.MaxTransactions > 0 {
			s.slots = make(chan struct{}, p.cfg.MaxTransactions)
		}
		p.servers[name] = s
	}
	return s
}

// Begin opens a transaction on the backend named by server (a Cyrus server
// string, see ParseServer) for env. It returns at once; the connection is
// taken or dialled, and MAIL sent, in the background. ctx bounds the whole
// transaction: when it ends, whatever is unfinished fails.
func (p *Pool) Begin(ctx context.Context, server string, env Envelope) *Txn {
	s := p.server(server)
	// ctx is the transaction's own: its end (the daemon's stop running
	// out of time) abandons the transaction. A context per transaction
	// would cost allocations for nothing; the goroutine ends by itself.
	t := &Txn{p: p, srv: s, env: env, ctx: ctx,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	t.rcpts, t.queued = t.rcptArr[:0], t.queuedArr[:0]
	s.mu.Lock()
	s.inflight++
	s.mu.Unlock()
	go t.run()
	return t
}

// Available returns nil if transactions to server may be started now, and
// otherwise why not (ErrDown while the backend is out of service, or the
// server string's error), so that the front end can answer a recipient at
// once instead of waiting for a dead backend.
func (p *Pool) Available(server string) error {
	s := p.server(server)
	if s.terr != nil {
		return s.terr
	}
	if !p.cfg.allowed(s.target) {
		return fmt.Errorf("%w: %s", ErrNotAllowed, s.target.host())
	}
	return s.available()
}

func (s *server) available() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up {
		return nil
	}
	return fmt.Errorf("%w until %s: %s", ErrDown, s.retryAt.Format(time.TimeOnly), s.lastErr)
}

// acquire takes a transaction slot, waiting at most wait.
func (s *server) acquire(ctx context.Context, wait time.Duration) error {
	if s.slots == nil {
		return nil
	}
	select {
	case s.slots <- struct{}{}:
		return nil
	default:
	}
	if wait <= 0 {
		return fmt.Errorf("%w: %d transactions running", ErrBusy, cap(s.slots))
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case s.slots <- struct{}{}:
		return nil
	case <-t.C:
		return fmt.Errorf("%w: %d transactions running for %v", ErrBusy, cap(s.slots), wait)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *server) releaseSlot() {
	if s.slots != nil {
		<-s.slots
	}
}

// ok records that the backend answered.
func (s *server) ok() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.up {
		s.up, s.since, s.backoff = true, time.Now(), 0
		s.p.log.Info("backend reachable again", "backend", s.name)
	}
}

// fail records a failure that says the backend is sick (it refused or
// dropped a connection, timed out, garbled a reply or refused our
// authentication) and takes it out of service: until a background probe
// succeeds, its transactions fail at once.
func (s *server) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr, s.lastErrAt = err.Error(), time.Now()
	if !s.up {
		return
	}
	s.up, s.since = false, time.Now()
	s.backoff = s.p.cfg.BackoffMin
	s.retryAt = time.Now().Add(jitter(s.backoff, s.p.cfg.BackoffMin))
	level, msg := slog.LevelWarn, "backend unreachable; its recipients are deferred until it answers again"
	var se *setupError
	if errors.As(err, &se) && se.stage == StageAuth {
		level, msg = slog.LevelError, "authentication to backend failed; its recipients are deferred (check backends.authname and the password, and the backend's lmtp_admins)"
	}
	s.p.log.Log(context.Background(), level, msg, "backend", s.name, "err", err.Error(), "retry_in", time.Until(s.retryAt).Round(time.Millisecond).String())
	if !s.probing {
		s.probing = true
		go s.probe()
	}
}

// jitter takes up to a quarter off d, so that frontends that lost the same
// backend do not come back in step.
func jitter(d, floor time.Duration) time.Duration {
	if q := int64(d / 4); q > 0 {
		d -= time.Duration(rand.Int64N(q))
	}
	return max(d, floor)
}

// probe tries a backend that is out of service, with growing waits, until
// it answers; the connection it opens joins the pool.
func (s *server) probe() {
	p := s.p
	for {
		s.mu.Lock()
		wait := time.Until(s.retryAt)
		s.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-p.done:
			t.Stop()
			s.mu.Lock()
			s.probing = false
			s.mu.Unlock()
			return
		case <-t.C:
		}
		c, se := p.dial(context.Background(), s.target)
		s.mu.Lock()
		if se == nil {
			s.probing = false
			s.mu.Unlock()
			p.dials.Add(1)
			s.ok()
			p.put(s, c)
			return
		}
		s.lastErr, s.lastErrAt = se.Error(), time.Now()
		s.backoff = min(2*s.backoff, p.cfg.BackoffMax)
		s.retryAt = time.Now().Add(jitter(s.backoff, p.cfg.BackoffMin))
		s.mu.Unlock()
		p.log.Debug("backend probe failed", "backend", s.name, "err", se.Error())
	}
}

// connFor returns a connection for a transaction on s: a pooled one that is
// clean (and alive, if it sat idle), or a new one. fresh skips the pool.
func (p *Pool) connFor(ctx context.Context, s *server, fresh bool) (*conn, bool, *Result) {
	if s.terr != nil {
		return nil, false, &Result{Stage: StageConnect, Err: s.terr}
	}
	if err := s.available(); err != nil {
		return nil, false, &Result{Stage: StageConnect, Err: err}
	}
	for !fresh {
		c := s.take()
		if c == nil {
			break
		}
		if !c.clean() || (time.Since(c.lastUsed) >= healthCheckAfter && c.noop(min(p.cfg.ConnectTimeout, p.cfg.CommandTimeout)) != nil) {
			p.broken.Add(1)
			c.close()
			continue
		}
		return c, true, nil
	}
	start := time.Now()
	c, se := p.dial(ctx, s.target)
	if se != nil {
		if ctx.Err() == nil && !errors.Is(se.err, ErrNotAllowed) {
			s.fail(se)
		}
		p.log.Debug("backend setup failed", "backend", s.name, "stage", se.stage.String(), "err", se.Error(), "dur_ms", time.Since(start).Milliseconds())
		return nil, false, &Result{Stage: se.stage, Reply: se.reply, Err: se.errOrNil()}
	}
	p.dials.Add(1)
	s.ok()
	p.warnCleartext(s)
	return c, false, nil
}

func (e *setupError) errOrNil() error {
	if e.reply != nil {
		return nil
	}
	return e
}

// warnCleartext says once per backend that the proxy password crosses the
// network in clear.
func (p *Pool) warnCleartext(s *server) {
	if !p.cfg.Cleartext(s.target) {
		return
	}
	s.mu.Lock()
	warned := s.cleartextOK
	s.cleartextOK = true
	s.mu.Unlock()
	if !warned {
		p.log.Warn("the proxy password goes to this backend in clear text: use a /tls server string or backends.require_tls", "backend", s.name)
	}
}

// take pops the most recently used idle connection that is not too old.
func (s *server) take() *conn {
	cut := time.Now().Add(-s.p.cfg.IdleTimeout)
	var stale []*conn
	var c *conn
	s.mu.Lock()
	for len(s.idle) > 0 {
		x := s.idle[len(s.idle)-1]
		s.idle = s.idle[:len(s.idle)-1]
		if x.lastUsed.Before(cut) {
			stale = append(stale, x)
			continue
		}
		c = x
		break
	}
	s.mu.Unlock()
	for _, x := range stale {
		x.close()
	}
	return c
}

// put returns a clean connection to the pool, evicting the oldest beyond
// MaxIdle.
func (p *Pool) put(s *server, c *conn) {
	c.lastUsed = time.Now()
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed || p.cfg.MaxIdle == 0 {
		go c.quit(p.quitTimeout())
		return
	}
	s.mu.Lock()
	s.idle = append(s.idle, c)
	var evict []*conn
	if over := len(s.idle) - p.cfg.MaxIdle; over > 0 {
		evict = append(evict, s.idle[:over]...)
		s.idle = append([]*conn(nil), s.idle[over:]...)
	}
	s.mu.Unlock()
	for _, e := range evict {
		go e.quit(p.quitTimeout())
	}
}

func (p *Pool) quitTimeout() time.Duration {
	return min(p.cfg.CommandTimeout, 5*time.Second)
}

// janitor closes connections idle for longer than IdleTimeout, so we hang
// up before the backend's 360 s input timeout does it for us.
func (p *Pool) janitor() {
	t := time.NewTicker(min(max(p.cfg.IdleTimeout/2, 50*time.Millisecond), 30*time.Second))
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
		cut := time.Now().Add(-p.cfg.IdleTimeout)
		for _, s := range p.all() {
			var old []*conn
			s.mu.Lock()
			keep := s.idle[:0]
			for _, c := range s.idle {
				if c.lastUsed.Before(cut) {
					old = append(old, c)
				} else {
					keep = append(keep, c)
				}
			}
			s.idle = keep
			s.mu.Unlock()
			for _, c := range old {
				c.quit(p.quitTimeout())
			}
		}
	}
}

func (p *Pool) all() []*server {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*server, 0, len(p.servers))
	for _, s := range p.servers {
		out = append(out, s)
	}
	return out
}

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats {
	n := 0
	for _, s := range p.all() {
		s.mu.Lock()
		n += len(s.idle)
		s.mu.Unlock()
	}
	return Stats{Dials: p.dials.Load(), Reuses: p.reuses.Load(), Broken: p.broken.Load(), Idle: n}
}

// Health returns every backend the pool has used, by server string.
func (p *Pool) Health() []Health {
	var out []Health
	for _, s := range p.all() {
		s.mu.Lock()
		h := Health{Server: s.name, Up: s.up, Since: s.since, InFlight: s.inflight, Idle: len(s.idle),
			LastError: s.lastErr, LastErrorAt: s.lastErrAt, Delivered: s.delivered.Load(), Refused: s.refused.Load()}
		for i, c := range Causes {
			if n := s.failures[i].Load(); n > 0 {
				if h.Failures == nil {
					h.Failures = map[string]uint64{}
				}
				h.Failures[c] = n
			}
		}
		if !s.up {
			h.RetryAt = s.retryAt
		}
		s.mu.Unlock()
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Server < out[j].Server })
	return out
}

// Close sends QUIT on idle connections and stops pooling and probing.
// Transactions keep working after Close, with a fresh connection each.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range p.all() {
		s.mu.Lock()
		idle := s.idle
		s.idle = nil
		s.mu.Unlock()
		for _, c := range idle {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.quit(p.quitTimeout())
			}()
		}
	}
	wg.Wait()
	return nil
}

// Probe connects to server the way a transaction would (greeting, LHLO,
// STARTTLS, AUTH) and hangs up with QUIT: the pre-flight check of
// `lmtpgate check --connect`. It does not touch the pool or the backend's
// health.
func (p *Pool) Probe(ctx context.Context, server string) error {
	t, err := ParseServer(server, &p.cfg)
	if err != nil {
		return err
	}
	c, se := p.dial(ctx, t)
	if se != nil {
		return se
	}
	c.quit(p.quitTimeout())
	return nil
}
