// Package backend delivers a spooled message to the lmtpd of a Cyrus
// murder backend, the way Cyrus's own frontend lmtpd does (cyrus-interop §8):
// LHLO, AUTH PLAIN as the proxy admin with an empty authzid, MAIL FROM with
// AUTH=<…>, one RCPT per recipient, DATA, and one final reply per accepted
// recipient. Connections are kept in a per-server pool and checked before
// reuse.
//
// The package's one promise is that nothing is lost: a Result says Delivered
// only when the backend answered 2xx for that recipient after DATA. Every
// doubt (dial failure, timeout, connection lost mid-DATA, a garbled reply)
// is reported as Err, which the caller turns into a temporary failure, so
// the MTA retries; a duplicate delivery is preferable to a lost message.
package backend

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// healthCheckAfter is how long a pooled connection may sit idle before it
// is checked with NOOP before reuse (Cyrus checks every time,
// cyrus-interop §8.4).
const healthCheckAfter = 5 * time.Second

// DefaultPort is the port used when a server string has none and
// Config.DefaultPort is zero: the usual lmtpd port of murder backends.
const DefaultPort = 2003

// Config says how to reach and talk to backends. Zero fields take the
// defaults documented on each.
type Config struct {
	// DefaultPort is used when the server string has no port (default 2003).
	DefaultPort int
	// Addresses maps a Cyrus server name to "host:port" (or a socket
	// path), overriding what the server string says.
	Addresses map[string]string
	// HeloName is the LHLO argument (default "lmtpgate").
	HeloName string
	// AuthName is the SASL authcid (Cyrus proxy_authname); empty means
	// do not authenticate.
	AuthName string
	// Password is AuthName's password (Cyrus proxy_password).
	Password string
	// TLSConfig is used for "/tls" servers (STARTTLS); ServerName is
	// filled per host when empty.
	TLSConfig *tls.Config
	// ConnectTimeout bounds dial, greeting, LHLO, STARTTLS and AUTH
	// together (default 10s, Cyrus client_timeout).
	ConnectTimeout time.Duration
	// CommandTimeout bounds each command, and each step of progress
	// while the body is sent and the final replies read (default 60s).
	CommandTimeout time.Duration
	// TxnTimeout bounds the whole transaction from the health check to
	// the last final reply (default 5m, Cyrus lmtptxn_timeout).
	TxnTimeout time.Duration
	// IdleTimeout closes pooled connections idle for longer (default 5m;
	// a backend lmtpd drops idle clients after 360s).
	IdleTimeout time.Duration
	// MaxIdle is the number of idle connections kept per server
	// (default 4).
	MaxIdle int
}

