// Package backend delivers mail to the lmtpd of Cyrus murder backends, the
// way Cyrus's own frontend does (imap/lmtpengine.c, lmtp_runtxn): LHLO, AUTH
// PLAIN as the proxy admin with an empty authzid, MAIL FROM with AUTH=<…>,
// one RCPT per recipient, DATA, and one final reply per accepted recipient
// (RFC 2033 §4.2).
//
// Unlike Cyrus it pipelines (RFC 2920, which Cyrus backends advertise): a
// transaction is opened when the front end learns of its first recipient for
// that backend, MAIL and each RCPT are sent as they come, and the body is
// streamed while the MTA is still sending it. A Txn has one method per
// protocol step the front end drives (Rcpt, Data, Abort) and one goroutine
// that owns the connection, so replies are always read in the order the
// commands were sent and a connection goes back to the pool only when every
// reply was read and nothing else is waiting on it.
//
// The package's promise is that nothing is lost: a Result says Delivered
// only when the backend answered 2xx for that recipient after the final
// dot, and the final dot is sent only after the whole message arrived and
// was valid. Every doubt (dial failure, timeout, connection lost, a garbled
// reply) is an Err, which the caller turns into a temporary failure.
//
// Each backend has its own health: a backend that fails to connect, times
// out or drops connections is taken out of service for a backoff (its
// transactions fail at once instead of waiting), a background probe tries
// it again, and it comes back by itself. Each backend also has a bound on
// concurrent transactions.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Envelope is the part of the MTA's transaction that is forwarded.
type Envelope struct {
	// From is the reverse-path as go-smtp decoded it, "" for <>; it is
	// re-quoted when sent (RFC 5321 §4.1.2).
	From string
	// AuthID is the MTA's MAIL AUTH= identity, or "" which is sent as
	// AUTH=<>. It is sent only when the backend advertises AUTH, as Cyrus
	// does.
	AuthID string
}

// Stage is how far a recipient's transaction got.
type Stage int

