// Package mupdate is a client for the MUPDATE protocol (RFC 3656) as Cyrus
// IMAP speaks it: the murder master ("mupdate -m") and the frontend's local
// replica (plain "mupdate") both answer FIND for one mailbox with its
// server and partition. A Client is a lookup.Source.
//
// The client keeps one persistent, authenticated connection and serialises
// queries on it, like Cyrus 2.2's lmtpproxyd did. Its failure handling is a
// circuit breaker: once the server fails (connect, authenticate, answer),
// every lookup fails at once with ErrUnavailable, so that mail keeps
// flowing from the other lookup sources instead of waiting for a dial
// timeout per recipient. A background probe tries the server again (connect,
// authenticate, NOOP) after a jittered, exponentially growing backoff, and
// lookups go to the server again only once a probe has succeeded: no
// message waits on a server that is still down or hung.
//
// The subpackage fakemupdate is a scripted MUPDATE server for tests.
package mupdate

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// Server is how to reach and log in to a MUPDATE server: what the query
// client (Config) and the master replica's stream share. Every field means
// what its comment says, zero included.
type Server struct {
	Address  string // host:port (Cyrus's default port is 3905)
	AuthName string // SASL authentication id (Cyrus mupdate_authname); empty: no AUTHENTICATE
	// AuthzID is the optional SASL authorization id (Cyrus
	// mupdate_username); usually empty.
	AuthzID  string
	Password string
	// TLS is "none", "starttls" (STARTTLS before authenticating; fails if
	// the server does not offer it) or "tls" (TLS from the first byte).
	TLS string
	// TLSCAFile is a PEM bundle of the CAs the server's certificate must
	// chain to; empty: the system's roots.
	TLSCAFile string
	// DialTimeout bounds the TCP connect. Must be positive.
	DialTimeout time.Duration
	// QueryTimeout bounds reading the greeting, STARTTLS and AUTHENTICATE
	// together, and each command's answer. Must be positive.
	QueryTimeout time.Duration
	// MaxLiteral bounds each response line and literal. Must be positive.
	MaxLiteral int
}

// Endpoint is what Dial needs for s, with tc (from TLSConfig) for either
// TLS mode.
func (s Server) Endpoint(tc *tls.Config) Endpoint {
	return Endpoint{
		Address:          s.Address,
		AuthName:         s.AuthName,
		AuthzID:          s.AuthzID,
		Password:         s.Password,
		TLS:              s.TLS,
		TLSConfig:        tc,
		DialTimeout:      s.DialTimeout,
		HandshakeTimeout: s.QueryTimeout,
		MaxLiteral:       s.MaxLiteral,
	}
}

// Config says where the MUPDATE server is and how the query client talks
// to it. Every field means what its comment says, zero included; the
// defaults are DefaultConfig's.
type Config struct {
	Server
	// KeepAlive sends NOOP on a connection idle this long, to notice a
	// dead server or a NAT that dropped the connection before a message
	// needs it (Cyrus's own idle timeout is 3 h); 0 sends none.
	KeepAlive time.Duration
	// BackoffMin and BackoffMax bound the breaker's wait after a failure.
	// Both must be positive.
	BackoffMin, BackoffMax time.Duration
}

// DefaultConfig returns the defaults of every setting. The timeouts are
// chosen so that a fresh connection and a query (dial, greeting and login,
// FIND) fit within the lookup chain's default per-source budget: a server
// that does not answer is then this client's failure, which opens the
// breaker, and not the caller's deadline, which would not.
func DefaultConfig() Config {
	return Config{
		Server: Server{
			TLS:          "none",
			DialTimeout:  3 * time.Second,
			QueryTimeout: 3 * time.Second,
			MaxLiteral:   DefaultMaxLiteral,
		},
		KeepAlive:  60 * time.Second,
		BackoffMin: time.Second,
		BackoffMax: 30 * time.Second,
	}
}