func (c Config) withDefaults() Config {
	if c.DefaultPort == 0 {
		c.DefaultPort = DefaultPort
	}
	if c.HeloName == "" {
		c.HeloName = "lmtpgate"
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.CommandTimeout <= 0 {
		c.CommandTimeout = 60 * time.Second
	}
	if c.TxnTimeout <= 0 {
		c.TxnTimeout = 5 * time.Minute
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	if c.MaxIdle <= 0 {
		c.MaxIdle = 4
	}
	return c
}

// Envelope is the part of the MTA's transaction that is forwarded.
type Envelope struct {
	// From is the reverse-path, "" for <>.
	From string
	// AuthID is the MTA's MAIL AUTH= identity, or "" which is sent as
	// AUTH=<>. It is sent only when the backend advertises AUTH, as Cyrus
	// does (cyrus-interop §8.3).
	AuthID string
}

// Message is the spooled message, headers already prepended.
type Message interface {
	// Open returns a fresh reader from the start. It is called once per
	// backend, possibly concurrently.
	Open() (io.ReadCloser, error)
	// Size is the message size in bytes.
	Size() int64
}

// Stage is how far a recipient's transaction got.
type Stage int

const (
	// StageConnect: dial, TLS, greeting or LHLO failed.
	StageConnect Stage = iota
	// StageAuth: AUTH failed or was impossible.
	StageAuth
	// StageMail: the health check or MAIL FROM failed.
	StageMail
	// StageRcpt: RCPT was refused, or failed.
	StageRcpt
	// StageData: DATA was refused, or the body or final replies failed,
	// or the message could not be read.
	StageData
	// StageDone: the backend gave this recipient's final reply after
	// DATA.
	StageDone
)

func (s Stage) String() string {
	switch s {
	case StageConnect:
		return "connect"
	case StageAuth:
		return "auth"
	case StageMail:
		return "mail"
	case StageRcpt:
		return "rcpt"
	case StageData:
		return "data"
	case StageDone:
		return "done"
	}
	return fmt.Sprintf("stage(%d)", int(s))
}

// Result is the outcome for one recipient.
type Result struct {
	// Rcpt is the forward address as given.
	Rcpt string
	// Stage is where it ended.
	Stage Stage
	// Reply is the backend's refusal, if it gave one. On success Reply
	// is nil and Err is nil and Stage is StageDone. A reply is always
	// 4xx or 5xx, except that a 2xx other than 250 after DATA is kept.
	Reply *smtp.SMTPError
	// Err is a transport or protocol failure (dial, TLS, timeout,
	// connection lost, garbled reply, message unreadable); nil if the
	// backend answered. Err means "unknown": the caller must treat it as
	// temporary.
	Err error
}

// Delivered is true only if the backend answered 2xx to this recipient's
// final (post-DATA) reply.
func (r Result) Delivered() bool {
	if r.Stage != StageDone || r.Err != nil {
		return false
	}
	return r.Reply == nil || (r.Reply.Code >= 200 && r.Reply.Code <= 299)
}

// Stats are counters for monitoring.
type Stats struct {
	// Dials counts connections opened successfully.
	Dials uint64
	// Reuses counts pooled connections that passed the health check.
	Reuses uint64
	// Broken counts connections closed instead of pooled: after an
	// error, a timeout, a failed health check, or a transaction that
	// did not end cleanly (MAIL or DATA refused, no recipient accepted).
	Broken uint64
	// Idle is the number of pooled connections now.
	Idle int
}

// Pool delivers to backends, reusing connections. It is safe for
// concurrent use.
type Pool struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	idle   map[string][]*bconn // by Target.Name; most recently used last
	closed bool
	done   chan struct{}

	dials, reuses, broken atomic.Uint64
}

// NewPool returns a pool; cfg's zero fields take their defaults. log may be
// nil.
func NewPool(cfg Config, log *slog.Logger) *Pool {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{
		cfg:  cfg.withDefaults(),
		log:  log,
		idle: map[string][]*bconn{},
		done: make(chan struct{}),
	}
	go p.janitor()
	return p
}

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	n := 0
	for _, l := range p.idle {
		n += len(l)
	}
	p.mu.Unlock()
	return Stats{Dials: p.dials.Load(), Reuses: p.reuses.Load(), Broken: p.broken.Load(), Idle: n}
}

// Close sends QUIT on idle connections and stops pooling. Deliver keeps
// working after Close, with a fresh connection each time.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	var all []*bconn
	for k, l := range p.idle {
		all = append(all, l...)
		delete(p.idle, k)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, b := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.quit(p.quitTimeout())
		}()
	}
	wg.Wait()
	return nil
}

func (p *Pool) quitTimeout() time.Duration {
	return min(p.cfg.CommandTimeout, 5*time.Second)
}

// janitor closes connections idle for longer than IdleTimeout, so we hang
// up before the backend's 360s input timeout does it for us.
func (p *Pool) janitor() {
	tick := min(max(p.cfg.IdleTimeout/2, 50*time.Millisecond), 30*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
		var old []*bconn
		cut := time.Now().Add(-p.cfg.IdleTimeout)
		p.mu.Lock()
		for k, l := range p.idle {
			keep := l[:0]
			for _, b := range l {
				if b.lastUsed.Before(cut) {
					old = append(old, b)
				} else {
					keep = append(keep, b)
				}
			}
			if len(keep) == 0 {
				delete(p.idle, k)
			} else {
				p.idle[k] = keep
			}
		}
		p.mu.Unlock()
		for _, b := range old {
			b.quit(p.quitTimeout())
		}
	}
}

