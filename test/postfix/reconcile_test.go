package postfix

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
	"github.com/lmtpgate/lmtpgate/internal/postfixlab"
	"github.com/lmtpgate/lmtpgate/internal/sandbox"
	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

// sender is the envelope sender of every test message; its domain is
// discarded by the test Postfix, so bounces go nowhere.
const sender = "sender@sender.test"

var mailSeq atomic.Int64

// outcome is what a recipient must end with.
type outcome int

const (
	// delivered: Postfix logs status=sent and the mailbox holds the
	// message, unaltered, exactly once (more only in a duplicate window).
	delivered outcome = iota
	// refused: Postfix logs status=bounced and nothing is stored.
	refused
)

// rcpt is one recipient of a test message and what it must come to.
type rcpt struct {
	addr string
	want outcome
	// text, for refused, must appear in the reply Postfix logged.
	text string
}

// mail is one test message: small, and identifiable in every mailbox by
// its Message-ID; its body carries a checksum line over the lines before
// it, and the whole body is kept to compare with what is stored.
type mail struct {
	id      string // Message-ID, with the angle brackets
	subject string
	rcpts   []rcpt
	raw     []byte // as submitted
	body    []byte // what follows the header, CRLF line ends
	qid     string // Postfix's queue ID once submitted
}

// newMail builds a message for rcpts; an address with a mailbox is to be
// delivered, nosuch refused with 550 5.1.1. extraBody, if any, is added
// as body lines before the checksum.
func newMail(subject string, addrs []string, extraBody ...string) *mail {
	n := mailSeq.Add(1)
	var r [6]byte
	rand.Read(r[:])
	m := &mail{id: fmt.Sprintf("<pf.%d.%s@lmtpgate.test>", n, hex.EncodeToString(r[:])), subject: subject}
	for _, a := range addrs {
		if _, ok := mailboxes[a]; ok {
			m.rcpts = append(m.rcpts, rcpt{addr: a, want: delivered})
		} else {
			m.rcpts = append(m.rcpts, rcpt{addr: a, want: refused, text: "5.1.1"})
		}
	}
	var body bytes.Buffer
	fmt.Fprintf(&body, "test message %d: %s\r\nmarker: %s\r\n", n, subject, m.id)
	for _, ln := range extraBody {
		body.WriteString(ln + "\r\n")
	}
	fmt.Fprintf(&body, ".a line that starts with a dot\r\npayload: %x\r\n", r)
	sum := sha256.Sum256(body.Bytes())
	fmt.Fprintf(&body, "sha256: %x\r\n", sum)
	m.body = body.Bytes()
	var raw bytes.Buffer
	fmt.Fprintf(&raw, "From: %s\r\nTo: undisclosed-recipients:;\r\nSubject: %s\r\nMessage-ID: %s\r\nDate: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
		sender, subject, m.id, time.Now().Format(time.RFC1123Z))
	raw.Write(m.body)
	m.raw = raw.Bytes()
	return m
}

func (m *mail) addrs() []string {
	out := make([]string, len(m.rcpts))
	for i, r := range m.rcpts {
		out[i] = r.addr
	}
	return out
}

// submit hands the messages to Postfix, a few at a time, and records
// their queue IDs.
func submit(t *testing.T, p *postfixlab.Postfix, mails ...*mail) {
	t.Helper()
	if err := submitAll(p, mails...); err != nil {
		t.Fatal(err)
	}
}

// submitAll is submit for goroutines other than the test's.
func submitAll(p *postfixlab.Postfix, mails ...*mail) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(mails))
	sem := make(chan struct{}, 4)
	for i, m := range mails {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			m.qid, errs[i] = p.Submit(ctx, sender, m.addrs(), m.raw)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return fmt.Errorf("submit to postfix: %w", err)
		}
	}
	return nil
}

// mix returns n messages over the lab's mailboxes: one to three
// recipients each, on one or both backends, every fifth with nosuch too.
func mix(subject string, n int) []*mail {
	addrs := []string{"alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org"}
	out := make([]*mail, n)
	for i := range out {
		rs := []string{addrs[i%4]}
		if i%3 != 0 {
			rs = append(rs, addrs[(i+1)%4])
		}
		if i%4 == 1 {
			rs = append(rs, addrs[(i+2)%4])
		}
		if i%5 == 4 {
			rs = append(rs, nosuch)
		}
		out[i] = newMail(fmt.Sprintf("%s %d", subject, i), rs)
	}
	return out
}

