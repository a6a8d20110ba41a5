package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/address"
	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/journal"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/spool"
	"github.com/lmtpgate/lmtpgate/internal/wire"
)

// session is one MTA connection. A transaction (MAIL to the end of DATA or
// RSET) holds one Runtime throughout, and one backend transaction per
// backend its recipients live on.
type session struct {
	srv    *Server
	conn   *smtp.Conn
	mc     *mtaConn
	id     string
	helo   string
	remote string

	rt     *Runtime // held (Acquire) from MAIL to the transaction's end
	inTxn  bool
	from   string
	authID string // MAIL FROM AUTH= identity, "" if none, <> or untrusted
	rcpts  []*recipient
	txns   map[string]*backend.Txn // by server string
}

// recipient is one accepted RCPT.
type recipient struct {
	to      string // as given in RCPT, the key go-smtp's status collector uses
	addr    address.Recipient
	entry   lookup.Entry
	source  string
	started time.Time
	h       *backend.Rcpt
}

var _ smtp.LMTPSession = (*session)(nil)

func (s *session) Reset() { s.endTxn() }

func (s *session) Logout() error {
	s.endTxn()
	s.srv.endSession(s)
	return nil
}

// endTxn ends the transaction: backend transactions that never reached
// DATA are abandoned, and the Runtime is released.
func (s *session) endTxn() {
	if s.mc != nil {
		s.mc.setDataMode(false)
		s.mc.inTxn.Store(false)
	}
	for _, t := range s.txns {
		t.Abort()
	}
	clear(s.txns)
	if s.rt != nil {
		s.rt.Release()
	}
	s.rt = nil
	clear(s.rcpts)
	s.rcpts = s.rcpts[:0]
	s.from, s.authID = "", ""
	s.inTxn = false
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.srv.draining.Load() {
		return replyShutdown
	}
	if s.inTxn {
		// RFC 5321 §4.1.4: MAIL starts a transaction; inside one it is a
		// sequence error, as Cyrus answers, never a silent restart.
		return replyNestedMail
	}
	if s.mc != nil {
		s.mc.setDataMode(false)
	}
	// A control character (NUL included) can never be delivered: say so
	// now, with a permanent reply, rather than hand it to a backend whose
	// refusal would look temporary and be retried for days.
	if hasControl(from) || !validDomain(from) {
		return replyBadSender
	}
	authID := ""
	if opts != nil && opts.Auth != nil && *opts.Auth != "" && *opts.Auth != "<>" && s.mc != nil && s.mc.trusted {
		if hasControl(*opts.Auth) {
			return replyBadSender
		}
		authID = *opts.Auth
	}
	s.inTxn = true
	if s.mc != nil {
		s.mc.inTxn.Store(true)
	}
	s.rt = s.srv.holder.Acquire()
	s.from, s.authID = from, authID
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	start := time.Now()
	rt := s.rt
	if rt == nil {
		// go-smtp enforces MAIL before RCPT; this is only a guard.
		return replySyntax
	}
	if hasControl(to) || !validDomain(to) {
		s.logOutcome(&recipient{to: to, started: start}, replyBadRcpt, slog.LevelInfo, "err", "control character or bad domain in the address")
		return replyBadRcpt
	}
	v := Check(s.srv.deliverCtx, rt, to, s.authID, false)
	rc := &recipient{to: to, addr: v.Recipient, entry: v.Result.Entry, source: v.Result.Source, started: start}
	if v.Reply != nil {
		var attrs []any
		if v.Err != nil {
			attrs = append(attrs, "err", v.Err.Error())
		}
		level := slog.LevelInfo
		if v.Reply.Code/100 == 4 {
			level = journal.LevelNotice
		}
		s.logOutcome(rc, v.Reply, level, attrs...)
		return v.Reply
	}
	server := v.Result.Entry.Server
	if err := rt.Backends.Available(server); err != nil {
		// The backend is out of service, or its server string is
		// unusable: this recipient waits, nobody else does.
		level := journal.LevelNotice
		if errors.Is(err, backend.ErrNotAllowed) {
			level = slog.LevelError
		}
		rep := withContext(replyUnreachable, server, s.id)
		s.logOutcome(rc, rep, level, "err", err.Error())
		return rep
	}
	t := s.txns[server]
	if t == nil {
		if s.txns == nil {
			s.txns = map[string]*backend.Txn{}
		}
		t = rt.Backends.Begin(s.srv.deliverCtx, server, backend.Envelope{From: s.from, AuthID: s.authID})
		s.txns[server] = t
	}
	rc.h = t.Rcpt(v.Recipient.Forward, rt.VerifyRcpt)
	if rt.VerifyRcpt {
		if res := rc.h.Answer(s.srv.deliverCtx); res.Err != nil || res.Reply != nil || res.Stage != backend.StageRcpt {
			rep := withContext(backendReply(res, rt.OverQuotaPermFailure), server, s.id)
			s.logOutcome(rc, rep, levelFor(rep), resultAttrs(res)...)
			return rep
		}
	}
	s.rcpts = append(s.rcpts, rc)
	if s.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		s.srv.log.Debug("rcpt accepted", "session", s.id, "rcpt", to, "mailbox", v.Recipient.Mailbox, "backend", server, "source", v.Result.Source)
	}
	return nil
}