const (
	// StageConnect: the backend could not be used: refused by the
	// allow-list, busy, out of service, or dial, TLS, greeting or LHLO
	// failed.
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
	// Reply is the backend's reply: a refusal (4xx or 5xx), or after DATA
	// its 2xx.
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

// Errors a Txn reports in Result.Err besides transport failures.
var (
	// ErrDown: the backend is out of service after a failure; a probe
	// will bring it back.
	ErrDown = errors.New("backend out of service")
	// ErrBusy: the backend already runs MaxTransactions and no slot came
	// free within QueueTimeout.
	ErrBusy = errors.New("backend busy")
	// ErrAborted: the message did not arrive whole (or the front end
	// ended the transaction), so DATA was abandoned without the final dot.
	ErrAborted = errors.New("transaction abandoned: message not received whole")
	// ErrLocal: a recipient or reverse-path that cannot be sent (CR, LF or
	// a control character in it).
	ErrLocal = errors.New("address cannot be sent")
)

// Rcpt is one recipient of a Txn.
type Rcpt struct {
	// Addr is the forward address.
	Addr string

	answered chan struct{} // closed when the RCPT reply (or a failure) is known
	final    chan struct{} // closed when the final outcome is known
	atRcpt   Result        // valid once answered is closed
	res      Result        // valid once final is closed
	verify   bool
}

// Answer waits for the backend's reply to RCPT (or the failure that
// replaced it) and returns it: Stage StageRcpt with a nil Reply and Err for
// an accepted recipient, anything else for one that will not be delivered.
func (r *Rcpt) Answer(ctx context.Context) Result {
	select {
	case <-r.answered:
		return r.atRcpt
	case <-ctx.Done():
		return Result{Rcpt: r.Addr, Stage: StageRcpt, Err: ctx.Err()}
	}
}

// Wait waits for the recipient's final outcome.
func (r *Rcpt) Wait(ctx context.Context) Result {
	select {
	case <-r.final:
		return r.res
	case <-ctx.Done():
		return Result{Rcpt: r.Addr, Stage: StageData, Err: ctx.Err()}
	}
}

// Txn is one LMTP transaction on one backend. Create it with Pool.Begin;
// call Rcpt for each recipient, then Data once, or Abort. Its methods never
// block on the network; the transaction's goroutine does the I/O.
type Txn struct {
	p   *Pool
	srv *server
	env Envelope
	ctx context.Context

	mu      sync.Mutex
	rcpts   []*Rcpt
	queued  []*Rcpt
	body    io.Reader
	data    bool
	aborted bool
	failed  *Result // the whole transaction failed: new recipients resolve at once
	wake    chan struct{}
	done    chan struct{}

	// Storage for the common case, so that a transaction of a few
	// recipients allocates little: the first recipient, the slices'
	// first elements, the failure and the protocol session.
	first     Rcpt
	rcptArr   [4]*Rcpt
	queuedArr [4]*Rcpt
	failure   Result
	sess      session
}

// Rcpt adds a recipient and returns its handle; with verify the RCPT is
// sent and its reply read at once (Answer returns it), otherwise it is sent
// without waiting and its reply read later. A recipient given twice is sent
// once and both handles share the outcome: the backend would otherwise
// deliver two copies to one mailbox.
func (t *Txn) Rcpt(addr string, verify bool) *Rcpt {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range t.rcpts {
		if r.Addr == addr {
			return r
		}
	}
	var r *Rcpt
	if len(t.rcpts) == 0 {
		r = &t.first
	} else {
		r = &Rcpt{}
	}
	*r = Rcpt{Addr: addr, answered: make(chan struct{}), final: make(chan struct{}), verify: verify}
	t.rcpts = append(t.rcpts, r)
	switch {
	case t.failed != nil:
		res := *t.failed
		res.Rcpt = addr
		r.resolve(res)
	case t.data || t.aborted:
		r.resolve(Result{Rcpt: addr, Stage: StageRcpt, Err: errors.New("recipient added after DATA")})
	default:
		t.queued = append(t.queued, r)
		t.signal()
	}
	return r
}

// Data starts the DATA phase with body, the message in wire form (package
// wire), which Read returns as it arrives: io.EOF means the whole message
// arrived and is valid, and only then is the final dot sent; any other
// error abandons the transaction without it. If body has a method Ready()
// bool that reports whether a Read would return at once, it is used to send
// what has arrived in as few writes as possible.
func (t *Txn) Data(body io.Reader) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.data || t.aborted {
		return
	}
	t.data, t.body = true, body
	t.signal()
}

// Abort ends a transaction that will not reach DATA (the MTA sent RSET or
// went away). Recipients not yet resolved fail.
func (t *Txn) Abort() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.data || t.aborted {
		return
	}
	t.aborted = true
	t.signal()
}

// Done is closed when the transaction's goroutine has finished and its
// connection is back in the pool or closed.
func (t *Txn) Done() <-chan struct{} { return t.done }

func (t *Txn) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (r *Rcpt) resolveAnswer(res Result) {
	r.atRcpt = res
	close(r.answered)
}

func (r *Rcpt) resolveFinal(res Result) {
	r.res = res
	close(r.final)
}

// resolve ends a recipient that will not be delivered, at RCPT time or
// after.
func (r *Rcpt) resolve(res Result) {
	select {
	case <-r.answered:
	default:
		r.resolveAnswer(res)
	}
	select {
	case <-r.final:
	default:
		r.resolveFinal(res)
	}
}

// failAll ends every unresolved recipient with res and makes later Rcpt
// calls resolve at once.
func (t *Txn) failAll(res Result) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.failed == nil {
		t.failure = res
		t.failed = &t.failure
	}
	for _, r := range t.rcpts {
		x := res
		x.Rcpt = r.Addr
		r.resolve(x)
	}
	t.queued = t.queued[:0]
}