// take pops the most recently used idle connection for t that is not too
// old, or returns nil.
func (p *Pool) take(t Target) *bconn {
	cut := time.Now().Add(-p.cfg.IdleTimeout)
	var stale []*bconn
	var b *bconn
	p.mu.Lock()
	l := p.idle[t.Name]
	for len(l) > 0 {
		c := l[len(l)-1]
		l = l[:len(l)-1]
		if c.lastUsed.Before(cut) {
			stale = append(stale, c)
			continue
		}
		b = c
		break
	}
	if len(l) == 0 {
		delete(p.idle, t.Name)
	} else {
		p.idle[t.Name] = l
	}
	p.mu.Unlock()
	for _, c := range stale {
		c.close()
	}
	return b
}

// put returns a connection in a clean state (no transaction open) to the
// pool, evicting the oldest beyond MaxIdle.
func (p *Pool) put(b *bconn) {
	b.lastUsed = time.Now()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		go b.quit(p.quitTimeout())
		return
	}
	l := append(p.idle[b.target.Name], b)
	var evict []*bconn
	if over := len(l) - p.cfg.MaxIdle; over > 0 {
		evict = append(evict, l[:over]...)
		l = append([]*bconn(nil), l[over:]...)
	}
	p.idle[b.target.Name] = l
	p.mu.Unlock()
	for _, e := range evict {
		go e.quit(p.quitTimeout())
	}
}

func (p *Pool) debug(ctx context.Context, t Target, st Stage, start time.Time, msg string, attrs ...slog.Attr) {
	if !p.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	attrs = append([]slog.Attr{
		slog.String("backend", t.Name),
		slog.String("stage", st.String()),
		slog.Int64("dur_ms", time.Since(start).Milliseconds()),
	}, attrs...)
	p.log.LogAttrs(ctx, slog.LevelDebug, msg, attrs...)
}

// Deliver runs one LMTP transaction for rcpts on the backend named by
// server (a Cyrus server string, see ParseServer) and returns exactly one
// Result per input recipient, in input order. Duplicate recipients are sent
// once and share the answer, because the backend's final replies can only
// be told apart by address. A Result says Delivered only if the backend
// said 2xx for it after DATA.
//
// A pooled connection is checked with NOOP before use (Cyrus does the same,
// cyrus-interop §8.4); if it fails, or fails before any RCPT was sent, the
// transaction is retried once on a fresh connection. Nothing is retried
// after the first RCPT, so DATA is never sent twice by this call.
func (p *Pool) Deliver(ctx context.Context, server string, env Envelope, rcpts []string, msg Message) []Result {
	results := make([]Result, len(rcpts))
	for i, r := range rcpts {
		results[i].Rcpt = r
	}
	if len(rcpts) == 0 {
		return results
	}
	fill := func(o outcome) {
		for i := range results {
			results[i].Stage, results[i].Reply, results[i].Err = o.stage, o.reply, o.err
		}
	}
	t, err := ParseServer(server, &p.cfg)
	if err != nil {
		fill(outcome{stage: StageConnect, err: err})
		return results
	}
	// Deduplicate: go-smtp keys the post-DATA replies by address.
	var uniq []string
	index := make(map[string]int, len(rcpts))
	for _, r := range rcpts {
		if _, ok := index[r]; !ok {
			index[r] = len(uniq)
			uniq = append(uniq, r)
		}
	}
	body, err := msg.Open()
	if err != nil {
		fill(outcome{stage: StageData, err: fmt.Errorf("open message: %w", err)})
		return results
	}
	defer body.Close()

	var outs []outcome
	for attempt := 0; ; attempt++ {
		b := (*bconn)(nil)
		if attempt == 0 {
			b = p.take(t)
		}
		reused := b != nil
		if !reused {
			start := time.Now()
			var se *stageError
			b, se = p.dial(ctx, t)
			if se != nil {
				p.debug(ctx, t, se.stage, start, "backend setup failed", slog.String("error", se.Error()))
				fill(outcome{stage: se.stage, reply: se.reply, err: se.err})
				return results
			}
			p.dials.Add(1)
			p.debug(ctx, t, StageConnect, start, "backend connected", slog.Bool("tls", t.TLS))
		}
		var retry bool
		outs, retry = p.run(ctx, b, reused, env, uniq, body)
		if retry && attempt == 0 {
			continue
		}
		break
	}
	for i, r := range rcpts {
		o := outs[index[r]]
		results[i].Stage, results[i].Reply, results[i].Err = o.stage, o.reply, o.err
	}
	return results
}

