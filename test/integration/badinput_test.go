package integration

import (
	"bufio"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testbin"
)

// rawLMTP is an LMTP conversation line by line, for input no client
// library would send.
type rawLMTP struct {
	t    *testing.T
	conn net.Conn
	r    *textproto.Reader
}

func dialRaw(t *testing.T, addr string) *rawLMTP {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	t.Cleanup(func() { conn.Close() })
	c := &rawLMTP{t: t, conn: conn, r: textproto.NewReader(bufio.NewReader(conn))}
	if code, msg := c.read(); code != 220 {
		t.Fatalf("greeting %d %s", code, msg)
	}
	return c
}

// read returns one (possibly multi-line) reply; code 0 means the
// connection ended.
func (c *rawLMTP) read() (int, string) {
	c.t.Helper()
	code, msg, err := c.r.ReadResponse(0)
	if err != nil && code == 0 {
		return 0, err.Error()
	}
	return code, msg
}

// cmd writes raw (a CRLF is added) and returns the reply.
func (c *rawLMTP) cmd(raw string) (int, string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(raw + "\r\n")); err != nil {
		return 0, err.Error()
	}
	return c.read()
}

// Input an MTA should never send, and some a broken or hostile client
// might, gets a clear error reply; the daemon keeps running and delivers
// the next message normally.
func TestBadLMTPInput(t *testing.T) {
	l := setup(t)
	const limit = 20000
	d := testbin.Start(t, config(l, "[mailboxes-db]", fmt.Sprintf("lmtp:\n  max_message_size: %d\n", limit)))
	const alice = "alice@example.org"

	stillServing := func(t *testing.T) {
		t.Helper()
		select {
		case <-d.Done():
			t.Fatalf("lmtpgate exited:\n%s", d.Output())
		default:
		}
		rr, dr, id := send(t, d.LMTP, []string{alice}, "after bad input")
		if rr[alice] != "" || dr[alice] != "" {
			t.Fatalf("normal delivery after bad input: RCPT %q DATA %q", rr[alice], dr[alice])
		}
		if n := count(t, l, 1, "user/alice", id); n != 1 {
			t.Fatalf("normal delivery after bad input: %d copies, want 1", n)
		}
	}
	// want is the class of the reply: 4 or 5.
	expect := func(t *testing.T, what string, code int, msg string, want int) {
		t.Helper()
		if code/100 != want || strings.TrimSpace(msg) == "" {
			t.Errorf("%s: reply %d %q, want a %dxx with a reason", what, code, msg, want)
		}
	}

	t.Run("garbage-commands", func(t *testing.T) {
		// Each on a connection of its own, followed there by a good
		// command: a bad line costs the client one error reply, not the
		// session.
		for _, tc := range []struct {
			lhlo bool // send LHLO first
			line string
			next string // a good command that must then succeed
		}{
			{false, "HELO mta.test", "LHLO mta.test"},                  // SMTP's greeting is not LMTP's
			{false, "MAIL FROM:<sender@example.org>", "LHLO mta.test"}, // before LHLO
			{false, "LHLO", "LHLO mta.test"},
			{true, "XYZZY plugh", "MAIL FROM:<sender@example.org>"},
			{true, "\x00\x01\x02\xff\xfe binary", "MAIL FROM:<sender@example.org>"},
			{true, "", "MAIL FROM:<sender@example.org>"},
			{true, "RCPT TO:<alice@example.org>", "MAIL FROM:<sender@example.org>"}, // before MAIL
			{true, "DATA", "MAIL FROM:<sender@example.org>"},                        // before MAIL
			{true, "MAIL FROM:sender-without-brackets", "MAIL FROM:<sender@example.org>"},
			{true, "MAIL FROM:<sender@example.org> SIZE=notanumber", "MAIL FROM:<sender@example.org>"},
		} {
			c := dialRaw(t, d.LMTP)
			if tc.lhlo {
				if code, msg := c.cmd("LHLO mta.test"); code != 250 {
					t.Fatalf("LHLO: %d %s", code, msg)
				}
			}
			code, msg := c.cmd(tc.line)
			if code == 0 {
				t.Fatalf("%q: connection ended: %s", tc.line, msg)
			}
			expect(t, fmt.Sprintf("%q", tc.line), code, msg, 5)
			if code, msg := c.cmd(tc.next); code != 250 {
				t.Errorf("%q after %q: %d %s, want 250", tc.next, tc.line, code, msg)
			}
			c.cmd("QUIT")
		}

		// After a few bad lines the session goes through a good
		// transaction, with a bad recipient among good ones.
		c := dialRaw(t, d.LMTP)
		c.cmd("LHLO mta.test")
		for _, line := range []string{"RCPT TO:<alice@example.org>", "NOOP", "XYZZY"} {
			c.cmd(line)
		}
		for _, step := range []struct {
			line string
			want int
		}{{"MAIL FROM:<sender@example.org>", 250}, {"RCPT TO:<alice@example.org>", 250}, {"RCPT TO:<<>>@@", 501}, {"DATA", 354}} {
			if code, msg := c.cmd(step.line); code != step.want {
				t.Fatalf("%q: %d %s, want %d", step.line, code, msg, step.want)
			}
		}
		id := fmt.Sprintf("<raw.%d@lmtpgate.test>", time.Now().UnixNano())
		if code, msg := c.cmd("Message-ID: " + id + "\r\nSubject: raw\r\n\r\nafter garbage\r\n."); code != 250 {
			t.Errorf("after DATA: %d %s", code, msg)
		}
		c.cmd("QUIT")
		if n := count(t, l, 1, "user/alice", id); n != 1 {
			t.Errorf("the message sent after garbage: %d copies, want 1", n)
		}

		// A client that only sends garbage is answered and then cut off.
		c = dialRaw(t, d.LMTP)
		var last int
		for i := 0; i < 50; i++ {
			code, _ := c.cmd("GARBAGE " + strings.Repeat("#", i))
			if code == 0 {
				break
			}
			expect(t, "repeated garbage", code, "x", 5)
			last = i
		}
		if last == 49 {
			t.Errorf("50 garbage lines and the connection is still open")
		}
		stillServing(t)
	})

	t.Run("overlong-command", func(t *testing.T) {
		c := dialRaw(t, d.LMTP)
		c.cmd("LHLO mta.test")
		code, msg := c.cmd("MAIL FROM:<" + strings.Repeat("a", 200<<10) + "@example.org>")
		expect(t, "a 200 KiB command line", code, msg, 5)
		stillServing(t)
	})

	t.Run("message-too-large", func(t *testing.T) {
		// Declared: refused at MAIL.
		c := dialRaw(t, d.LMTP)
		c.cmd("LHLO mta.test")
		code, msg := c.cmd(fmt.Sprintf("MAIL FROM:<sender@example.org> SIZE=%d", 2*limit))
		expect(t, "MAIL with SIZE over the limit", code, msg, 5)
		c.cmd("QUIT")

		// Undeclared: refused after DATA, for every recipient, and
		// nothing stored.
		rcpts := []string{alice, "carol@example.org"}
		rr, dr, id, err := sendMsg(d.LMTP, rcpts, "too large", "", 2*limit)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rcpts {
			if rr[r] != "" || !strings.HasPrefix(dr[r], "552 5.3.4") {
				t.Errorf("%s: RCPT %q DATA %q, want RCPT accepted and 552 5.3.4 after DATA", r, rr[r], dr[r])
			}
		}
		if n := count(t, l, 1, "user/alice", id); n != 0 {
			t.Errorf("user/alice holds %d copies of the oversized message, want 0", n)
		}
		if n := count(t, l, 2, "user/carol", id); n != 0 {
			t.Errorf("user/carol holds %d copies of the oversized message, want 0", n)
		}
		// Just under the limit still goes through.
		rr, dr, id, err = sendMsg(d.LMTP, []string{alice}, "just under", "", limit-1000)
		if err != nil {
			t.Fatal(err)
		}
		if rr[alice] != "" || dr[alice] != "" || count(t, l, 1, "user/alice", id) != 1 {
			t.Errorf("a message under the limit: RCPT %q DATA %q, want one copy", rr[alice], dr[alice])
		}
		stillServing(t)
	})

	t.Run("dropped-mid-message", func(t *testing.T) {
		// The client vanishes inside DATA: nothing may be delivered from
		// the partial message.
		c := dialRaw(t, d.LMTP)
		c.cmd("LHLO mta.test")
		c.cmd("MAIL FROM:<sender@example.org>")
		c.cmd("RCPT TO:<alice@example.org>")
		if code, _ := c.cmd("DATA"); code != 354 {
			t.Fatalf("DATA: %d", code)
		}
		id := fmt.Sprintf("<partial.%d@lmtpgate.test>", time.Now().UnixNano())
		fmt.Fprintf(c.conn, "Message-ID: %s\r\nSubject: partial\r\n\r\nhalf a mess", id)
		c.conn.Close()
		stillServing(t)
		if n := count(t, l, 1, "user/alice", id); n != 0 {
			t.Errorf("a message cut off mid-DATA was stored %d times, want 0", n)
		}
	})
}