// Budget is the longest a lookup can take on a fresh connection: dial,
// greeting and login, and the query.
func (c *Config) Budget() time.Duration { return c.DialTimeout + 2*c.QueryTimeout }

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.Address == "":
		return errors.New("Address is required")
	case c.TLS != "none" && c.TLS != "starttls" && c.TLS != "tls":
		return fmt.Errorf("TLS %q: want none, starttls or tls", c.TLS)
	case c.DialTimeout <= 0, c.QueryTimeout <= 0:
		return errors.New("DialTimeout and QueryTimeout must be positive")
	case c.KeepAlive < 0:
		return errors.New("KeepAlive must not be negative")
	case c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin:
		return errors.New("BackoffMin must be positive and BackoffMax at least BackoffMin")
	case c.MaxLiteral <= 0:
		return errors.New("MaxLiteral must be positive")
	}
	_, err := c.tlsConfig()
	return err
}

// tlsConfig returns the TLS client configuration; ServerName is set at
// connect time.
func (c *Config) tlsConfig() (*tls.Config, error) { return TLSConfig(c.TLSCAFile) }

// TLSConfig is the TLS client configuration for a MUPDATE server whose
// certificate is signed by a CA in caFile (a PEM bundle), or by the
// system's roots when caFile is "". ServerName is set at connect time.
func TLSConfig(caFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("TLSCAFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLSCAFile: no PEM certificate in %s", caFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// ErrUnavailable is wrapped by every error that means "the server could
// not answer": unreachable, refused authentication, timed out, spoke
// garbage, in backoff, or the client is closed. It never means the mailbox
// does not exist; that is lookup.ErrNotFound.
var ErrUnavailable = errors.New("mupdate server unavailable")

// ErrClosed is returned (wrapping ErrUnavailable) after Close.
var ErrClosed = fmt.Errorf("%w: client closed", ErrUnavailable)

// Stats is a snapshot of the client's counters, for tests and the service
// status line.
type Stats struct {
	Dials    uint64 // connection attempts
	Connects uint64 // connections opened and authenticated
	Queries  uint64 // FIND commands sent
	// State is "idle" (no connection, nothing failed), "connected",
	// "backoff" (breaker open: lookups fail at once), "failing" (the
	// backoff ended and a probe is trying the server; lookups still fail
	// at once) or "closed".
	State        string
	LastError    string
	BackoffUntil time.Time
}

// Client is a MUPDATE client with one persistent connection. It is safe
// for concurrent use; queries are serialised. Close must be called to stop
// its keep-alive goroutine.
type Client struct {
	name string
	cfg  Config
	log  *slog.Logger

	// sem is held by whoever uses the connection (a query, a keep-alive
	// NOOP, Close); it is a channel so that waiting respects a context.
	sem chan struct{}
	// Guarded by sem.
	conn net.Conn
	br   *bufio.Reader
	tagN uint64

	mu           sync.Mutex // guards the fields below
	live         net.Conn   // == conn, readable without sem (for Close and Stats)
	closed       bool
	failing      bool
	backoff      time.Duration
	backoffUntil time.Time
	lastErr      string
	lastUse      time.Time
	kaStarted    bool
	probing      bool // a probe goroutine runs while the breaker is open
	done         chan struct{}
	// stop is cancelled by Close; it ends a probe's dial or wait.
	stop       context.Context
	cancelStop context.CancelFunc

	dials, connects, queries atomic.Uint64
}

// New returns a client for the server in cfg. name is the lookup source
// name ("master-mupdate" or "local-mupdate"). Nothing is dialled until the
// first Lookup or Ping. log may be nil.
func New(name string, cfg Config, log *slog.Logger) *Client {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stop, cancel := context.WithCancel(context.Background())
	return &Client{
		name:       name,
		cfg:        cfg,
		log:        log,
		sem:        make(chan struct{}, 1),
		done:       make(chan struct{}),
		stop:       stop,
		cancelStop: cancel,
	}
}

// Name returns the source name given to New.
func (c *Client) Name() string { return c.name }

// Lookup asks the server with FIND for the internal mailbox name. A
// MAILBOX answer is an Active entry, RESERVE a Reserved one; no data before
// the OK is lookup.ErrNotFound. Every other outcome is an error wrapping
// ErrUnavailable.
func (c *Client) Lookup(ctx context.Context, mailbox string) (lookup.Entry, error) {
	if len(mailbox) > c.cfg.MaxLiteral {
		return lookup.Entry{}, fmt.Errorf("%w: mailbox name too long", ErrUnavailable)
	}
	var (
		entry lookup.Entry
		found bool
	)
	err := c.do(ctx, func() error {
		entry, found = lookup.Entry{}, false
		c.queries.Add(1)
		tag := c.nextTag()
		if err := c.write(fmt.Sprintf("%s FIND {%d+}\r\n%s\r\n", tag, len(mailbox), mailbox)); err != nil {
			return err
		}
		for {
			r, err := c.readTagged(tag)
			if err != nil {
				return err
			}
			switch r.Kind {
			case "OK":
				return nil
			case "NO", "BAD":
				return fmt.Errorf("FIND refused: %s %q", r.Kind, strings.Join(r.Args, " "))
			case "MAILBOX", "RESERVE":
				e, err := parseEntry(r)
				if err != nil {
					return err
				}
				// A second entry, or one for another name, means the
				// stream is not what we think it is; routing on it
				// could send mail to the wrong backend.
				if found {
					return protoErr("more than one entry for FIND")
				}
				if e.Name != mailbox {
					return protoErr("FIND %q answered for %q", mailbox, e.Name)
				}
				entry, found = e, true
			default:
				return protoErr("unexpected %s response to FIND", r.Kind)
			}
		}
	})
	if err != nil {
		return lookup.Entry{}, err
	}
	if !found {
		return lookup.Entry{}, lookup.ErrNotFound
	}
	return entry, nil
}

// parseEntry turns "tag MAILBOX name location acl" or "tag RESERVE name
// location" into an Entry. A location is "server!partition"; without '!'
// the whole string is the server (RFC 3656 leaves its form to the
// implementation; this is how Cyrus's replica stores it).
func parseEntry(r Response) (lookup.Entry, error) {
	var e lookup.Entry
	switch {
	case r.Kind == "MAILBOX" && len(r.Args) == 3:
		e.State = lookup.Active
		e.ACL = r.Args[2]
	case r.Kind == "RESERVE" && len(r.Args) == 2:
		e.State = lookup.Reserved
	default:
		return e, protoErr("%s with %d arguments", r.Kind, len(r.Args))
	}
	e.Name = r.Args[0]
	loc := r.Args[1]
	if i := strings.IndexByte(loc, '!'); i >= 0 {
		e.Server, e.Partition = loc[:i], loc[i+1:]
	} else {
		e.Server = loc
	}
	if e.Name == "" || e.Server == "" {
		return e, protoErr("%s with empty name or server", r.Kind)
	}
	return e, nil
}

// Ping sends NOOP, connecting first if needed. It is the health check for
// the status line and for a configuration reload. Like Lookup it fails at
// once while the breaker is open.
func (c *Client) Ping(ctx context.Context) error {
	return c.do(ctx, c.noop)
}

func (c *Client) noop() error {
	tag := c.nextTag()
	if err := c.write(tag + " NOOP\r\n"); err != nil {
		return err
	}
	return c.awaitOK(tag, "NOOP")
}

// readTagged returns the next response tagged tag, passing over untagged
// data we do not need. A BYE, or a response tagged for another command, is
// an error: the stream is not where we think it is.
func (c *Client) readTagged(tag string) (Response, error) {
	for {
		r, err := ReadResponse(c.br, c.cfg.MaxLiteral)
		if err != nil {
			return r, err
		}
		if r.Tag == "*" {
			if r.Kind == "BYE" {
				return r, fmt.Errorf("server said BYE %q", strings.Join(r.Args, " "))
			}
			continue
		}
		if r.Tag != tag {
			return r, protoErr("response tagged %q to command %q", r.Tag, tag)
		}
		return r, nil
	}
}

// awaitOK reads responses until the one tagged tag, which must be OK.
func (c *Client) awaitOK(tag, what string) error {
	r, err := c.readTagged(tag)
	if err != nil {
		return err
	}
	switch r.Kind {
	case "OK":
		return nil
	case "NO", "BAD":
		return fmt.Errorf("%s refused: %s %q", what, r.Kind, strings.Join(r.Args, " "))
	}
	return protoErr("unexpected %s response to %s", r.Kind, what)
}

// do runs op on the connection under the breaker's rules.
func (c *Client) do(ctx context.Context, op func() error) error {
	if err := c.admit(); err != nil {
		return err
	}
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, c.name, ctx.Err())
	}
	defer func() { <-c.sem }()
	// The breaker may have opened while we waited for the connection.
	if err := c.admit(); err != nil {
		return err
	}

	for attempt := 0; ; attempt++ {
		reused := c.conn != nil
		if !reused {
			if err := c.connect(ctx); err != nil {
				return c.failed(ctx, err)
			}
		}
		err := c.withDeadline(ctx, c.cfg.QueryTimeout, op)
		if err == nil {
			c.succeeded()
			return nil
		}
		c.dropConn()
		// A connection that sat idle may have been closed by the server
		// (restart, idle timeout) without our noticing; that is not the
		// server being down, so try once more on a fresh connection.
		if reused && attempt == 0 && ctx.Err() == nil && !errors.Is(err, errCancelled) && isBroken(err) {
			c.log.Debug("mupdate connection was closed, reconnecting", "source", c.name, "address", c.cfg.Address, "error", err)
			continue
		}
		return c.failed(ctx, err)
	}
}