// result is the fate of one recipient of one message.
type result struct {
	mail     *mail
	rcpt     rcpt
	attempts []postfixlab.Event // delivery outcomes logged, in order
	final    *postfixlab.Event  // the last of them if it is final
	stored   int                // copies in the mailbox
	corrupt  int                // copies whose body differs from what was sent
	dupelim  int                // Cyrus's log lines eliminating a duplicate of it
}

// report is what reconcile found.
type report struct {
	results []*result
	events  []postfixlab.Event
}

// sentOf returns the results of addr that ended sent, in the order of
// the mails.
func (r *report) sentOf(addr string) []*result {
	var out []*result
	for _, res := range r.results {
		if res.rcpt.addr == addr && res.final != nil && res.final.Status == "sent" {
			out = append(out, res)
		}
	}
	return out
}

// reconcileOpts tune reconcile.
type reconcileOpts struct {
	// bound is how long Postfix gets to bring every recipient to a final
	// status, flushing its queue now and then; default one minute.
	bound time.Duration
}

// reconcile brings Postfix's queue to an end (flushing until every
// recipient of mails is final or the bound passes), reads the backends and
// asserts: every recipient Postfix logged as sent is stored (0 lost), every
// stored copy equals what was sent (0 corrupt), no recipient that exists
// bounced (0 bounced that should have been deferred), nothing refused was
// stored, every recipient reached a final status, and a recipient holds
// more than one copy only when an earlier attempt of it ended in doubt (its
// reply was lost), which it logs. It records the outcome in the fault
// matrix row of t.
func reconcile(t *testing.T, l *murderlab.Lab, sl *sandbox.Syslog, p *postfixlab.Postfix, mails []*mail, o reconcileOpts) *report {
	t.Helper()
	if o.bound == 0 {
		o.bound = time.Minute
	}
	ctx := ctxT(t, o.bound+2*time.Minute)
	rep := &report{}
	deadline := time.Now().Add(o.bound)
	lastFlush := time.Time{}
	for {
		evs, err := p.Events()
		if err != nil {
			t.Fatal(err)
		}
		rep.events = evs
		if allFinal(mails, evs) {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		if time.Since(lastFlush) > 2*time.Second {
			if err := p.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			lastFlush = time.Now()
		}
		time.Sleep(200 * time.Millisecond)
	}

	byQID := map[string][]postfixlab.Event{}
	msgIDOf := map[string]string{}
	for _, e := range rep.events {
		if e.MessageID != "" {
			msgIDOf[e.QueueID] = e.MessageID
		}
		if e.Delivery() {
			byQID[e.QueueID] = append(byQID[e.QueueID], e)
		}
	}

	// What the backends hold, read once per mailbox.
	stored := map[string]map[string][][]byte{} // mailbox → Message-ID → bodies
	for _, m := range mails {
		for _, r := range m.rcpts {
			mb, ok := mailboxes[r.addr]
			if !ok {
				continue
			}
			key := fmt.Sprintf("%d:%s", mb.backend, mb.mailbox)
			if _, done := stored[key]; done {
				continue
			}
			msgs, err := l.Messages(ctx, mb.backend, mb.mailbox)
			if err != nil {
				t.Fatalf("read %s on backend %d: %v", mb.mailbox, mb.backend, err)
			}
			byID := map[string][][]byte{}
			for _, msg := range msgs {
				id := strings.TrimSpace(msg.MessageID)
				byID[id] = append(byID[id], bodyOf(msg.Raw))
			}
			stored[key] = byID
		}
	}

	for _, m := range mails {
		if m.qid == "" {
			errorf(t, "%s was never submitted", m.id)
			continue
		}
		if got := msgIDOf[m.qid]; got != m.id {
			errorf(t, "postfix logged message-id %q for queue ID %s, want %s", got, m.qid, m.id)
		}
		for _, r := range m.rcpts {
			res := &result{mail: m, rcpt: r}
			rep.results = append(rep.results, res)
			for _, e := range byQID[m.qid] {
				if e.To == r.addr {
					res.attempts = append(res.attempts, e)
				}
			}
			if n := len(res.attempts); n > 0 && res.attempts[n-1].Final() {
				res.final = &res.attempts[n-1]
			}
			if mb, ok := mailboxes[r.addr]; ok {
				for _, b := range stored[fmt.Sprintf("%d:%s", mb.backend, mb.mailbox)][m.id] {
					res.stored++
					if !bytes.Equal(normalize(b), normalize(m.body)) {
						res.corrupt++
					}
				}
				if sl != nil {
					// "backend2/lmtp[PID]: dupelim: eliminated duplicate
					// message to <uniqueid> id <Message-ID> date ..."
					res.dupelim = len(sl.Lines(fmt.Sprintf(" backend%d/lmtp[", mb.backend), "dupelim: ", " to "+shared.uniqueIDs[mb.mailbox]+" ", " id "+m.id+" "))
				}
			}
			checkResult(t, res)
		}
	}
	recordReconcile(t, rep)
	return rep
}

// checkResult asserts the rules of reconcile for one recipient.
func checkResult(t *testing.T, res *result) {
	t.Helper()
	who := fmt.Sprintf("%s of %s (queue ID %s)", res.rcpt.addr, res.mail.id, res.mail.qid)
	if res.corrupt > 0 {
		errorf(t, "CORRUPT: %s: %d of %d stored copies differ from the message sent", who, res.corrupt, res.stored)
	}
	if res.final == nil {
		last := "no delivery attempt logged"
		if n := len(res.attempts); n > 0 {
			last = fmt.Sprintf("last attempt %s (%s)", res.attempts[n-1].Status, res.attempts[n-1].Reply)
		}
		errorf(t, "NOT FINAL: %s never reached a final status: %s; %d copies stored", who, last, res.stored)
		return
	}
	switch res.rcpt.want {
	case delivered:
		switch {
		case res.final.Status != "sent":
			errorf(t, "BOUNCED: %s should have been delivered or deferred, Postfix logged %s (%s)", who, res.final.Status, res.final.Reply)
		case res.stored == 0:
			errorf(t, "LOST: %s: Postfix logged sent (%s) but the mailbox holds no copy", who, res.final.Reply)
		case res.stored > 1:
			if why := doubt(res); why != "" {
				t.Logf("duplicate: %s is stored %d times (Cyrus eliminated %d more); an earlier attempt ended in doubt: %s", who, res.stored, res.dupelim, why)
			} else {
				errorf(t, "DUPLICATE: %s is stored %d times, and no attempt of it lost its reply", who, res.stored)
			}
		}
		if res.dupelim > 0 {
			// Cyrus dropped a second copy: the backend received the
			// message twice. Only a retry after an attempt that ended in
			// doubt may do that; otherwise something delivered twice
			// behind the MTA's back.
			if why := doubt(res); why != "" {
				t.Logf("duplicate eliminated by Cyrus: %s (%d times); an earlier attempt ended in doubt: %s", who, res.dupelim, why)
			} else {
				errorf(t, "DUPLICATE DELIVERY: the backend received %s %d more times (Cyrus dropped them), though no attempt of it ended in doubt", who, res.dupelim)
			}
		}
	case refused:
		if res.final.Status != "bounced" {
			errorf(t, "%s should have been refused, Postfix logged %s (%s)", who, res.final.Status, res.final.Reply)
		} else if res.rcpt.text != "" && !strings.Contains(res.final.Reply, res.rcpt.text) {
			errorf(t, "%s: refused with %q, want the reply to carry %q", who, res.final.Reply, res.rcpt.text)
		}
		if res.stored > 0 {
			errorf(t, "%s was refused (%s) but is stored %d times", who, res.final.Reply, res.stored)
		}
	}
}

// doubt returns the reply of an earlier attempt of res after which the
// backend may have stored the message without the MTA hearing so: the
// connection was lost or timed out after the message was sent, or
// lmtpgate said so (4.3.0 after DATA). "" if there is none.
func doubt(res *result) string {
	for _, e := range res.attempts {
		if e.Status != "deferred" {
			continue
		}
		for _, s := range []string{"may be sent more than once", "end of DATA", "lost connection", "timed out", "4.3.0"} {
			if strings.Contains(e.Reply, s) {
				return e.Reply
			}
		}
	}
	return ""
}

// allFinal reports whether every recipient of mails has a final status in
// evs.
func allFinal(mails []*mail, evs []postfixlab.Event) bool {
	final := map[string]bool{}
	for _, e := range evs {
		if e.Delivery() {
			final[e.QueueID+" "+e.To] = e.Final()
		}
	}
	for _, m := range mails {
		for _, r := range m.rcpts {
			if !final[m.qid+" "+r.addr] {
				return false
			}
		}
	}
	return true
}

// bodyOf returns what follows the header of a stored message.
func bodyOf(raw []byte) []byte {
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		return raw[i+4:]
	}
	if i := bytes.Index(raw, []byte("\n\n")); i >= 0 {
		return raw[i+2:]
	}
	return nil
}

