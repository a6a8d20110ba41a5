package postfixlab

import (
	"bufio"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Event is one line of Postfix's log that concerns a queued message.
//
// Postfix logs, per message, the Message-ID when cleanup accepts it, one
// line per recipient per delivery attempt, and "removed" when the message
// leaves the queue:
//
//	Dec 01 21:13:13 mta postfix/cleanup[138]: 4jfDBd0CTwz1SCbW: message-id=<x1@t>
//	Dec 01 21:13:13 mta postfix/lmtp[141]: 4jfDBd0CTwz1SCbW: to=<alice@example.org>, relay=127.0.0.1[127.0.0.1]:2424, delay=0.02, delays=0.01/0.01/0/0, dsn=2.1.5, status=sent (250 2.1.5 Ok)
//	Dec 01 21:13:13 mta postfix/qmgr[132]: 4jfDBd0CTwz1SCbW: removed
//
// Lines of no message (start-up, warnings without a queue ID) are not
// events.
type Event struct {
	Time    string // as logged, "Dec 01 21:13:13"
	Program string // "postfix/lmtp"
	PID     int
	QueueID string
	Text    string // everything after "QUEUEID: "

	// MessageID is set on cleanup's message-id= line.
	MessageID string
	// Removed is set on the line that says the message left the queue.
	Removed bool

	// Delivery attempts (a "to=" line with a status).
	To, OrigTo, Relay string
	Delay             float64 // seconds from arrival to the end of this attempt
	DSN               string  // "2.1.5"
	Status            string  // sent, deferred, bounced, expired, undeliverable, deliverable
	Reply             string  // the parenthesised reason, the server's reply for LMTP
}

// Delivery reports whether the event is a delivery attempt's outcome.
func (e Event) Delivery() bool { return e.Status != "" }

// Final reports whether the outcome ends the recipient's life in the queue.
func (e Event) Final() bool {
	switch e.Status {
	case "sent", "bounced", "expired":
		return true
	}
	return false
}

var (
	// "Mon DD HH:MM:SS host program[pid]: rest"; postlogd pads the day
	// with a zero, syslog with a space.
	lineRE = regexp.MustCompile(`^([A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2}(?:\.\d+)?) \S+ ([^\s\[]+)\[(\d+)\]: (.*)$`)
	// Short queue IDs are upper-case hex. Long ones (enable_long_queue_ids)
	// are at least ten base-52 time digits, the separator 'z' and the
	// inode in base 51, which has no 'z'; the digits are 0-9 and the
	// consonants (Postfix's mail_queue.h).
	queueIDRE = regexp.MustCompile(`^([0-9A-F]{6,}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}z[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-y]+|NOQUEUE): (.*)$`)
)

// ParseLog reads Postfix log lines and returns the message events in
// order. It never fails: a line it does not understand is skipped, so a
// new kind of line in a later Postfix cannot break a test's reconciliation
// of the lines it does know.
func ParseLog(r io.Reader) []Event {
	var out []Event
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if e, ok := ParseLine(sc.Text()); ok {
			out = append(out, e)
		}
	}
	return out
}

// ParseLine parses one log line.
func ParseLine(line string) (Event, bool) {
	m := lineRE.FindStringSubmatch(strings.TrimRight(line, "\r"))
	if m == nil {
		return Event{}, false
	}
	q := queueIDRE.FindStringSubmatch(m[4])
	if q == nil {
		return Event{}, false
	}
	pid, _ := strconv.Atoi(m[3])
	e := Event{Time: m[1], Program: m[2], PID: pid, QueueID: q[1], Text: q[2]}
	switch {
	case e.Text == "removed":
		e.Removed = true
	case strings.HasPrefix(e.Text, "message-id="):
		e.MessageID = strings.TrimSpace(strings.TrimPrefix(e.Text, "message-id="))
	case strings.HasPrefix(e.Text, "to=<"):
		parseDelivery(&e)
	}
	return e, true
}

// parseDelivery fills the fields of a "to=<...>, k=v, ..., status=WORD
// (reason)" line. The reason is free text (the server's reply) and may
// hold commas, so the fields are read only up to "status=".
func parseDelivery(e *Event) {
	head, tail, ok := strings.Cut(e.Text, ", status=")
	if !ok {
		return
	}
	status, reason, _ := strings.Cut(tail, " ")
	if status == "" {
		return
	}
	// "to=<a, b>" cannot be split on ", " blindly: read the address to
	// its closing bracket first.
	rest, ok := strings.CutPrefix(head, "to=<")
	if !ok {
		return
	}
	i := strings.Index(rest, ">")
	if i < 0 {
		return
	}
	e.To = rest[:i]
	for _, f := range strings.Split(strings.TrimPrefix(rest[i+1:], ", "), ", ") {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "orig_to":
			e.OrigTo = strings.TrimSuffix(strings.TrimPrefix(v, "<"), ">")
		case "relay":
			e.Relay = v
		case "delay":
			e.Delay, _ = strconv.ParseFloat(v, 64)
		case "dsn":
			e.DSN = v
		}
	}
	e.Status = status
	reason = strings.TrimSpace(reason)
	if strings.HasPrefix(reason, "(") && strings.HasSuffix(reason, ")") {
		reason = reason[1 : len(reason)-1]
	}
	e.Reply = reason
}