// admit fails fast while the client is closed or the breaker is open: in
// backoff, or while the probe that ends it has not yet succeeded.
func (c *Client) admit() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if now := time.Now(); now.Before(c.backoffUntil) {
		return fmt.Errorf("%w: %s: not retrying for %v after: %s", ErrUnavailable, c.name,
			c.backoffUntil.Sub(now).Round(time.Millisecond), c.lastErr)
	}
	if c.failing {
		return fmt.Errorf("%w: %s: not retrying until a probe succeeds after: %s", ErrUnavailable, c.name, c.lastErr)
	}
	return nil
}

// failed records a failure and returns it wrapped in ErrUnavailable. A
// caller that cancelled (its MTA went away, the daemon stops) says nothing
// about the server and does not open the breaker; but a caller whose
// deadline passed while the server kept it waiting does: a server that
// accepts connections and never answers (hung, or SIGSTOPped) is as
// unusable as one that refuses them, and every lookup must not wait for
// it in turn.
func (c *Client) failed(ctx context.Context, err error) error {
	if !errors.Is(err, errCancelled) && !errors.Is(ctx.Err(), context.Canceled) {
		c.openBreaker(err)
	}
	return fmt.Errorf("%w: %s at %s: %w", ErrUnavailable, c.name, c.cfg.Address, err)
}

