// Package integration delivers mail through the lmtpgate binary into a real
// Cyrus 3.6 murder on loopback (internal/murderlab) and checks over IMAP
// where every copy landed. These tests skip with -short; with
// LMTPGATE_REQUIRE_CYRUS=1 (set by `make test`) a missing Cyrus fails them.
package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
	"github.com/lmtpgate/lmtpgate/internal/testbin"
)

var msgSeq atomic.Int64

// sentDates keeps each message's Date header, so that a retry resends the
// very same message, as an MTA does. Cyrus's duplicate suppression keys on
// Message-ID, mailbox and Date: a retry with a new Date is a new message.
var sentDates sync.Map

func dateOf(id string) string {
	if d, ok := sentDates.Load(id); ok {
		return d.(string)
	}
	return time.Now().Format(time.RFC1123Z)
}

// send runs one LMTP transaction and returns the RCPT replies and the
// post-DATA replies by recipient ("" = accepted/delivered), and the
// Message-ID used (unique, since Cyrus suppresses duplicates).
func send(t *testing.T, addr string, rcpts []string, subject string) (rcptRep, dataRep map[string]string, msgID string) {
	t.Helper()
	rcptRep, dataRep, msgID, err := sendMsg(addr, rcpts, subject, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	return rcptRep, dataRep, msgID
}

// sendMsg is send without a *testing.T, for use from several goroutines:
// msgID "" means a new unique one (a redelivery passes the earlier one, as
// an MTA's queue would), and pad adds that many bytes of body.
func sendMsg(addr string, rcpts []string, subject, msgID string, pad int) (rcptRep, dataRep map[string]string, id string, err error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, nil, "", err
	}
	// A generous bound only against hangs; nothing here is timed.
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("mta.test"); err != nil {
		return nil, nil, "", err
	}
	rcptRep, dataRep = map[string]string{}, map[string]string{}
	if err := c.Mail("sender@example.org", nil); err != nil {
		return nil, nil, "", fmt.Errorf("MAIL: %w", err)
	}
	n := 0
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			rcptRep[r] = reply(err)
			continue
		}
		rcptRep[r] = ""
		n++
	}
	id = msgID
	if id == "" {
		id = fmt.Sprintf("<%d.%d@lmtpgate.test>", time.Now().UnixNano(), msgSeq.Add(1))
		sentDates.Store(id, time.Now().Format(time.RFC1123Z))
	}
	if n == 0 {
		return rcptRep, dataRep, id, nil
	}
	w, err := c.Data()
	if err != nil {
		return nil, nil, "", fmt.Errorf("DATA: %w", err)
	}
	fmt.Fprintf(w, "From: sender@example.org\r\nTo: undisclosed-recipients:;\r\nSubject: %s\r\nMessage-ID: %s\r\nDate: %s\r\n\r\nbody line 1\r\n.leading dot\r\n", subject, id, dateOf(id))
	for pad > 0 {
		k := min(pad, 76)
		fmt.Fprintf(w, "%s\r\n", strings.Repeat("x", k))
		pad -= k
	}
	resp, err := w.CloseWithLMTPResponse()
	var lerr smtp.LMTPDataError
	if err != nil && !errors.As(err, &lerr) {
		return nil, nil, "", fmt.Errorf("DATA: %w", err)
	}
	for r := range resp {
		dataRep[r] = ""
	}
	for r, e := range lerr {
		dataRep[r] = reply(e)
	}
	c.Quit()
	return rcptRep, dataRep, id, nil
}

// probe asks the daemon about one recipient with MAIL and RCPT only (no
// message is sent) and returns the RCPT reply, "" when accepted.
func probe(t *testing.T, addr, rcpt string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("mta.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("sender@example.org", nil); err != nil {
		t.Fatal(err)
	}
	rep := ""
	if err := c.Rcpt(rcpt, nil); err != nil {
		rep = reply(err)
	}
	c.Reset()
	c.Quit()
	return rep
}

// counts returns how many copies of each Message-ID mailbox on backend holds.
func counts(t *testing.T, l *murderlab.Lab, backend int, mailbox string) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	msgs, err := l.Messages(ctx, backend, mailbox)
	if err != nil {
		t.Fatalf("IMAP %s on backend %d: %v", mailbox, backend, err)
	}
	out := map[string]int{}
	for _, m := range msgs {
		out[strings.TrimSpace(m.MessageID)]++
	}
	return out
}

