package front

import (
	"errors"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/backend"
)

// Every reply lmtpgate gives an MTA is built in this file. go-smtp turns any
// error that is not an *smtp.SMTPError into a permanent 554, so nothing else
// may reach it; and the rule "5xx only when a mailbox surely does not exist"
// is easiest to keep when all codes are in one place. Client texts are
// generic (they follow Cyrus's wording where MTAs or admins may know it);
// the details go to the log.

func reply(code int, e1, e2, e3 int, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{e1, e2, e3}, Message: msg}
}

var (
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
	replyShutdown     = reply(421, 4, 3, 2, "Service shutting down, try again later")

	// After DATA.
	replyReadFailed  = reply(451, 4, 3, 0, "Error reading message, try again later")
	replyUnreachable = reply(451, 4, 4, 3, "Server(s) unavailable to complete operation")
	replyRetry       = reply(451, 4, 3, 0, "Retry operation")
	replyOverQuota   = reply(452, 4, 2, 2, "Over quota")
	replyOverQuotaP  = reply(552, 5, 2, 2, "Over quota")
	replyStorage     = reply(451, 4, 3, 1, "Mail system storage has been exceeded")
	replyBadContent  = reply(554, 5, 6, 0, "Message contains invalid header")
	replyLongLine    = reply(554, 5, 6, 0, "Message contains an overlong line")
)

// dataReply maps one backend result to the reply for that recipient, as a
// Cyrus 3.6 frontend does (cyrus-interop §8.5), with one deliberate change:
// any backend answer whose meaning is not certain becomes a temporary
// failure, so the MTA keeps the message and retries.
func dataReply(r backend.Result, overQuotaPerm bool) *smtp.SMTPError {
	if r.Delivered() {
		return nil
	}
	if r.Err != nil {
		if r.Stage <= backend.StageAuth {
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
		// An AUTH refusal is our misconfiguration, never the recipient's
		// fault.
		return replyUnreachable
	}
	ec := rep.EnhancedCode
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
		return replyPermission
	case r.Stage == backend.StageDone && rep.Code == 550:
		// Cyrus passes a 550 after DATA through (e.g. a Sieve reject).
		return &smtp.SMTPError{Code: 550, EnhancedCode: ec, Message: rep.Message}
	case rep.Code == 554:
		return replyBadContent
	case rep.Code == 451 && ec == smtp.EnhancedCode{4, 2, 1}:
		return replyMoving
	case rep.Code == 451 && ec == smtp.EnhancedCode{4, 3, 1}:
		return replyStorage
	case rep.Code/100 == 4 && ec[0] == 4 && ec[1] == 4:
		return replyUnreachable
	}
	return replyRetry
}

func isQuota(rep *smtp.SMTPError) bool {
	ec := rep.EnhancedCode
	return (rep.Code == 452 || rep.Code == 552) && (ec == smtp.EnhancedCode{4, 2, 2} || ec == smtp.EnhancedCode{5, 2, 2} || ec == smtp.NoEnhancedCode || ec == smtp.EnhancedCode{0, 0, 0})
}

// spoolReply is the answer for every recipient when the message could not be
// received whole.
func spoolReply(err error) *smtp.SMTPError {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se == smtp.ErrDataTooLarge {
		return se
	}
	// The same message would fail the same way on every retry.
	if errors.Is(err, smtp.ErrTooLongLine) {
		return replyLongLine
	}
	return replyReadFailed
}

// code renders a reply for the log: "250", "451 4.4.3".
func code(e *smtp.SMTPError) int {
	if e == nil {
		return 250
	}
	return e.Code
}