// Verdict is what lmtpgate answers at RCPT time for one address.
type Verdict struct {
	Recipient address.Recipient
	Result    lookup.Result
	// Reply is nil when the recipient is accepted.
	Reply *smtp.SMTPError
	// Err is the parse or lookup error behind a refusal, for the log.
	Err error
}

// Check decides the RCPT-time answer for rcpt under rt from the directory,
// exactly as a session does; `lmtpgate resolve` uses it too, so the
// diagnostic never disagrees with the daemon. authID is the MTA's AUTH=
// identity ("" for none), which shared folders check for the 'p' right.
func Check(ctx context.Context, rt *Runtime, rcpt, authID string, trace bool) Verdict {
	var v Verdict
	addr, err := address.Parse(rt.Address, rcpt)
	if err != nil {
		var ae *address.Error
		v.Reply, v.Err = replySyntax, err
		if errors.As(err, &ae) && ae.NoMailbox {
			v.Reply = replyUnknown
		}
		return v
	}
	v.Recipient = addr
	if addr.Shared && isDeleted(addr.Mailbox, rt.DeletedPrefix) {
		// A delayed-delete copy ("+DELETED/bb/old/5F00AA11@...") is listed
		// like any mailbox, and may even grant "anyone p"; Cyrus's backend
		// refuses delivery to it for ever. It surely is no mailbox to
		// deliver to, so it is unknown, not deferred.
		v.Reply, v.Err = replyUnknown, errors.New("a deleted mailbox (under "+rt.DeletedPrefix+")")
		return v
	}
	v.Result = rt.Chain.Resolve(ctx, addr.Mailbox, trace)
	v.Err = v.Result.Err
	switch v.Result.Status {
	case lookup.NotFound:
		v.Reply = replyUnknown
	case lookup.Unavailable:
		v.Reply = replyLookupFailed
	case lookup.Found:
		switch e := v.Result.Entry; {
		case e.State == lookup.Reserved:
			v.Reply = replyReserved
		case e.State == lookup.Moving:
			v.Reply = replyMoving
		case e.Server == "":
			v.Reply = replyNoBackend
		case addr.Shared:
			v.Reply = sharedRights(e, authID)
		}
	}
	return v
}

// isDeleted reports whether the internal name lies under Cyrus's
// deletedprefix, with or without a "domain!" in front.
func isDeleted(mailbox, prefix string) bool {
	if prefix == "" {
		return false
	}
	if i := strings.IndexByte(mailbox, '!'); i >= 0 {
		mailbox = mailbox[i+1:]
	}
	return strings.HasPrefix(mailbox, prefix+".")
}

// sharedRights applies Cyrus's RCPT-time check for shared folders: the
// poster (the MTA's AUTH= identity, else anonymous) needs the 'p' right;
// without it but with 'l' the answer is "permission denied", without both
// the mailbox is treated as unknown, so its existence does not leak.
func sharedRights(e lookup.Entry, id string) *smtp.SMTPError {
	if id == "" {
		id = "anonymous"
	}
	rights := lookup.Rights(e.ACL, id)
	switch {
	case strings.ContainsRune(rights, 'p'):
		return nil
	case strings.ContainsRune(rights, 'l'):
		return replyPermission
	}
	return replyUnknown
}

func (s *session) Data(r io.Reader) error {
	// go-smtp calls LMTPData in LMTP mode; Data exists to satisfy
	// smtp.Session.
	return replyRetry
}