type outcome struct {
	stage Stage
	reply *smtp.SMTPError
	err   error
}

// run performs the transaction on b and disposes of b (back to the pool
// only if the transaction completed cleanly). retry is true when b was a
// pooled connection that failed before any RCPT was sent.
func (p *Pool) run(ctx context.Context, b *bconn, reused bool, env Envelope, rcpts []string, body io.Reader) (outs []outcome, retry bool) {
	cfg := &p.cfg
	t := b.target
	outs = make([]outcome, len(rcpts))
	all := func(o outcome) {
		for i := range outs {
			outs[i] = o
		}
	}
	txnEnd := time.Now().Add(cfg.TxnTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(txnEnd) {
		txnEnd = d
	}
	command := func() { b.dc.setPhase(earliest(time.Now().Add(cfg.CommandTimeout), txnEnd), 0) }
	// Cancellation closes the socket, which fails whatever is blocked.
	cancelled := atomic.Bool{}
	stop := context.AfterFunc(ctx, func() { cancelled.Store(true); b.dc.Conn.Close() })
	healthy := false
	defer func() {
		if stop() && healthy {
			p.put(b)
			return
		}
		p.broken.Add(1)
		b.close()
	}()
	// wrap adds the cancellation cause to a transport error.
	wrap := func(err error) error {
		if cancelled.Load() && ctx.Err() != nil {
			return errors.Join(ctx.Err(), err)
		}
		return err
	}
	start := time.Now()

	// A connection used moments ago is almost surely alive; checking it
	// would cost a round trip per delivery. If it did die, MAIL fails on
	// the transport and the transaction is retried on a fresh connection
	// (nothing has been sent that could deliver twice).
	if reused && time.Since(b.lastUsed) >= healthCheckAfter {
		command()
		if err := b.c.Noop(); err != nil {
			p.debug(ctx, t, StageMail, start, "pooled connection failed health check", slog.String("error", err.Error()))
			if ctx.Err() != nil {
				all(outcome{stage: StageMail, err: wrap(err)})
				return outs, false
			}
			return nil, true
		}
	}

	// MAIL FROM. AUTH=<> unless the MTA gave an identity; go-smtp drops the
	// parameter when the backend did not advertise AUTH, as Cyrus does.
	auth := env.AuthID
	if auth == "" {
		auth = "<>"
	}
	if strings.ContainsAny(env.From, "\r\n") || strings.ContainsAny(auth, "\r\n") {
		all(outcome{stage: StageMail, err: errors.New("reverse-path or AUTH identity contains CR or LF")})
		return outs, false
	}
	command()
	err := b.c.Mail(env.From, &smtp.MailOptions{Auth: &auth})
	p.debug(ctx, t, StageMail, start, "backend MAIL", errAttr(err))
	if err != nil {
		var se *smtp.SMTPError
		errors.As(err, &se)
		// A pooled connection that died, or whose backend is going away
		// (421), is replaced once by a fresh one.
		if reused && ctx.Err() == nil && (se == nil || se.Code == 421) {
			return nil, true
		}
		if se != nil && validReply(se.Code) {
			all(outcome{stage: StageMail, reply: se})
			return outs, false
		}
		all(outcome{stage: StageMail, err: wrap(err)})
		return outs, false
	}
	if reused {
		p.reuses.Add(1)
	}

	// RCPT, one per unique recipient, no pipelining (Cyrus lmtp_runtxn).
	var accepted []int
	for i, r := range rcpts {
		if strings.ContainsAny(r, "\r\n") {
			outs[i] = outcome{stage: StageRcpt, err: errors.New("recipient contains CR or LF")}
			continue
		}
		command()
		err := b.c.Rcpt(r, nil)
		if err == nil {
			accepted = append(accepted, i)
			outs[i] = outcome{stage: StageRcpt}
			continue
		}
		var se *smtp.SMTPError
		if errors.As(err, &se) && validReply(se.Code) {
			outs[i] = outcome{stage: StageRcpt, reply: se}
			continue
		}
		// A transport failure, or a reply that is neither acceptance
		// nor refusal (we cannot know what the backend thinks): nobody
		// still waiting can be answered.
		if se != nil {
			err = fmt.Errorf("unexpected RCPT reply %d %s", se.Code, se.Message)
		}
		err = wrap(err)
		for j := range outs {
			if j < i && (outs[j].reply != nil || outs[j].err != nil) {
				continue // already answered by a refusal or never sent
			}
			outs[j] = outcome{stage: StageRcpt, err: err}
		}
		p.debug(ctx, t, StageRcpt, start, "backend RCPT failed", slog.String("error", err.Error()))
		return outs, false
	}
	p.debug(ctx, t, StageRcpt, start, "backend RCPT", slog.Int("accepted", len(accepted)), slog.Int("rcpts", len(rcpts)))
	if len(accepted) == 0 {
		// No DATA (cyrus-interop §8.3 step 4). go-smtp's Reset would
		// make the next command re-send LHLO, so the connection is
		// not reused after it.
		command()
		b.c.Reset()
		return outs, false
	}
	failAccepted := func(o outcome) {
		for _, i := range accepted {
			outs[i] = o
		}
	}

	command()
	w, err := b.c.Data()
	if err != nil {
		p.debug(ctx, t, StageData, start, "backend DATA refused", errAttr(err))
		var se *smtp.SMTPError
		if errors.As(err, &se) && validReply(se.Code) {
			failAccepted(outcome{stage: StageData, reply: se})
		} else {
			failAccepted(outcome{stage: StageData, err: wrap(err)})
		}
		return outs, false
	}
	// The body may be large: each write must make progress within
	// CommandTimeout, the whole within the transaction deadline.
	b.dc.setPhase(txnEnd, cfg.CommandTimeout)
	if _, err := io.Copy(w, body); err != nil {
		// Never send the final dot after a failed copy: the backend
		// would deliver a truncated message. Closing the connection
		// aborts the transaction (RFC 2033 §4.2).
		p.debug(ctx, t, StageData, start, "sending body failed", errAttr(err))
		failAccepted(outcome{stage: StageData, err: wrap(fmt.Errorf("sending message: %w", err))})
		return outs, false
	}
	// Final replies: one per accepted RCPT, in order (RFC 2033 §4.2).
	resp, err := w.CloseWithLMTPResponse()
	var lmtpErr smtp.LMTPDataError
	errors.As(err, &lmtpErr)
	transport := err
	if isOnlyLMTPErr(err) {
		transport = nil // every reply was read; some were refusals
	}
	for _, i := range accepted {
		r := rcpts[i]
		if _, ok := resp[r]; ok {
			outs[i] = outcome{stage: StageDone}
			continue
		}
		if se, ok := lmtpErr[r]; ok && se != nil {
			if (se.Code >= 200 && se.Code <= 299) || validReply(se.Code) {
				outs[i] = outcome{stage: StageDone, reply: se}
				continue
			}
			outs[i] = outcome{stage: StageData, err: fmt.Errorf("unexpected final reply %d %s", se.Code, se.Message)}
			transport = errors.Join(transport, outs[i].err)
			continue
		}
		e := transport
		if e == nil {
			e = errors.New("no final reply")
		}
		outs[i] = outcome{stage: StageData, err: wrap(fmt.Errorf("reading final replies: %w", e))}
	}
	p.debug(ctx, t, StageDone, start, "backend transaction", errAttr(transport))
	healthy = transport == nil
	return outs, false
}

// isOnlyLMTPErr reports whether err is a bare LMTPDataError (all replies
// were read) rather than one joined with a transport error.
func isOnlyLMTPErr(err error) bool {
	_, ok := err.(smtp.LMTPDataError)
	return ok
}

func errAttr(err error) slog.Attr {
	if err == nil {
		return slog.String("error", "")
	}
	return slog.String("error", err.Error())
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