// work waits for something to do: recipients to send, DATA, or the end.
func (t *Txn) work() (queued []*Rcpt, body io.Reader, data, aborted bool) {
	for {
		t.mu.Lock()
		// The session reads queued[:len]; later recipients are
		// appended after it in the same array.
		queued, t.queued = t.queued, t.queued[len(t.queued):]
		body, data, aborted = t.body, t.data, t.aborted
		t.mu.Unlock()
		if len(queued) > 0 || data || aborted {
			return
		}
		select {
		case <-t.wake:
		case <-t.ctx.Done():
			return nil, nil, false, true
		}
	}
}

// run is the transaction's goroutine.
func (t *Txn) run() {
	defer close(t.done)
	defer func() {
		t.srv.mu.Lock()
		t.srv.inflight--
		t.srv.mu.Unlock()
	}()
	if err := t.srv.acquire(t.ctx, t.p.cfg.QueueTimeout); err != nil {
		t.srv.count(StageConnect, err)
		t.failAll(Result{Stage: StageConnect, Err: err})
		return
	}
	defer t.srv.releaseSlot()
	c, reused, fail := t.p.connFor(t.ctx, t.srv, false)
	if fail != nil {
		if fail.Err != nil && t.ctx.Err() == nil {
			t.srv.count(fail.Stage, fail.Err)
		} else if fail.Reply != nil {
			t.srv.count(fail.Stage, nil)
		}
		t.failAll(*fail)
		return
	}
	s := &t.sess
	*s = session{t: t, c: c, reused: reused}
	s.pend, s.sent, s.accepted = s.pendArr[:0], s.sentArr[:0], s.accArr[:0]
	s.stop = context.AfterFunc(t.ctx, func() { s.c.close() })
	s.loop()
}

// pending is a reply we wait for: to MAIL, to a recipient's RCPT, or to
// DATA.
type pending struct {
	kind byte // 'M', 'R', 'D'
	r    *Rcpt
}

// session is a Txn's protocol state on its connection.
type session struct {
	t        *Txn
	c        *conn
	stop     func() bool // unregisters the close-on-cancel hook; false if it ran
	reused   bool        // c came from the pool and no reply was read on it yet
	pend     []pending
	sent     []*Rcpt // RCPTs written, in order (for a replay on a fresh connection)
	dataSent bool
	mailRep  *smtp.SMTPError // MAIL's refusal
	mailOK   bool
	dataOK   bool
	accepted []*Rcpt
	broken   bool // the connection must not be reused
	answered bool // the backend answered something: it is alive

	pendArr [8]pending
	sentArr [4]*Rcpt
	accArr  [4]*Rcpt
}

