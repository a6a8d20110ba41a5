package postfix

import (
	"fmt"
	"io"
	"net"
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

// background is Postfix mail to bob and dave that flows through the same
// lmtpgate before and after a client misbehaves, reconciled at the end: the
// daemon must keep serving. Raw clients use alice and carol, so that
// lmtpgate's log lines for those two are theirs alone.
type background struct {
	p     *postfixlab.Postfix
	mails []*mail
}

func startBackground(t *testing.T, g *gate, tr transport, subject string) *background {
	b := &background{p: startPostfix(t, g, tr, nil)}
	b.send(t, subject+" before")
	return b
}

func (b *background) send(t *testing.T, subject string) {
	t.Helper()
	m := []*mail{newMail(subject+" 1", []string{"bob@example.org", "dave@example.org"}), newMail(subject+" 2", []string{"dave@example.org"})}
	submit(t, b.p, m...)
	b.mails = append(b.mails, m...)
}

func (b *background) reconcile(t *testing.T, l *murderlab.Lab, sl *sandbox.Syslog, subject string) {
	t.Helper()
	b.send(t, subject+" after")
	reconcile(t, l, sl, b.p, b.mails, reconcileOpts{})
}

// outcomeLines waits for lmtpgate to log an outcome (delivered, not
// delivered, rejected) for each of rcpts in what it logged after offset,
// and returns those lines. A message a client did not finish must leave a
// line that says so; the wait bounds a hang.
func outcomeLines(t *testing.T, g *gate, offset int, rcpts ...string) []string {
	t.Helper()
	var lines []string
	ok := testkit.Eventually(30*time.Second, func() bool {
		lines = lines[:0]
		out := g.Output()
		if offset > len(out) {
			offset = len(out)
		}
		found := map[string]bool{}
		for _, ln := range strings.Split(out[offset:], "\n") {
			for _, r := range rcpts {
				if strings.Contains(ln, " rcpt="+r+" ") && strings.Contains(ln, " code=") {
					found[r] = true
					lines = append(lines, ln)
				}
			}
		}
		return len(found) == len(rcpts)
	})
	if !ok {
		errorf(t, "lmtpgate logged no outcome for every one of %v after the client went away; it logged:\n%s", rcpts, lines)
	}
	return lines
}

// copies counts the stored copies of m in the mailboxes of addrs.
func copies(t *testing.T, l *murderlab.Lab, m *mail, addrs ...string) int {
	t.Helper()
	n := 0
	for _, a := range addrs {
		mb := mailboxes[a]
		msgs, err := l.Messages(ctxT(t, time.Minute), mb.backend, mb.mailbox)
		if err != nil {
			t.Fatal(err)
		}
		for _, msg := range msgs {
			if strings.TrimSpace(msg.MessageID) == m.id {
				n++
			}
		}
	}
	return n
}

// A client that announces a message and goes away before sending all of
// it must have nothing stored: not with BDAT (CHUNKING is advertised, so
// any client may use it; Postfix does not over LMTP) and not with DATA.
func TestCutoff(t *testing.T) {
	l, sl := lab(t)
	g := startGate(t, l, gateConf{})
	bg := startBackground(t, g, overTCP, "cut-off background")
	rcpts := []string{"alice@example.org", "carol@example.org"}
	for _, tc := range []struct {
		name  string
		fault string
		send  func(c *rawClient, m *mail)
	}{
		{"BDAT", "BDAT cut-off", func(c *rawClient, m *mail) {
			body := rawHeader(m) + strings.Repeat("a line of the message that never ends\r\n", 50)
			fmt.Fprintf(c.conn, "BDAT %d LAST\r\n%s", len(body), body[:len(body)/2])
		}},
		{"DATA", "DATA cut-off", func(c *rawClient, m *mail) {
			c.must("DATA", 354)
			io.WriteString(c.conn, rawHeader(m)+strings.Repeat("a line of the message that never ends\r\n", 25)+"half a li")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			faultRow(t, tc.fault, "raw client: LHLO, MAIL, RCPT alice and carol, "+map[string]string{"BDAT": "`BDAT n LAST` and n/2 bytes", "DATA": "DATA and half a message"}[tc.name]+", then close; Postfix delivers to bob and dave meanwhile")
			offset := len(g.Output())
			m := newMail("cut off "+tc.name, rcpts)
			c := dialRaw(t, "tcp", g.LMTP)
			c.transaction(rcpts...)
			tc.send(c, m)
			c.conn.Close()
			lines := outcomeLines(t, g, offset, rcpts...)
			var codes []string
			for _, ln := range lines {
				if _, v, ok := strings.Cut(ln, " code="); ok {
					code, _, _ := strings.Cut(v, " ")
					codes = append(codes, code)
				}
				if strings.Contains(ln, "msg=delivered") {
					errorf(t, "lmtpgate logged a delivery of a message the client never finished: %s", ln)
				}
			}
			n := copies(t, l, m, rcpts...)
			note(t, "lmtpgate logged codes "+strings.Join(codes, ", ")+" (the client was gone)", fmt.Sprintf("%d copies of the cut-off message", n))
			if n != 0 {
				errorf(t, "the cut-off message is stored %d times, want 0", n)
			}
		})
	}
	bg.reconcile(t, l, sl, "cut-off background")
}

// Garbage from a client gets a clear reply at the command that carries it,
// never an endless retry, a silent restart or a TCP reset; the daemon keeps
// serving.
func TestBadClients(t *testing.T) {
	l, sl := lab(t)
	g := startGate(t, l, gateConf{})
	bg := startBackground(t, g, overUnix, "bad clients background")

	t.Run("NUL-in-MAIL-FROM", func(t *testing.T) {
		faultRow(t, "NUL in MAIL FROM", "`MAIL FROM:<ev\\0il@example.org>`")
		c := dialRaw(t, "tcp", g.LMTP)
		c.must("LHLO raw.test", 250)
		code, msg := c.cmd("MAIL FROM:<ev\x00il@example.org>")
		note(t, fmt.Sprintf("MAIL: %d %s", code, msg), "")
		if code != 501 {
			errorf(t, "MAIL FROM with a NUL byte: %d %s, want 501 at the command", code, msg)
		}
		c.cmd("RSET")
		c.cmd("QUIT")
	})

	t.Run("second-MAIL", func(t *testing.T) {
		faultRow(t, "second MAIL in a transaction", "MAIL, RCPT alice, MAIL again")
		c := dialRaw(t, "tcp", g.LMTP)
		c.transaction("alice@example.org")
		code, msg := c.cmd("MAIL FROM:<other@sender.test>")
		note(t, fmt.Sprintf("second MAIL: %d %s", code, msg), "")
		if code != 503 {
			errorf(t, "a second MAIL inside a transaction: %d %s, want 503 (bad sequence)", code, msg)
		}
		c.cmd("RSET")
		c.cmd("QUIT")
	})

	// sendBig writes head, then n bytes of 'x', then tail, while another
	// goroutine reads the reply, as a client does that writes a whole
	// message before it reads. It returns the reply and the write error.
	sendBig := func(c *rawClient, head string, n int, tail string) (code int, msg string, werr error) {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, werr = io.WriteString(c.conn, head); werr != nil {
				return
			}
			chunk := strings.Repeat("x", 64<<10)
			for left := n; left > 0 && werr == nil; left -= len(chunk) {
				_, werr = io.WriteString(c.conn, chunk[:min(left, len(chunk))])
			}
			if werr == nil {
				_, werr = io.WriteString(c.conn, tail)
			}
		}()
		code, msg = c.read()
		wg.Wait()
		return code, msg, werr
	}

	t.Run("10MB-line-in-DATA", func(t *testing.T) {
		faultRow(t, "10 MB line in DATA", "MAIL, RCPT alice, DATA, a header, one line of 10 MB, the end of data")
		m := newMail("overlong line", []string{"alice@example.org"})
		c := dialRaw(t, "tcp", g.LMTP)
		c.transaction("alice@example.org")
		c.must("DATA", 354)
		code, msg, werr := sendBig(c, rawHeader(m), 10<<20, "\r\nafter the long line\r\n.\r\n")
		n := copies(t, l, m, "alice@example.org")
		note(t, fmt.Sprintf("reply %d %s; sending: %v", code, msg, errText(werr)), fmt.Sprintf("%d copies", n))
		if code < 400 {
			errorf(t, "a 10 MB line in DATA: reply %d %q, want a 4xx or 5xx reply", code, msg)
		}
		if isReset(werr) {
			errorf(t, "a 10 MB line in DATA: the connection was reset while the client was still sending (%v)", werr)
		}
		if n != 0 {
			errorf(t, "the message with a 10 MB line is stored %d times, want 0", n)
		}
	})

	t.Run("10MB-command-line", func(t *testing.T) {
		faultRow(t, "10 MB command line", "LHLO, then `MAIL FROM:<` + 10 MB + `>`")
		c := dialRaw(t, "tcp", g.LMTP)
		c.must("LHLO raw.test", 250)
		code, msg, werr := sendBig(c, "MAIL FROM:<", 10<<20, "@example.org>\r\n")
		note(t, fmt.Sprintf("reply %d %s; sending: %v", code, msg, errText(werr)), "")
		if code < 500 {
			errorf(t, "a 10 MB command line: reply %d %q, want a 5xx reply", code, msg)
		}
		if isReset(werr) {
			errorf(t, "a 10 MB command line: the connection was reset while the client was still sending (%v)", werr)
		}
	})

	bg.reconcile(t, l, sl, "bad clients background")
}