// LMTPData receives the message and streams it to every backend at once:
// each backend transaction reads the spool while it fills. Only when the
// whole message has arrived, and was valid, do the backends get the final
// dot; otherwise they are abandoned without it and nothing is stored.
func (s *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	rt := s.rt
	if s.mc != nil {
		s.mc.setDataMode(true)
	}
	s.srv.ntxn.Add(1)
	sp := spool.New(rt.SpoolMemoryLimit, rt.SpoolDir)
	var txns []*backend.Txn
	for _, t := range s.txns {
		txns = append(txns, t)
		t.Data(sp.Reader(s.srv.deliverCtx))
	}
	defer func() {
		// The spool may be released only when no backend reads it.
		for _, t := range txns {
			<-t.Done()
		}
		sp.Close()
	}()
	in := r
	if s.mc != nil {
		// Past go-smtp's octet-at-a-time reader when it is safe (DATA,
		// nothing of the message in go-smtp's buffer); BDAT and the
		// rare other case stay on go-smtp's.
		if raw := s.mc.rawData(s.srv.opts.Config.MaxMessageSize, s.srv.opts.Config.ReadTimeout); raw != nil {
			in = raw
			s.srv.nraw.Add(1)
		}
	}
	size, err := s.receive(in, sp)
	s.srv.nbytes.Add(uint64(size))
	if err != nil {
		sp.Fail(err)
		rep := spoolReply(err)
		for _, rc := range s.rcpts {
			s.logOutcome(rc, withContext(rep, rc.entry.Server, s.id), slog.LevelWarn, "size", size, "err", err.Error())
			status.SetStatus(rc.to, withContext(rep, "", s.id))
		}
		return nil
	}
	sp.Finish()
	// Each recipient's reply is written by go-smtp, in RCPT order, as soon
	// as it is known.
	for _, rc := range s.rcpts {
		res := rc.h.Wait(s.srv.deliverCtx)
		var rep *smtp.SMTPError
		attrs := append([]any{"size", size}, resultAttrs(res)...)
		if res.Delivered() {
			rep = deliveredReply(rc.addr.Mailbox, rc.entry.Server, s.id)
		} else {
			rep = withContext(backendReply(res, rt.OverQuotaPermFailure), rc.entry.Server, s.id)
		}
		s.logOutcome(rc, rep, levelFor(rep), attrs...)
		status.SetStatus(rc.to, rep)
	}
	return nil
}