func (s *session) loop() {
	defer s.finish()
	if err := s.writeMail(); err != nil {
		s.fail(StageMail, err)
		return
	}
	for {
		queued, body, data, aborted := s.t.work()
		var last *Rcpt
		for _, r := range queued {
			if err := s.writeRcpt(r); err != nil {
				s.fail(StageRcpt, err)
				return
			}
			if r.verify {
				last = r
			}
		}
		if data && !aborted {
			if err := s.writeLine("DATA"); err != nil {
				s.fail(StageData, err)
				return
			}
			s.pend = append(s.pend, pending{kind: 'D'})
			s.dataSent = true
		}
		if err := s.flush(); err != nil {
			s.fail(StageRcpt, err)
			return
		}
		if last != nil && !data {
			// Verification: read up to this recipient's reply.
			for !isClosed(last.answered) && len(s.pend) > 0 {
				if !s.readOne() {
					return
				}
			}
		}
		switch {
		case data && !aborted:
			s.dataPhase(body)
			return
		case aborted:
			s.abortPhase()
			return
		}
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (s *session) writeMail() error {
	if bad(s.t.env.From) || bad(s.t.env.AuthID) {
		return fmt.Errorf("%w: reverse-path or AUTH identity contains a control character", ErrLocal)
	}
	b := append(s.c.w.AvailableBuffer(), "MAIL FROM:"...)
	b = AppendPath(b, s.t.env.From)
	if s.c.auth {
		// AUTH=<> unless the MTA gave an identity, and only to a backend
		// that advertised AUTH, as Cyrus does.
		b = append(b, " AUTH="...)
		if s.t.env.AuthID != "" {
			b = append(b, xtext(s.t.env.AuthID)...)
		} else {
			b = append(b, "<>"...)
		}
	}
	if _, err := s.c.w.Write(append(b, "\r\n"...)); err != nil {
		return err
	}
	s.pend = append(s.pend, pending{kind: 'M'})
	return nil
}

func (s *session) writeRcpt(r *Rcpt) error {
	if bad(r.Addr) || r.Addr == "" {
		r.resolve(Result{Rcpt: r.Addr, Stage: StageRcpt, Err: fmt.Errorf("%w: %q", ErrLocal, r.Addr)})
		return nil
	}
	b := append(s.c.w.AvailableBuffer(), "RCPT TO:"...)
	if _, err := s.c.w.Write(append(AppendPath(b, r.Addr), "\r\n"...)); err != nil {
		return err
	}
	s.pend = append(s.pend, pending{kind: 'R', r: r})
	s.sent = append(s.sent, r)
	return nil
}

func (s *session) writeLine(line string) error {
	s.c.w.WriteString(line)
	_, err := s.c.w.WriteString("\r\n")
	return err
}

func (s *session) flush() error {
	s.c.raw.SetWriteDeadline(time.Now().Add(s.t.p.cfg.CommandTimeout))
	return s.c.w.Flush()
}

// readOne reads the reply the oldest pending command waits for and acts on
// it. It returns false once the transaction has failed.
func (s *session) readOne() bool {
	if len(s.pend) == 0 {
		return true
	}
	s.c.raw.SetReadDeadline(time.Now().Add(s.t.p.cfg.CommandTimeout))
	code, rep, err := readCode(s.c.r)
	if err != nil && s.reused && !s.answered && s.t.ctx.Err() == nil && isBroken(err) {
		// A pooled connection the backend closed while it sat idle:
		// nothing was accepted on it, so the commands go again on a
		// fresh connection.
		if !s.replay() {
			return false
		}
		return s.readOne()
	}
	if err != nil {
		s.fail(stageOf(s.pend[0].kind), err)
		return false
	}
	if !s.answered {
		s.answered = true
		if s.reused {
			s.t.p.reuses.Add(1)
		}
		s.t.srv.ok()
	}
	s.reused = false
	p := s.pend[0]
	s.pend = s.pend[1:]
	switch p.kind {
	case 'M':
		return s.onMail(code, rep)
	case 'R':
		return s.onRcpt(p.r, code, rep)
	case 'D':
		return s.onData(code, rep)
	}
	return true
}

// onMail acts on the reply to MAIL.
func (s *session) onMail(code int, rep *smtp.SMTPError) bool {
	if code/100 == 2 {
		s.mailOK = true
		return true
	}
	if !validReply(code) {
		s.fail(StageMail, fmt.Errorf("%w: unexpected MAIL reply %d", ErrProtocol, code))
		return false
	}
	s.mailRep = rep
	s.broken = true
	return true
}

// onRcpt acts on the reply to r's RCPT.
func (s *session) onRcpt(r *Rcpt, code int, rep *smtp.SMTPError) bool {
	switch {
	case !s.mailOK:
		// MAIL was refused; what the backend says to RCPT after that
		// is no news.
		r.resolve(Result{Rcpt: r.Addr, Stage: StageMail, Reply: s.mailRep})
	case code/100 == 2:
		s.accepted = append(s.accepted, r)
		r.resolveAnswer(Result{Rcpt: r.Addr, Stage: StageRcpt})
	case validReply(code):
		s.t.srv.refused.Add(1)
		r.resolve(Result{Rcpt: r.Addr, Stage: StageRcpt, Reply: rep})
	default:
		// Neither acceptance nor refusal: we no longer know what the
		// backend thinks, so nobody waiting can be answered.
		s.fail(StageRcpt, fmt.Errorf("%w: unexpected RCPT reply %d", ErrProtocol, code))
		return false
	}
	return true
}

// onData acts on the reply to DATA (354, or a refusal for everyone).
func (s *session) onData(code int, rep *smtp.SMTPError) bool {
	switch {
	case code == 354 && len(s.accepted) > 0 && s.mailOK:
		s.dataOK = true
	case code == 354:
		// Go-ahead with nobody to deliver to: the only way out
		// without storing an empty message is to hang up.
		s.broken = true
	case validReply(code):
		s.t.srv.refused.Add(uint64(len(s.accepted)))
		for _, r := range s.accepted {
			r.resolve(Result{Rcpt: r.Addr, Stage: StageData, Reply: rep})
		}
		s.accepted = nil
		s.broken = true
	default:
		s.fail(StageData, fmt.Errorf("%w: unexpected DATA reply %d", ErrProtocol, code))
		return false
	}
	return true
}

// replay redoes what was sent on a fresh connection. It is used once, and
// only before any reply was read.
func (s *session) replay() bool {
	s.stop()
	s.c.close()
	s.t.p.broken.Add(1)
	c, _, fail := s.t.p.connFor(s.t.ctx, s.t.srv, true)
	if fail != nil {
		s.t.failAll(*fail)
		s.c, s.broken = nil, true
		return false
	}
	s.c, s.reused = c, false
	s.stop = context.AfterFunc(s.t.ctx, func() { c.close() })
	sent, data := s.sent, s.dataSent
	s.pend, s.sent = nil, nil
	err := s.writeMail()
	for _, r := range sent {
		if err == nil {
			err = s.writeRcpt(r)
		}
	}
	if err == nil && data {
		if err = s.writeLine("DATA"); err == nil {
			s.pend = append(s.pend, pending{kind: 'D'})
		}
	}
	if err == nil {
		err = s.flush()
	}
	if err != nil {
		s.fail(StageMail, err)
		return false
	}
	return true
}

func stageOf(kind byte) Stage {
	switch kind {
	case 'M':
		return StageMail
	case 'R':
		return StageRcpt
	}
	return StageData
}

// fail ends every unresolved recipient with a transport or protocol error
// and marks the connection unusable. A timeout or a lost connection (not
// caused by our own cancellation) counts against the backend's health.
func (s *session) fail(st Stage, err error) {
	s.broken = true
	if ctxErr := s.t.ctx.Err(); ctxErr != nil {
		err = errors.Join(ctxErr, err)
	} else if !errors.Is(err, ErrLocal) && !errors.Is(err, ErrAborted) {
		s.t.srv.fail(fmt.Errorf("%s: %w", st, err))
		s.t.srv.count(st, err)
	}
	s.t.failAll(Result{Stage: st, Err: err})
}

// dataPhase reads the replies up to DATA's, streams the body and reads the
// final replies.
func (s *session) dataPhase(body io.Reader) {
	for len(s.pend) > 0 {
		if !s.readOne() {
			return
		}
	}
	if !s.dataOK {
		// Nobody accepted, or DATA was refused: the recipients were
		// answered above. The backend still holds a transaction, and go-
		// smtp-like servers disagree on RSET semantics: hang up.
		return
	}
	dataStart := time.Now()
	txnEnd := time.Now().Add(s.t.p.cfg.TxnTimeout)
	if err := s.copyBody(body, txnEnd); err != nil {
		if errors.Is(err, ErrAborted) {
			s.abandon(err)
			return
		}
		s.fail(StageData, err)
		return
	}
	// Final replies: one per accepted RCPT, in order (RFC 2033 §4.2).
	for _, r := range s.accepted {
		s.c.raw.SetReadDeadline(earliest(time.Now().Add(s.t.p.cfg.CommandTimeout), txnEnd))
		code, rep, err := readCode(s.c.r)
		if err != nil {
			s.fail(StageData, fmt.Errorf("reading final replies: %w", err))
			return
		}
		if code/100 != 2 && !validReply(code) {
			s.fail(StageData, fmt.Errorf("%w: unexpected final reply %d", ErrProtocol, code))
			return
		}
		res := Result{Rcpt: r.Addr, Stage: StageDone}
		if code != 250 {
			res.Reply = rep
		}
		if code/100 == 2 {
			s.t.srv.delivered.Add(1)
		} else {
			s.t.srv.refused.Add(1)
		}
		r.resolveFinal(res)
	}
	s.accepted = nil
	if f := s.t.p.observe.Load(); f != nil {
		(*f)(s.t.srv.name, time.Since(dataStart))
	}
}

// copyBody sends the message and the final dot. The dot goes only after the
// body reader said io.EOF: the whole message arrived and is valid.
func (s *session) copyBody(body io.Reader, txnEnd time.Time) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	d := s.t.p.cfg.CommandTimeout
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			// Each write must make progress within CommandTimeout, the
			// whole within the transaction deadline.
			s.c.raw.SetWriteDeadline(earliest(time.Now().Add(d), txnEnd))
			if _, err := s.c.w.Write(buf[:n]); err != nil {
				return fmt.Errorf("sending message: %w", err)
			}
			// Cut-through: what has arrived goes out now, unless more (or
			// the end) is already there to go with it in one write.
			if r, ok := body.(interface{ Ready() bool }); !ok || !r.Ready() {
				if err := s.c.w.Flush(); err != nil {
					return fmt.Errorf("sending message: %w", err)
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("%w: %w", ErrAborted, rerr)
		}
	}
	s.c.raw.SetWriteDeadline(earliest(time.Now().Add(d), txnEnd))
	s.c.w.WriteString(".\r\n")
	if err := s.c.w.Flush(); err != nil {
		return fmt.Errorf("sending message: %w", err)
	}
	return nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// abandon ends a transaction whose message did not arrive whole: closing
// the connection before the final dot makes the backend discard it (RFC
// 2033 §4.2). It says nothing about the backend's health.
func (s *session) abandon(err error) {
	s.broken = true
	s.t.failAll(Result{Stage: StageData, Err: err})
}

// abortPhase ends a transaction the front end gave up before DATA.
func (s *session) abortPhase() {
	s.broken = true
	s.t.failAll(Result{Stage: StageRcpt, Err: ErrAborted})
}

// finish returns the connection to the pool if the exchange ended cleanly
// with every reply read, and closes it otherwise.
func (s *session) finish() {
	if s.c == nil {
		return
	}
	stopped := s.stop()
	s.t.failAll(Result{Stage: StageData, Err: errNoReply})
	if !stopped || s.broken || len(s.pend) > 0 || !s.dataOK || !s.c.clean() {
		s.t.p.broken.Add(1)
		if stopped && !s.broken && s.t.ctx.Err() == nil {
			s.c.quit(min(s.t.p.cfg.CommandTimeout, 5*time.Second))
			return
		}
		s.c.close()
		return
	}
	s.t.p.put(s.t.srv, s.c)
}

// errNoReply resolves, when a session ends, recipients nothing else did.
var errNoReply = errors.New("transaction ended without a reply")

// validReply reports whether code is a final negative reply a backend may
// legitimately give (4xx/5xx).
func validReply(code int) bool {
	return code >= 400 && code <= 599
}

// isBroken reports whether err means the peer closed the connection.
func isBroken(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "connection reset") ||
		strings.Contains(err.Error(), "broken pipe")
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// bad reports whether s has a byte that must never reach a command line.
func bad(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}