func normalize(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) }

// waitEvents waits until cond holds for Postfix's log; the timeout only
// bounds a hang and fails the test.
func waitEvents(t *testing.T, p *postfixlab.Postfix, timeout time.Duration, what string, cond func([]postfixlab.Event) bool) []postfixlab.Event {
	t.Helper()
	var evs []postfixlab.Event
	ok := testkit.Eventually(timeout, func() bool {
		var err error
		evs, err = p.Events()
		return err == nil && cond(evs)
	})
	if !ok {
		t.Fatalf("postfix never logged %s within %s", what, timeout)
	}
	return evs
}

// finalFor reports whether addr has a final status for every one of mails
// that has it as a recipient.
func finalFor(mails []*mail, addr string) func([]postfixlab.Event) bool {
	return func(evs []postfixlab.Event) bool {
		final := map[string]bool{}
		for _, e := range evs {
			if e.Delivery() && e.To == addr && e.Final() {
				final[e.QueueID] = true
			}
		}
		for _, m := range mails {
			for _, r := range m.rcpts {
				if r.addr == addr && !final[m.qid] {
					return false
				}
			}
		}
		return true
	}
}

// delaysOf returns Postfix's delay (seconds from arrival to delivery) of
// addr's final attempt in each of mails, in order; a missing one is -1.
func delaysOf(evs []postfixlab.Event, mails []*mail, addr string) []float64 {
	last := map[string]float64{}
	for _, e := range evs {
		if e.Delivery() && e.To == addr && e.Final() {
			last[e.QueueID] = e.Delay
		}
	}
	var out []float64
	for _, m := range mails {
		for _, r := range m.rcpts {
			if r.addr != addr {
				continue
			}
			d, ok := last[m.qid]
			if !ok {
				d = -1
			}
			out = append(out, d)
		}
	}
	return out
}

