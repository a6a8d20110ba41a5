package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/address"
	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/spool"
)

// session is one MTA connection. A transaction (MAIL to the end of DATA or
// RSET) holds one Runtime throughout.
type session struct {
	srv    *Server
	conn   *smtp.Conn
	id     string
	helo   string
	remote string
	busy   atomic.Bool // inside a transaction

	rt      *Runtime
	release func()
	from    string
	authID  string // MAIL FROM AUTH= identity, "" if none or <>
	rcpts   []recipient
}

type recipient struct {
	to      string // as given in RCPT, the key go-smtp's status collector uses
	addr    address.Recipient
	entry   lookup.Entry
	source  string
	started time.Time
}

var _ smtp.LMTPSession = (*session)(nil)

func (s *session) Reset() { s.endTxn() }

func (s *session) Logout() error {
	s.endTxn()
	s.srv.endSession(s)
	return nil
}

func (s *session) endTxn() {
	if s.release != nil {
		s.release()
		s.release = nil
	}
	s.rt = nil
	s.rcpts = nil
	s.from, s.authID = "", ""
	s.busy.Store(false)
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.srv.draining.Load() {
		return replyShutdown
	}
	s.endTxn()
	s.busy.Store(true)
	s.rt, s.release = s.srv.holder.Acquire()
	s.from = from
	if opts != nil && opts.Auth != nil && *opts.Auth != "" && *opts.Auth != "<>" {
		s.authID = *opts.Auth
	}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	start := time.Now()
	rt := s.rt
	if rt == nil {
		// go-smtp enforces MAIL before RCPT; this is only a guard.
		return replySyntax
	}
	v := Check(s.srv.deliverCtx, rt, to, s.authID, false)
	if v.Reply != nil {
		attrs := []any{}
		if v.Err != nil {
			attrs = append(attrs, "err", v.Err.Error())
		}
		s.logRcpt(slog.LevelInfo, to, v.Recipient.Mailbox, v.Result.Entry.Server, v.Result.Source, v.Reply, start, attrs...)
		return v.Reply
	}
	s.rcpts = append(s.rcpts, recipient{to: to, addr: v.Recipient, entry: v.Result.Entry, source: v.Result.Source, started: start})
	if s.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		s.srv.log.Debug("rcpt accepted", "session", s.id, "rcpt", to, "mailbox", v.Recipient.Mailbox, "backend", v.Result.Entry.Server, "source", v.Result.Source)
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

// Check decides the RCPT-time answer for rcpt under rt, exactly as a
// session does; `lmtpgate resolve` uses it too, so the diagnostic never
// disagrees with the daemon. authID is the MTA's AUTH= identity ("" for
// none), which shared folders check for the 'p' right.
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

func (s *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	defer s.endTxn()
	rt := s.rt
	s.srv.ntxn.Add(1)
	msg, err := spool.Read(s.traceHeaders(), r, rt.SpoolMemoryLimit, rt.SpoolDir)
	if err != nil {
		rep := spoolReply(err)
		for _, rc := range s.rcpts {
			s.logRcpt(slog.LevelWarn, rc.to, rc.addr.Mailbox, rc.entry.Server, rc.source, rep, rc.started, "err", err.Error())
		}
		return rep
	}
	defer msg.Close()

	// Group the recipients by backend; one transaction per backend, all
	// backends at once.
	type group struct {
		server string
		idx    []int
	}
	var groups []*group
	byServer := map[string]*group{}
	for i, rc := range s.rcpts {
		g := byServer[rc.entry.Server]
		if g == nil {
			g = &group{server: rc.entry.Server}
			byServer[rc.entry.Server] = g
			groups = append(groups, g)
		}
		g.idx = append(g.idx, i)
	}
	env := backend.Envelope{From: s.from, AuthID: s.authID}
	results := make([]backend.Result, len(s.rcpts))
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fwd := make([]string, len(g.idx))
			for j, i := range g.idx {
				fwd[j] = s.rcpts[i].addr.Forward
			}
			res := rt.Deliver.Deliver(s.srv.deliverCtx, g.server, env, fwd, msg)
			for j, i := range g.idx {
				if j < len(res) {
					results[i] = res[j]
				} else {
					results[i] = backend.Result{Rcpt: fwd[j], Stage: backend.StageData, Err: errors.New("backend returned no result")}
				}
			}
		}()
	}
	wg.Wait()
	for i, rc := range s.rcpts {
		r := results[i]
		rep := dataReply(r, rt.OverQuotaPermFailure)
		attrs := []any{"size", msg.Size()}
		if r.Err != nil {
			attrs = append(attrs, "err", r.Err.Error())
		} else if r.Reply != nil && !r.Delivered() {
			attrs = append(attrs, "backend_reply", fmt.Sprintf("%d %d.%d.%d %s", r.Reply.Code, r.Reply.EnhancedCode[0], r.Reply.EnhancedCode[1], r.Reply.EnhancedCode[2], r.Reply.Message))
		}
		s.logRcpt(slog.LevelInfo, rc.to, rc.addr.Mailbox, rc.entry.Server, rc.source, rep, rc.started, attrs...)
		if rep == nil {
			status.SetStatus(rc.to, nil)
		} else {
			status.SetStatus(rc.to, rep)
		}
	}
	return nil
}

// traceHeaders are prepended to the message as Cyrus's frontend does, so a
// message stored through lmtpgate looks as it would through Cyrus:
// Return-Path (RFC 5321 §4.4) and a Received line naming this hop.
func (s *session) traceHeaders() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "Return-Path: <%s>\r\n", s.from)
	remote := s.remote
	if remote == "" || remote == "@" {
		remote = "local"
	}
	fmt.Fprintf(&b, "Received: from %s (%s)\r\n\tby %s (lmtpgate) with LMTP id %s;\r\n\t%s\r\n",
		sanitize(s.helo), remote, s.srv.opts.Hostname, s.id, time.Now().Format(time.RFC1123Z))
	return []byte(b.String())
}

func sanitize(s string) string {
	if s == "" {
		return "unknown"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x21 || r > 0x7e || r == '(' || r == ')' {
			return '_'
		}
		return r
	}, s)
}

// logRcpt writes the one line per recipient outcome, with the fixed keys
// that journald fields and operators' queries rely on.
func (s *session) logRcpt(level slog.Level, rcpt, mailbox, server, source string, rep *smtp.SMTPError, start time.Time, extra ...any) {
	c := code(rep)
	switch {
	case c < 300:
		s.srv.ndelivered.Add(1)
	case c < 500:
		s.srv.ntemp.Add(1)
	default:
		s.srv.nperm.Add(1)
	}
	msg := "delivered"
	if rep != nil {
		msg = "not delivered: " + rep.Message
		if c >= 500 {
			msg = "rejected: " + rep.Message
		}
	}
	mode := ""
	if s.rt != nil {
		mode = s.rt.Mode
	}
	attrs := append([]any{
		"session", s.id, "from", s.from, "rcpt", rcpt, "mailbox", mailbox, "backend", server, "source", source,
		"code", c, "mode", mode, "dur_ms", time.Since(start).Milliseconds(),
	}, extra...)
	s.srv.log.Log(context.Background(), level, msg, attrs...)
}