func (c *Client) openBreaker(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if c.backoff == 0 {
		c.backoff = c.cfg.BackoffMin
	} else {
		c.backoff = min(2*c.backoff, c.cfg.BackoffMax)
	}
	// Jitter (up to a quarter less) keeps several frontends that lost
	// the same master from reconnecting in lockstep.
	wait := c.backoff
	if q := int64(wait / 4); q > 0 {
		wait -= time.Duration(rand.Int64N(q))
	}
	wait = max(wait, c.cfg.BackoffMin)
	c.backoffUntil = time.Now().Add(wait)
	c.lastErr = err.Error()
	if !c.failing {
		c.failing = true
		c.log.Warn("mupdate server unreachable", "source", c.name, "address", c.cfg.Address, "error", err)
	}
	if !c.probing {
		c.probing = true
		go c.probe()
	}
}

// probe tries the server again once the backoff has passed, and again
// after every failure with a longer backoff, until it answers or the
// client is closed. The connection it opens is kept for the lookups.
func (c *Client) probe() {
	for {
		c.mu.Lock()
		wait := time.Until(c.backoffUntil)
		c.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-c.done:
			t.Stop()
			return
		case <-t.C:
		}
		select {
		case c.sem <- struct{}{}:
		case <-c.done:
			return
		}
		err := c.probeOnce()
		<-c.sem
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return
		}
		if err == nil {
			c.mu.Lock()
			c.probing = false
			c.mu.Unlock()
			c.succeeded()
			return
		}
		c.log.Debug("mupdate probe failed", "source", c.name, "address", c.cfg.Address, "error", err)
		c.openBreaker(err)
	}
}