func errText(err error) string {
	if err == nil {
		return "completed"
	}
	return err.Error()
}

// Thousands of clients that connect and drip: lmtpgate serves at most
// lmtp.max_connections at once and answers every other one 421 4.3.2 at
// connect (no silent accept, no reset), and delivers again once they are
// gone.
func TestDrippingConnections(t *testing.T) {
	l, sl := lab(t)
	const limit, total = 50, 5000
	faultRow(t, "5,000 dripping connections", fmt.Sprintf("5,000 connections that send a byte every 500 ms; lmtp.max_connections %d; Postfix delivers meanwhile and after", limit))
	g := startGate(t, l, gateConf{LMTP: []string{fmt.Sprintf("max_connections: %d", limit)}})
	bg := startBackground(t, g, overTCP, "dripping background")

	var greeted, refused, other atomic.Int64
	var otherMu sync.Mutex
	var others []string
	stop := make(chan struct{})
	var drips sync.WaitGroup
	sem := make(chan struct{}, 64)
	var dials sync.WaitGroup
	for i := 0; i < total; i++ {
		if other.Load() > 20 {
			// Connections that get no answer cost the read timeout
			// each: enough of them is a verdict.
			break
		}
		dials.Add(1)
		sem <- struct{}{}
		go func() {
			defer dials.Done()
			defer func() { <-sem }()
			conn, err := net.DialTimeout("tcp", g.LMTP, 10*time.Second)
			if err != nil {
				other.Add(1)
				otherMu.Lock()
				others = append(others, err.Error())
				otherMu.Unlock()
				return
			}
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			line := make([]byte, 512)
			n, err := conn.Read(line)
			reply := strings.TrimSpace(string(line[:n]))
			switch {
			case strings.HasPrefix(reply, "220"):
				greeted.Add(1)
				drips.Add(1)
				go func() {
					defer drips.Done()
					defer conn.Close()
					cmd := "NOOP\r\n"
					for j := 0; ; j++ {
						select {
						case <-stop:
							return
						case <-time.After(500 * time.Millisecond):
						}
						if _, err := conn.Write([]byte{cmd[j%len(cmd)]}); err != nil {
							return
						}
					}
				}()
			case strings.HasPrefix(reply, "421 4.3.2"):
				refused.Add(1)
				conn.Close()
			default:
				other.Add(1)
				otherMu.Lock()
				if len(others) < 5 {
					others = append(others, fmt.Sprintf("%q %v", reply, err))
				}
				otherMu.Unlock()
				conn.Close()
			}
		}()
		if i == total/2 {
			bg.send(t, "dripping background during")
		}
	}
	dials.Wait()
	close(stop)
	drips.Wait()
	note(t, fmt.Sprintf("%d greeted 220, %d refused 421 4.3.2 at connect, %d neither", greeted.Load(), refused.Load(), other.Load()), "")
	t.Logf("%d connections: %d greeted, %d refused 421 4.3.2, %d other %v", total, greeted.Load(), refused.Load(), other.Load(), others)
	if greeted.Load() > limit {
		errorf(t, "%d connections were served at once, want at most lmtp.max_connections = %d", greeted.Load(), limit)
	}
	if other.Load() > 0 {
		errorf(t, "%d connections got neither a greeting nor 421 4.3.2: %v", other.Load(), others)
	}
	bg.reconcile(t, l, sl, "dripping background")
}
