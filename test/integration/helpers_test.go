// Package integration delivers mail through the lmtpgate binary into a real
// Cyrus 3.6 murder on loopback (internal/murderlab) and checks over IMAP
// where every copy landed. These tests skip with -short; with
// LMTPGATE_REQUIRE_CYRUS=1 (set by `make test`) a missing Cyrus fails them.
package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
	"github.com/lmtpgate/lmtpgate/internal/testbin"
)

var msgSeq atomic.Int64

// send runs one LMTP transaction and returns the RCPT replies and the
// post-DATA replies by recipient ("" = accepted/delivered), and the
// Message-ID used (unique, since Cyrus suppresses duplicates).
func send(t *testing.T, addr string, rcpts []string, subject string) (rcptRep, dataRep map[string]string, msgID string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("mta.test"); err != nil {
		t.Fatal(err)
	}
	rcptRep, dataRep = map[string]string{}, map[string]string{}
	if err := c.Mail("sender@example.org", nil); err != nil {
		t.Fatal(err)
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
	msgID = fmt.Sprintf("<%d.%d@lmtpgate.test>", time.Now().UnixNano(), msgSeq.Add(1))
	if n == 0 {
		return
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(w, "From: sender@example.org\r\nTo: undisclosed-recipients:;\r\nSubject: %s\r\nMessage-ID: %s\r\nDate: %s\r\n\r\nbody line 1\r\n.leading dot\r\n", subject, msgID, time.Now().Format(time.RFC1123Z))
	resp, err := w.CloseWithLMTPResponse()
	var lerr smtp.LMTPDataError
	if err != nil && !errors.As(err, &lerr) {
		t.Fatalf("DATA: %v", err)
	}
	for r := range resp {
		dataRep[r] = ""
	}
	for r, e := range lerr {
		dataRep[r] = reply(e)
	}
	c.Quit()
	return
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

// config returns lmtpgate YAML for the lab with the given lookup order.
func config(l *murderlab.Lab, order string, extra string) string {
	c := l.Creds()
	return fmt.Sprintf(`hostname: lmtpgate.test
imapd_conf: %s
lookup:
  order: %s
  local_mupdate: {address: "%s", authname: %s, password: %s, backoff_min: 200ms, backoff_max: 1s}
  master_mupdate: {address: "%s", authname: %s, password: %s, backoff_min: 200ms, backoff_max: 1s}
  cache: {positive_ttl: 2s, negative_ttl: 200ms}
backends:
  authname: %s
  password: %s
  connect_timeout: 3s
  command_timeout: 10s
%s`, l.FrontendImapdConf(), order, l.ReplicaMupdateAddr(), c.Mupdate, c.MupdatePassword, l.MasterMupdateAddr(), c.Mupdate, c.MupdatePassword, c.Proxy, c.ProxyPassword, extra)
}

var _ = io.EOF
var _ = testbin.Build