// logLines returns the daemon's log lines that contain every one of subs.
func logLines(d *testbin.Daemon, subs ...string) []string {
	var out []string
next:
	for _, ln := range strings.Split(d.Output(), "\n") {
		for _, s := range subs {
			if !strings.Contains(ln, s) {
				continue next
			}
		}
		out = append(out, ln)
	}
	return out
}

// deliveredBy returns the lookup source named in the daemon's "delivered"
// log lines for rcpt, in order.
func deliveredBy(d *testbin.Daemon, rcpt string) []string {
	var out []string
	for _, ln := range logLines(d, `msg="delivered `, " rcpt="+rcpt+" ") {
		src := "?"
		if _, v, ok := strings.Cut(ln, " source="); ok {
			src, _, _ = strings.Cut(v, " ")
		}
		out = append(out, src)
	}
	return out
}

// ctxT returns a context bounded generously against hangs, cancelled when
// the test ends.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// copyFile copies src to dst through a temporary file and a rename, so
// that a reader never sees dst half-written.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

func reply(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return "error: " + err.Error()
}

// count returns how many messages with msgID are in mailbox on backend.
func count(t *testing.T, l *murderlab.Lab, backend int, mailbox, msgID string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs, err := l.Messages(ctx, backend, mailbox)
	if err != nil {
		t.Fatalf("IMAP %s on backend %d: %v", mailbox, backend, err)
	}
	n := 0
	for _, m := range msgs {
		if strings.TrimSpace(m.MessageID) == msgID {
			n++
		}
	}
	return n
}

func raw(t *testing.T, l *murderlab.Lab, backend int, mailbox, msgID string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs, err := l.Messages(ctx, backend, mailbox)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if strings.TrimSpace(m.MessageID) == msgID {
			return string(m.Raw)
		}
	}
	return ""
}

// setup starts a lab with the usual mailboxes: user/alice (+Sub, postable)
// and shared bb/sales on backend 1, user/carol on backend 2.
func setup(t *testing.T) *murderlab.Lab {
	t.Helper()
	l := murderlab.StartTest(t, murderlab.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(l.CreateMailbox(ctx, 1, "user/alice", nil))
	must(l.CreateMailbox(ctx, 1, "user/alice/Sub", map[string]string{"anyone": "p"}))
	must(l.CreateMailbox(ctx, 1, "bb/sales", map[string]string{"anyone": "lrsp"}))
	must(l.CreateMailbox(ctx, 2, "user/carol", nil))
	for _, n := range []string{"user.alice", "user.alice.Sub", "bb.sales", "user.carol"} {
		must(l.WaitFrontend(ctx, n, true))
	}
	return l
}

// config returns lmtpgate YAML for the lab with the given lookup order;
// extra is appended at the top level.
func config(l *murderlab.Lab, order string, extra string) string {
	return configDB(l, order, "", extra)
}

// configDB is config with lookup.mailboxes_db set to db (unless empty).
func configDB(l *murderlab.Lab, order, db, extra string) string {
	c := l.Creds()
	dbLine := ""
	if db != "" {
		dbLine = fmt.Sprintf("  mailboxes_db: %q\n", db)
	}
	return fmt.Sprintf(`hostname: lmtpgate.test
imapd_conf: %s
lookup:
  order: %s
%s  local_mupdate: {address: "%s", authname: %s, password: %s, backoff_min: 200ms, backoff_max: 1s}
  master_mupdate: {address: "%s", authname: %s, password: %s, backoff_min: 200ms, backoff_max: 1s}
  cache: {positive_ttl: 2s, negative_ttl: 200ms}
backends:
  authname: %s
  password: %s
  connect_timeout: 3s
  command_timeout: 10s
%s`, l.FrontendImapdConf(), order, dbLine, l.ReplicaMupdateAddr(), c.Mupdate, c.MupdatePassword, l.MasterMupdateAddr(), c.Mupdate, c.MupdatePassword, c.Proxy, c.ProxyPassword, extra)
}