// probeOnce connects if needed and sends NOOP, under the query timeout;
// the caller holds sem.
func (c *Client) probeOnce() error {
	ctx, cancel := context.WithTimeout(c.stop, c.cfg.QueryTimeout)
	defer cancel()
	if c.conn == nil {
		if err := c.connect(ctx); err != nil {
			return err
		}
	}
	err := c.withDeadline(ctx, c.cfg.QueryTimeout, c.noop)
	if err != nil {
		c.dropConn()
	}
	return err
}

func (c *Client) succeeded() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failing {
		c.log.Info("mupdate server reachable again", "source", c.name, "address", c.cfg.Address)
	}
	c.failing = false
	c.backoff = 0
	c.backoffUntil = time.Time{}
	c.lastUse = time.Now()
}

// isBroken reports whether err means the peer closed the connection.
func isBroken(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, net.ErrClosed)
}

// withDeadline runs f with the connection deadline set to now+d or the
// context's deadline, whichever is sooner, and aborts the I/O if the
// context is cancelled.
func (c *Client) withDeadline(ctx context.Context, d time.Duration, f func() error) error {
	conn := c.conn
	deadline := time.Now().Add(d)
	callerBound := false
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline, callerBound = dl, true
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	err := f()
	switch {
	case err == nil:
	case errors.Is(ctx.Err(), context.Canceled):
		err = fmt.Errorf("%w: %w (%w)", errCancelled, ctx.Err(), err)
	case ctx.Err() != nil || (callerBound && !time.Now().Before(deadline)):
		// The socket deadline can fire a moment before the context
		// notices its own; it was the caller's deadline all the same,
		// and the server did not answer within it.
		err = fmt.Errorf("no answer within the lookup's time: %w (%w)", context.DeadlineExceeded, err)
	}
	return err
}

// errCancelled marks a failure caused by the caller cancelling: it says
// nothing about the server.
var errCancelled = errors.New("caller cancelled")

func (c *Client) nextTag() string {
	c.tagN++
	return fmt.Sprintf("L%02d", c.tagN)
}

func (c *Client) write(s string) error {
	_, err := io.WriteString(c.conn, s)
	return err
}

// endpoint is the connection part of the configuration.
func (c Config) endpoint() (Endpoint, error) {
	tc, err := c.tlsConfig()
	if err != nil {
		return Endpoint{}, err
	}
	return c.Server.Endpoint(tc), nil
}

// connect dials, reads the greeting, does STARTTLS if configured and
// authenticates. On success c.conn is set.
func (c *Client) connect(ctx context.Context) error {
	c.dials.Add(1)
	ep, err := c.cfg.endpoint()
	if err != nil {
		return err
	}
	conn, err := Dial(ctx, ep)
	if err != nil {
		return err
	}
	c.conn, c.br, c.tagN = conn.NetConn, conn.Reader, 0
	c.mu.Lock()
	c.live = c.conn
	c.mu.Unlock()
	c.connects.Add(1)
	c.startKeepAlive()
	return nil
}

