package postfix

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
	"github.com/lmtpgate/lmtpgate/internal/postfixlab"
)

// Without a fault, everything Postfix hands lmtpgate, over TCP and over
// the unix socket, lands once in the right mailbox, unknown recipients
// bounce with 550 5.1.1, and the final reply Postfix logs reads as a
// final delivery (2.1.5) that names the backend and lmtpgate's session,
// so an operator can follow a copy from Postfix's log into lmtpgate's.
func TestDelivery(t *testing.T) {
	l, sl := lab(t)
	for _, tr := range []transport{overTCP, overUnix} {
		t.Run(string(tr), func(t *testing.T) {
			faultRow(t, fmt.Sprintf("none (lmtp:%s)", tr), "40 messages, 1–4 recipients on both backends, some to an unknown mailbox")
			g := startGate(t, l, gateConf{})
			p := startPostfix(t, g, tr, nil)
			mails := mix("no fault "+string(tr), 40)
			submit(t, p, mails...)
			rep := reconcile(t, l, sl, p, mails, reconcileOpts{})
			for _, res := range rep.results {
				if len(res.attempts) != 1 {
					errorf(t, "%s of %s took %d attempts without a fault: %v", res.rcpt.addr, res.mail.id, len(res.attempts), res.attempts)
				}
			}
		})
	}
}

// The replies lmtpgate gives after DATA read as what they are in the MTA's
// log: 250 2.1.5 for a delivery, naming the backend
// that took the copy and carrying SESSIONID=<id> with the id lmtpgate logs
// as session=; and a backend's own refusal reaches the MTA as the backend
// worded it (Cyrus refuses a message with a NUL byte: 554 5.6.0 Message
// contains NUL characters).
func TestReplyTexts(t *testing.T) {
	l, sl := lab(t)
	faultRow(t, "final reply texts", "10 messages to alice (backend 1) and carol (backend 2); one message with a NUL byte in its body")
	g := startGate(t, l, gateConf{})
	p := startPostfix(t, g, overUnix, nil)
	var mails []*mail
	for i := 0; i < 10; i++ {
		mails = append(mails, newMail(fmt.Sprintf("reply text %d", i), []string{"alice@example.org", "carol@example.org"}))
	}
	nul := newMail("NUL in the body", []string{"alice@example.org"}, "before a NUL\x00after it")
	nul.rcpts[0] = rcpt{addr: "alice@example.org", want: refused, text: "Message contains NUL characters"}
	submit(t, p, append(mails, nul)...)
	rep := reconcile(t, l, sl, p, append(mails, nul), reconcileOpts{})

	sessionID := regexp.MustCompile(`SESSIONID=<([^>]+)>`)
	for _, res := range rep.results {
		if res.final == nil || res.final.Status != "sent" {
			continue
		}
		mb := mailboxes[res.rcpt.addr]
		server := l.BackendServer(mb.backend)
		reply := res.final.Reply
		if !strings.HasPrefix(reply, "250 2.1.5 ") {
			errorf(t, "%s: Postfix logged %q, want a final delivery, 250 2.1.5", res.rcpt.addr, reply)
		}
		if !strings.Contains(reply, server) {
			errorf(t, "%s: the reply %q does not name backend %s", res.rcpt.addr, reply, server)
		}
		m := sessionID.FindStringSubmatch(reply)
		if m == nil {
			errorf(t, "%s: the reply %q carries no SESSIONID=<id>", res.rcpt.addr, reply)
			continue
		}
		if !strings.Contains(g.Output(), "session="+m[1]) {
			errorf(t, "%s: SESSIONID=<%s> in the reply, but lmtpgate logged no session=%s", res.rcpt.addr, m[1], m[1])
		}
	}
	for _, res := range rep.results {
		if res.mail == nul && res.final != nil {
			t.Logf("NUL body: Postfix logged %s (%s)", res.final.Status, res.final.Reply)
			if !strings.Contains(res.final.Reply, "554 5.6.0") {
				errorf(t, "NUL body: Postfix logged %q, want Cyrus's 554 5.6.0 Message contains NUL characters", res.final.Reply)
			}
		}
	}
	if t.Failed() {
		if sent := rep.sentOf("alice@example.org"); len(sent) > 0 {
			t.Logf("an example of a final reply as Postfix logs it: %s", sent[0].final.Reply)
		}
	}
}

// smtp-source speaks LMTP itself (no pipelining, one recipient per
// transaction, several sessions at once): a second client, independent of
// Postfix's LMTP client and of go-smtp, over TCP and the unix socket.
func TestSMTPSource(t *testing.T) {
	l, _ := lab(t)
	faultRow(t, "none, smtp-source -L as the client", "smtp-source -L -s 4 -m 50 to alice and to carol, over TCP and the unix socket")
	g := startGate(t, l, gateConf{})
	var got []string
	for _, tc := range []struct {
		to     string
		target string
	}{
		{"alice@example.org", g.LMTP},
		{"carol@example.org", "unix:" + g.Unix},
	} {
		subject := fmt.Sprintf("smtp-source %d", time.Now().UnixNano())
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := exec.CommandContext(ctx, postfixlab.CommandDir+"/smtp-source", "-L", "-s", "4", "-m", "50", "-d",
			"-M", "mta.test", "-f", sender, "-t", tc.to, "-S", subject, "-l", "200", tc.target).CombinedOutput()
		cancel()
		if err != nil {
			errorf(t, "smtp-source to %s via %s: %v\n%s", tc.to, tc.target, err, out)
			continue
		}
		mb := mailboxes[tc.to]
		n, ids := countSubject(t, l, mb.backend, mb.mailbox, subject)
		got = append(got, fmt.Sprintf("%s %d/50 (%d Message-IDs)", strings.TrimSuffix(tc.to, "@example.org"), n, ids))
		if n != 50 {
			errorf(t, "smtp-source sent 50 messages to %s via %s without an error; the mailbox holds %d", tc.to, tc.target, n)
		}
	}
	note(t, "smtp-source: every transaction accepted", strings.Join(got, ", "))
}

// countSubject counts the messages with subject in mailbox and how many
// Message-IDs they have between them.
func countSubject(t *testing.T, l *murderlab.Lab, backend int, mailbox, subject string) (n, ids int) {
	t.Helper()
	msgs, err := l.Messages(ctxT(t, time.Minute), backend, mailbox)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		if strings.TrimSpace(m.Subject) == subject {
			n++
			seen[m.MessageID] = true
		}
	}
	return n, len(seen)
}
