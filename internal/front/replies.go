package front

import (
	"errors"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/wire"
)

// Every reply lmtpgate gives an MTA is built in this file. go-smtp turns any
// error that is not an *smtp.SMTPError into a permanent 554, so nothing else
// may reach it; and the rule "5xx only when a mailbox surely does not exist
// or the input is surely invalid" is easiest to keep when all codes are in
// one place. Texts follow Cyrus's wording where MTAs or admins may know it;
// a recipient's final reply names its mailbox and backend and carries the
// session id (as Cyrus's SESSIONID=<…>), so that an MTA's log says where
// each copy went; the details of a failure go to our log.

func reply(code int, e1, e2, e3 int, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{e1, e2, e3}, Message: msg}
}

var (
	// Commands.
	replyNestedMail = reply(503, 5, 5, 1, "Nested MAIL command")
	replyBadSender  = reply(501, 5, 1, 7, "Bad sender address syntax")
	replyBadRcpt    = reply(501, 5, 1, 3, "Bad recipient address syntax")
	replyShutdown   = reply(421, 4, 3, 2, "Service shutting down, try again later")

	// RCPT time.
	replyUnknown = reply(550, 5, 1, 1, "Mailbox unknown")
	// A lookup that could not be made is never "user unknown": Cyrus's
	// proxy answered 550 when its MUPDATE server was unreachable
	// (cyrus-imapd issue 5593), bouncing mail for mailboxes that exist.
	replyLookupFailed = reply(451, 4, 4, 3, "Mailbox lookup temporarily unavailable, try again later")
	replyReserved     = reply(451, 4, 2, 1, "Mailbox is currently reserved")
	replyMoving       = reply(451, 4, 2, 1, "Mailbox has been moved to another server")
	replyNoBackend    = reply(451, 4, 3, 5, "Mailbox has no backend server")
	replyPermission   = reply(550, 5, 7, 1, "Permission denied")
	replySyntax       = reply(501, 5, 5, 4, "Syntax error in parameters")

	// After DATA (or at RCPT for a backend out of service).
	replyReadFailed  = reply(451, 4, 3, 0, "Error reading message, try again later")
	replyUnreachable = reply(451, 4, 4, 3, "Server(s) unavailable to complete operation")
	replyBusy        = reply(451, 4, 4, 5, "Backend busy, try again later")
	replyRetry       = reply(451, 4, 3, 0, "Retry operation")
	replyOverQuota   = reply(452, 4, 2, 2, "Over quota")
	replyOverQuotaP  = reply(552, 5, 2, 2, "Over quota")
	replyLongLine    = reply(554, 5, 6, 0, "Message contains a line longer than 998 octets (RFC 5322 2.1.1)")
)

// withContext returns a copy of rep whose text also names the backend (if
// any) and the session, for the MTA's log.
func withContext(rep *smtp.SMTPError, backendName, session string) *smtp.SMTPError {
	var b strings.Builder
	b.WriteString(rep.Message)
	if backendName != "" {
		b.WriteString(" (on ")
		b.WriteString(backendName)
		b.WriteString(")")
	}
	b.WriteString(" SESSIONID=<")
	b.WriteString(session)
	b.WriteString(">")
	return &smtp.SMTPError{Code: rep.Code, EnhancedCode: rep.EnhancedCode, Message: b.String()}
}

// deliveredReply is the final reply for a recipient its backend accepted:
// 2.1.5, "destination address valid" and delivered (RFC 3463), not go-smtp's
// "OK: queued", which reads in an MTA's log as if the mail were still
// queued somewhere.
func deliveredReply(mailbox, backendName, session string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 1, 5},
		Message: "Delivered to " + sanitizeText(mailbox) + " on " + backendName + " SESSIONID=<" + session + ">"}
}