// dropConn closes the connection without ceremony.
func (c *Client) dropConn() {
	if c.conn != nil {
		c.conn.Close()
	}
	c.conn, c.br = nil, nil
	c.mu.Lock()
	c.live = nil
	c.mu.Unlock()
}

// startKeepAlive starts the NOOP loop once, on the first connection.
func (c *Client) startKeepAlive() {
	if c.cfg.KeepAlive <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kaStarted || c.closed {
		return
	}
	c.kaStarted = true
	c.lastUse = time.Now()
	go c.keepAliveLoop()
}

func (c *Client) keepAliveLoop() {
	t := time.NewTimer(c.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		c.mu.Lock()
		idle := time.Since(c.lastUse)
		c.mu.Unlock()
		if idle < c.cfg.KeepAlive {
			t.Reset(c.cfg.KeepAlive - idle)
			continue
		}
		c.keepAlive()
		t.Reset(c.cfg.KeepAlive)
	}
}

// keepAlive sends NOOP on an idle open connection. It never dials: an idle
// client with no connection has nothing to keep alive, and the breaker
// decides when to try again. A failed NOOP opens the breaker, so the next
// message does not wait for a dead server.
func (c *Client) keepAlive() {
	select {
	case c.sem <- struct{}{}:
	default:
		return // a query is using the connection, so it is not idle
	}
	defer func() { <-c.sem }()
	if c.conn == nil {
		return
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return
	}
	err := c.withDeadline(context.Background(), c.cfg.QueryTimeout, c.noop)
	if err != nil {
		c.dropConn()
		c.openBreaker(fmt.Errorf("keep-alive NOOP: %w", err))
		return
	}
	c.succeeded()
}

// Close sends LOGOUT (best effort) and closes the connection. Afterwards
// Lookup and Ping return ErrClosed. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	c.cancelStop()
	live := c.live
	c.mu.Unlock()

	t := time.NewTimer(c.cfg.QueryTimeout)
	defer t.Stop()
	select {
	case c.sem <- struct{}{}:
		defer func() { <-c.sem }()
		if c.conn != nil {
			c.conn.SetDeadline(time.Now().Add(min(c.cfg.QueryTimeout, time.Second)))
			if c.write("Q01 LOGOUT\r\n") == nil {
				c.awaitOK("Q01", "LOGOUT")
			}
			c.dropConn()
		}
	case <-t.C:
		// A query is stuck on the connection: closing it ends the query.
		if live != nil {
			live.Close()
		}
	}
	return nil
}

// Health reports the source's state for status and metrics: healthy only
// while nothing failed since the server last answered.
func (c *Client) Health() lookup.Health {
	s := c.Stats()
	h := lookup.Health{Healthy: s.Healthy(), State: s.State, Queries: s.Queries, LastError: s.LastError}
	h.Detail = fmt.Sprintf("%s, %d queries", s.State, s.Queries)
	if !h.Healthy && s.LastError != "" {
		h.Detail += ", " + s.LastError
	}
	return h
}

// Healthy reports whether the server answered since its last failure.
func (s Stats) Healthy() bool {
	return s.State == "idle" || s.State == "connected"
}

// Stats returns the counters and the breaker state.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stats{
		Dials:     c.dials.Load(),
		Connects:  c.connects.Load(),
		Queries:   c.queries.Load(),
		LastError: c.lastErr,
	}
	switch {
	case c.closed:
		s.State = "closed"
	case time.Now().Before(c.backoffUntil):
		s.State = "backoff"
		s.BackoffUntil = c.backoffUntil
	case c.failing:
		// The backoff is over, but nothing has succeeded since the
		// failure: a probe is trying the server.
		s.State = "failing"
	case c.live != nil:
		s.State = "connected"
	default:
		s.State = "idle"
	}
	return s
}