// receive reads the message from the MTA into the spool in wire form, with
// the trace headers in front. It reads to the end even after the message
// is refused (a line over 998 octets), so that the MTA hears the refusal
// instead of a reset connection. It returns the message's size and why it
// cannot be delivered, if so.
func (s *session) receive(r io.Reader, sp *spool.Spool) (int64, error) {
	bp, op := bufPool.Get().(*[]byte), bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	defer func() { bufPool.Put(op) }()
	buf := *bp
	out := s.traceHeaders((*op)[:0])
	var enc wire.Encoder
	var size int64
	var refused, werr error
	for {
		n, rerr := r.Read(buf)
		size += int64(n)
		if n > 0 && refused == nil {
			var eerr error
			out, eerr = enc.Encode(out, buf[:n])
			if eerr != nil {
				refused = eerr
			} else if _, werr = sp.Write(out); werr != nil {
				refused = werr
			}
			out = out[:0]
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			*op = out[:cap(out)]
			return size, rerr
		}
	}
	*op = out[:cap(out)]
	if refused != nil {
		return size, refused
	}
	// go-smtp's BDAT chunk reader takes an early EOF for the end of the
	// chunk: if the client is gone, the message is surely cut short.
	if s.mc != nil {
		if err := s.mc.clientEnded(); err != nil {
			return size, fmt.Errorf("connection closed before the end of the message: %w", err)
		}
	}
	out, err := enc.Close(out)
	if err == nil && len(out) > 0 {
		_, err = sp.Write(out)
	}
	return size, err
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// traceHeaders are prepended to the message as Cyrus's frontend does, so a
// message stored through lmtpgate looks as it would through Cyrus:
// Return-Path (RFC 5321 §4.4) and a Received line naming this hop.
func (s *session) traceHeaders(b []byte) []byte {
	b = append(b, "Return-Path: "...)
	b = backend.AppendPath(b, s.from)
	b = append(b, "\r\nReceived: from "...)
	b = appendSanitized(b, s.helo)
	b = append(b, " ("...)
	remote := s.remote
	if remote == "" || remote == "@" {
		remote = "local"
	}
	b = appendSanitized(b, remote)
	b = append(b, ")\r\n\tby "...)
	b = append(b, s.srv.opts.Hostname...)
	b = append(b, " (lmtpgate) with LMTP id "...)
	b = append(b, s.id...)
	b = append(b, ";\r\n\t"...)
	b = time.Now().AppendFormat(b, time.RFC1123Z)
	return append(b, "\r\n"...)
}

// appendSanitized appends s with every byte that could break the header
// (controls, spaces, parentheses, 8-bit) replaced by '_'; "unknown" for "".
func appendSanitized(b []byte, s string) []byte {
	if s == "" {
		return append(b, "unknown"...)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '(' || c == ')' {
			c = '_'
		}
		b = append(b, c)
	}
	return b
}

// hasControl reports whether an address has a control character (NUL, CR,
// LF, ...) that no mailbox can contain and no command line may carry.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

// validDomain checks the part after the last '@' of an address as go-smtp
// parsed it (which stops only at space, tab and '>'): a host name, an
// address literal, or UTF-8.
func validDomain(addr string) bool {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return true
	}
	for _, c := range []byte(addr[i+1:]) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c >= 0x80:
		case strings.IndexByte("-._[]:", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// levelFor is the log level of a recipient's outcome: deliveries and
// refusals are routine (info), every deferral is at least notice.
func levelFor(rep *smtp.SMTPError) slog.Level {
	if rep != nil && rep.Code/100 == 4 {
		return journal.LevelNotice
	}
	return slog.LevelInfo
}

func resultAttrs(r backend.Result) []any {
	var attrs []any
	if r.Err != nil {
		attrs = append(attrs, "err", r.Err.Error())
	} else if r.Reply != nil && !r.Delivered() {
		attrs = append(attrs, "backend_reply", backend.FormatReply(r.Reply))
	}
	return attrs
}

// logOutcome writes the one line per recipient outcome, with the fixed keys
// that journald fields and operators' queries rely on, and a message a
// person can read in `journalctl -f`.
func (s *session) logOutcome(rc *recipient, rep *smtp.SMTPError, level slog.Level, extra ...any) {
	c := code(rep)
	outcome := "delivered "
	switch {
	case c < 300:
		s.srv.ndelivered.Add(1)
	case c < 500:
		s.srv.ndeferred.Add(1)
		outcome = "deferred "
	default:
		s.srv.nrejected.Add(1)
		outcome = "rejected "
	}
	dur := time.Since(rc.started)
	if h := s.srv.hooks.Load(); h.Recipient != nil {
		ec := smtp.EnhancedCode{2, 1, 5}
		if rep != nil {
			ec = rep.EnhancedCode
		}
		h.Recipient(c, ec, rc.entry.Server, dur)
	}
	if !s.srv.log.Enabled(context.Background(), level) {
		return
	}
	var msg strings.Builder
	msg.WriteString(outcome)
	msg.WriteString(rc.to)
	if rc.addr.Mailbox != "" {
		msg.WriteString(" → ")
		msg.WriteString(rc.addr.Mailbox)
	}
	if rc.entry.Server != "" {
		msg.WriteString(" on ")
		msg.WriteString(rc.entry.Server)
	}
	if rep != nil && c >= 300 {
		msg.WriteString(": ")
		msg.WriteString(backend.FormatReply(&smtp.SMTPError{Code: rep.Code, EnhancedCode: rep.EnhancedCode, Message: cutSession(rep.Message)}))
	}
	mode := ""
	if s.rt != nil {
		mode = s.rt.Mode
	}
	attrs := append([]any{
		"session", s.id, "from", s.from, "rcpt", rc.to, "mailbox", rc.addr.Mailbox, "backend", rc.entry.Server, "source", rc.source,
		"code", c, "mode", mode, "dur_ms", dur.Milliseconds(),
	}, extra...)
	s.srv.log.Log(context.Background(), level, msg.String(), attrs...)
}

// cutSession drops the " SESSIONID=<…>" a reply text ends with; the log
// line has the session in a field of its own.
func cutSession(msg string) string {
	if i := strings.LastIndex(msg, " SESSIONID=<"); i >= 0 {
		return msg[:i]
	}
	return msg
}