// backendReply maps one backend result to the reply for that recipient, as
// a Cyrus 3.6 frontend does (imap/lmtpengine.c), with deliberate changes:
// any backend answer whose meaning is not certain becomes a temporary
// failure, so the MTA keeps the message and retries; and where the
// backend's own code is passed on, so is its text.
func backendReply(r backend.Result, overQuotaPerm bool) *smtp.SMTPError {
	if r.Err != nil {
		switch {
		case errors.Is(r.Err, backend.ErrBusy):
			return replyBusy
		case r.Stage <= backend.StageAuth:
			return replyUnreachable
		}
		// The connection broke or timed out mid-transaction: the backend
		// may or may not have the message. A duplicate is better than a
		// loss, so the MTA retries.
		return replyRetry
	}
	rep := r.Reply
	if rep == nil {
		// Not delivered, no error, no reply: cannot happen, but if it
		// did, only a retry is safe.
		return replyRetry
	}
	if r.Stage <= backend.StageAuth {
		// A refusal while connecting or authenticating is about us (our
		// credentials) or the backend's state, never the recipient.
		return replyUnreachable
	}
	ec := rep.EnhancedCode
	text := sanitizeText(rep.Message)
	own := func(code int, e smtp.EnhancedCode) *smtp.SMTPError {
		if text == "" {
			text = "Refused by the backend"
		}
		return &smtp.SMTPError{Code: code, EnhancedCode: e, Message: text}
	}
	switch {
	case isQuota(rep):
		if overQuotaPerm {
			return replyOverQuotaP
		}
		return replyOverQuota
	case rep.Code == 550 && ec == smtp.EnhancedCode{5, 1, 1}:
		// The backend does not know a mailbox our routing said it holds:
		// our data is stale (a rename or move in flight). Temporary.
		return replyRetry
	case r.Stage == backend.StageRcpt && rep.Code == 550 && ec[0] == 5 && ec[1] == 7:
		return own(550, smtp.EnhancedCode{5, 7, 1})
	case r.Stage == backend.StageDone && rep.Code == 550:
		// Cyrus passes a 550 after DATA through (e.g. a Sieve reject).
		return own(550, enhancedOr(ec, smtp.EnhancedCode{5, 0, 0}))
	case rep.Code == 554:
		// The content is refused (Cyrus: "Message contains NUL
		// characters", "bare newlines"): the same message fails the same
		// way every time.
		return own(554, enhancedOr(ec, smtp.EnhancedCode{5, 6, 0}))
	case rep.Code/100 == 4 && ec[0] == 4 && ec[1] == 4:
		return replyUnreachable
	case rep.Code/100 == 4:
		// A temporary refusal is always safe to pass on as it is.
		return own(rep.Code, enhancedOr(ec, smtp.EnhancedCode{4, 0, 0}))
	}
	// A permanent refusal we have no rule for: the mail may be lost for
	// the wrong reason; let the MTA keep it and try again.
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Retry operation (the backend said: " + backend.FormatReply(rep) + ")"}
}

func enhancedOr(ec, def smtp.EnhancedCode) smtp.EnhancedCode {
	if ec == smtp.EnhancedCodeNotSet || ec == smtp.NoEnhancedCode || ec[0] != def[0] {
		return def
	}
	return ec
}

func isQuota(rep *smtp.SMTPError) bool {
	ec := rep.EnhancedCode
	return (rep.Code == 452 || rep.Code == 552) && (ec == smtp.EnhancedCode{4, 2, 2} || ec == smtp.EnhancedCode{5, 2, 2} || ec == smtp.NoEnhancedCode || ec == smtp.EnhancedCodeNotSet)
}

// spoolReply is the answer for every recipient when the message could not
// be received whole, or was refused as it came.
func spoolReply(err error) *smtp.SMTPError {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se == smtp.ErrDataTooLarge {
		return se
	}
	// The same message would fail the same way on every retry.
	if errors.Is(err, wire.ErrLongLine) || errors.Is(err, smtp.ErrTooLongLine) {
		return replyLongLine
	}
	return replyReadFailed
}

// sanitizeText makes a backend's or a mailbox's text safe to put in one
// reply line: control characters become spaces, line breaks join the lines,
// and it is cut at 300 octets.
func sanitizeText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// code renders a reply's code for the log: 250 for nil.
func code(e *smtp.SMTPError) int {
	if e == nil {
		return 250
	}
	return e.Code
}