func maxOf(xs []float64) float64 {
	m := 0.0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// summarize describes, per recipient address, what Postfix logged (status
// and DSN code with counts, in order of first appearance) and what was
// stored.
func summarize(rep *report) (mta, storedText string) {
	type key struct{ status, dsn string }
	var addrs []string
	seen := map[string]bool{}
	counts := map[string]map[key]int{}
	order := map[string][]key{}
	st := map[string][2]int{} // addr → stored recipients, expected recipients
	var lost, corrupt, dups, dupelim, pending int
	for _, res := range rep.results {
		a := res.rcpt.addr
		if !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
			counts[a] = map[key]int{}
		}
		for _, e := range res.attempts {
			k := key{e.Status, e.DSN}
			if counts[a][k] == 0 {
				order[a] = append(order[a], k)
			}
			counts[a][k]++
		}
		s := st[a]
		if res.rcpt.want == delivered {
			s[1]++
		}
		if res.stored > 0 {
			s[0]++
		}
		st[a] = s
		if res.final == nil {
			pending++
		} else if res.final.Status == "sent" && res.stored == 0 {
			lost++
		}
		corrupt += res.corrupt
		if res.stored > 1 {
			dups += res.stored - 1
		}
		dupelim += res.dupelim
	}
	sort.SliceStable(addrs, func(i, j int) bool { return addrs[i] < addrs[j] })
	var mb, sb strings.Builder
	for _, a := range addrs {
		short, _, _ := strings.Cut(a, "@")
		if mb.Len() > 0 {
			mb.WriteString("; ")
		}
		mb.WriteString(short + ":")
		for _, k := range order[a] {
			fmt.Fprintf(&mb, " %s %s ×%d", k.status, k.dsn, counts[a][k])
		}
		if _, ok := mailboxes[a]; ok {
			if sb.Len() > 0 {
				sb.WriteString(", ")
			}
			fmt.Fprintf(&sb, "%s %d/%d", short, st[a][0], st[a][1])
		}
	}
	fmt.Fprintf(&sb, "; lost %d, corrupt %d, duplicates %d, Cyrus dupelim %d", lost, corrupt, dups, dupelim)
	if pending > 0 {
		fmt.Fprintf(&sb, ", %d never final", pending)
	}
	return mb.String(), sb.String()
}
