package front

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/backend/fakelmtp"
)

// rawClient is an LMTP client that sends exactly the bytes a test gives.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	tp   *textproto.Conn
}

func (h *harness) raw() *rawClient {
	h.t.Helper()
	conn, err := net.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	h.t.Cleanup(func() { conn.Close() })
	c := &rawClient{t: h.t, conn: conn, tp: textproto.NewConn(conn)}
	c.expect(220)
	c.cmd("LHLO mta.test")
	c.expect(250)
	return c
}

func (c *rawClient) cmd(format string, a ...any) {
	c.t.Helper()
	if err := c.tp.PrintfLine(format, a...); err != nil {
		c.t.Fatal(err)
	}
}

// reply reads one reply and returns its code and text.
func (c *rawClient) reply() (int, string) {
	c.t.Helper()
	code, msg, err := c.tp.ReadResponse(0)
	if err != nil && code == 0 {
		c.t.Fatalf("reading a reply: %v", err)
	}
	return code, msg
}

func (c *rawClient) expect(code int) string {
	c.t.Helper()
	got, msg := c.reply()
	if got != code {
		c.t.Fatalf("reply %d %q, want %d", got, msg, code)
	}
	return msg
}

// startData sends MAIL FROM:<from>, RCPT TO:<to> and DATA, each expected
// to succeed, one after the other: the message may follow.
func (c *rawClient) startData(from, to string) {
	c.t.Helper()
	c.cmd("MAIL FROM:<%s>", from)
	c.expect(250)
	c.cmd("RCPT TO:<%s>", to)
	c.expect(250)
	c.cmd("DATA")
	c.expect(354)
}

// A BDAT LAST chunk cut short by a closed connection is not a message:
// nothing may reach a backend (go-smtp's chunk reader takes the early EOF
// for the end of the chunk).
func TestTruncatedBDATIsNotDelivered(t *testing.T) {
	h := newHarness(t)
	c := h.raw()
	c.cmd("MAIL FROM:<s@example.org>")
	c.expect(250)
	c.cmd("RCPT TO:<alice@x>")
	c.expect(250)
	part := "Subject: cut\r\n\r\nonly part of it\r\n"
	fmt.Fprintf(c.tp.W, "BDAT 1000 LAST\r\n%s", part)
	c.tp.W.Flush()
	c.conn.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c.conn)
	// Give the server the time to (wrongly) deliver before looking.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(h.logs.String(), "rcpt=alice@x") {
		time.Sleep(10 * time.Millisecond)
	}
	for _, m := range h.be1.Messages() {
		if !m.Dropped {
			t.Fatalf("a truncated BDAT message was delivered: %q", m.Body)
		}
	}
	if strings.Contains(h.logs.String(), `msg="delivered alice@x`) {
		t.Fatal("the log says a truncated message was delivered")
	}
}

// A DATA cut short is not delivered either (a control for the test above).
func TestTruncatedDATAIsNotDelivered(t *testing.T) {
	h := newHarness(t)
	c := h.raw()
	c.startData("s@example.org", "alice@x")
	io.WriteString(c.conn, "Subject: cut\r\n\r\nno end")
	c.conn.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c.conn)
	time.Sleep(100 * time.Millisecond)
	for _, m := range h.be1.Messages() {
		if !m.Dropped {
			t.Fatalf("a truncated DATA message was delivered: %q", m.Body)
		}
	}
}

// Addresses with control characters are refused at the command with a
// permanent 501, never accepted and then deferred for days.
func TestControlCharactersRefusedAtTheCommand(t *testing.T) {
	h := newHarness(t)
	c := h.raw()
	c.cmd("MAIL FROM:<ev\x00il@example.org>")
	if code, msg := c.reply(); code != 501 {
		t.Fatalf("MAIL with NUL: %d %q, want 501", code, msg)
	}
	c.cmd("MAIL FROM:<s@example.org>")
	c.expect(250)
	c.cmd("RCPT TO:<al\x01ice@x>")
	if code, msg := c.reply(); code != 501 {
		t.Fatalf("RCPT with a control character: %d %q, want 501", code, msg)
	}
	c.cmd("RCPT TO:<alice@x>")
	c.expect(250)
}

// RFC 5321 §4.1.4: MAIL inside a transaction is a sequence error (Cyrus
// answers 503), not a silent restart that drops the recipients so far.
func TestNestedMAILIsRefused(t *testing.T) {
	h := newHarness(t)
	c := h.raw()
	c.cmd("MAIL FROM:<s@example.org>")
	c.expect(250)
	c.cmd("RCPT TO:<alice@x>")
	c.expect(250)
	c.cmd("MAIL FROM:<other@example.org>")
	if code, _ := c.reply(); code != 503 {
		t.Fatalf("nested MAIL: %d, want 503", code)
	}
	c.cmd("DATA")
	c.expect(354)
	io.WriteString(c.conn, "Subject: x\r\n\r\nbody\r\n.\r\n")
	c.expect(250)
	m := h.be1.Messages()
	if len(m) != 1 || m[0].From != "s@example.org" {
		t.Fatalf("backend got %+v, want the first transaction intact", m)
	}
}

// An overlong line gets a reply, not a TCP reset: in DATA the message is
// refused with 554 5.6.0 after it was read to its end, and the session goes
// on; an overlong command line gets 500 once the client stopped sending.
func TestOverlongLinesGetAReply(t *testing.T) {
	h := newHarness(t, func(o *Options, _ *Runtime) { o.Config.MaxMessageSize = 0 })
	c := h.raw()
	c.startData("s@example.org", "alice@x")
	go func() {
		w := bufio.NewWriter(c.conn)
		w.WriteString("Subject: long\r\n\r\n")
		chunk := strings.Repeat("L", 64<<10)
		for range 10 << 20 / len(chunk) {
			w.WriteString(chunk)
		}
		w.WriteString("\r\nmore\r\n.\r\n")
		w.Flush()
	}()
	if code, msg := c.reply(); code != 554 || !strings.Contains(msg, "998") {
		t.Fatalf("10 MB line in DATA: %d %q, want 554 naming the limit", code, msg)
	}
	// The session is still usable.
	c.cmd("NOOP")
	c.expect(250)
	if n := len(h.be1.Messages()); n != 0 {
		for _, m := range h.be1.Messages() {
			if !m.Dropped {
				t.Fatalf("a message with an overlong line was delivered")
			}
		}
	}
	// A 10 MB command line.
	go func() {
		w := bufio.NewWriter(c.conn)
		w.WriteString("NOOP ")
		chunk := strings.Repeat("C", 64<<10)
		for range 10 << 20 / len(chunk) {
			w.WriteString(chunk)
		}
		w.WriteString("\r\n")
		w.Flush()
	}()
	if code, _ := c.reply(); code != 500 {
		t.Fatalf("10 MB command line: %d, want 500", code)
	}
}

// The smuggling attempt of the security review: a line of 8,189 octets
// followed by ".\r\n" and commands would end the data early at a Cyrus
// backend, which reads lines in 8 KiB pieces. The message is refused and
// the backend sees nothing of it.
func TestSmugglingLineIsRefused(t *testing.T) {
	h := newHarness(t)
	body := "Subject: smuggle\r\n\r\n" + strings.Repeat("B", 8189) + "\r\n.\r\nMAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<alice@internal>\r\nDATA\r\nevil\r\n"
	_, dataRep := h.send(h.client(), []string{"bob@x"}, body)
	if dataRep["bob@x"] != "554 5.6.0" {
		t.Fatalf("reply %q, want 554 5.6.0", dataRep["bob@x"])
	}
	for _, m := range h.be1.Messages() {
		if !m.Dropped || m.From == "smuggled@evil.test" {
			t.Fatalf("the backend took something: %+v", m)
		}
	}
}

// The final reply of a delivered recipient is 2.1.5, names the mailbox and
// the backend, and carries the session id the log has; a backend's own
// permanent content refusal reaches the MTA with its text.
func TestFinalReplyTexts(t *testing.T) {
	h := newHarness(t)
	h.be2.SetDataReply("carol@internal", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message contains NUL characters"})
	c := h.raw()
	c.cmd("MAIL FROM:<s@example.org>")
	c.expect(250)
	c.cmd("RCPT TO:<alice@x>")
	c.expect(250)
	c.cmd("RCPT TO:<carol@x>")
	c.expect(250)
	c.cmd("DATA")
	c.expect(354)
	io.WriteString(c.conn, "Subject: x\r\n\r\nbody\r\n.\r\n")
	code, alice := c.reply()
	if code != 250 || !strings.HasPrefix(alice, "2.1.5 <alice@x> Delivered to user.alice on be1 SESSIONID=<") {
		t.Fatalf("alice: %d %q", code, alice)
	}
	sid := alice[strings.Index(alice, "SESSIONID=<")+len("SESSIONID=<") : len(alice)-1]
	if !strings.Contains(h.logs.String(), "session="+sid) {
		t.Errorf("session id %q is not the log's", sid)
	}
	code, carol := c.reply()
	if code != 554 || !strings.Contains(carol, "5.6.0") || !strings.Contains(carol, "Message contains NUL characters") || !strings.Contains(carol, "be2") {
		t.Fatalf("carol: %d %q, want the backend's 554 5.6.0 text naming be2", code, carol)
	}
}

// lmtp.max_connections: one more connection gets 421 4.3.2 at once.
func TestMaxConnections(t *testing.T) {
	h := newHarness(t, func(o *Options, _ *Runtime) { o.Config.MaxConnections = 2 })
	for range 2 {
		h.raw()
	}
	conn, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if !strings.HasPrefix(line, "421 4.3.2") {
		t.Fatalf("connection over the limit: %q %v, want 421 4.3.2", line, err)
	}
	if st := h.srv.Stats(); st.Refused != 1 {
		t.Errorf("refused = %d", st.Refused)
	}
}

// A quoted local part reaches the backend quoted, and Return-Path keeps it.
func TestQuotedSenderIsForwardedQuoted(t *testing.T) {
	h := newHarness(t)
	c := h.raw()
	c.cmd(`MAIL FROM:<"x> AUTH=admin SIZE=1"@y.test>`)
	c.expect(250)
	c.cmd("RCPT TO:<alice@x>")
	c.expect(250)
	c.cmd("DATA")
	c.expect(354)
	io.WriteString(c.conn, "Subject: q\r\n\r\nbody\r\n.\r\n")
	c.expect(250)
	m := h.be1.Messages()
	if len(m) != 1 {
		t.Fatalf("backend messages %d", len(m))
	}
	if m[0].From != "x> AUTH=admin SIZE=1@y.test" || m[0].Auth == nil || *m[0].Auth != "" {
		t.Errorf("backend MAIL FROM %q AUTH %v: the local part was not re-quoted", m[0].From, m[0].Auth)
	}
	if !strings.HasPrefix(string(m[0].Body), `Return-Path: <"x> AUTH=admin SIZE=1"@y.test>`) {
		t.Errorf("Return-Path: %q", strings.SplitN(string(m[0].Body), "\r\n", 2)[0])
	}
}

// MAIL's AUTH= decides the 'p' right on shared folders only on a trusted
// listener; elsewhere the poster is anonymous.
func TestAuthParamTrustedOnlyWhereConfigured(t *testing.T) {
	for _, trusted := range []bool{true, false} {
		h := newHarness(t)
		h.src.entries["bb.boss"] = active("bb.boss", "be1", "boss@example.org\tlrsp\t")
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go h.srv.Serve(l, trusted)
		h.addr = l.Addr().String()
		c := h.raw()
		c.cmd("MAIL FROM:<s@example.org> AUTH=boss@example.org")
		c.expect(250)
		c.cmd("RCPT TO:<+bb/boss@x>")
		code, _ := c.reply()
		switch {
		case trusted && code != 250:
			t.Errorf("trusted listener: RCPT %d, want 250 (boss has p)", code)
		case !trusted && code == 250:
			t.Errorf("untrusted listener: AUTH= was believed")
		}
	}
}

// A backend that accepts TCP but never greets costs its recipients one
// connect timeout; after that they are deferred at RCPT time at once,
// while the other backend's recipients are delivered as usual.
func TestHungBackendIsIsolated(t *testing.T) {
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	go func() {
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c)
		}
	}()
	h := newHarness(t)
	// be2 is the hung one; set before any session reads the Runtime.
	cfg := backend.DefaultConfig()
	cfg.Addresses = map[string]string{"be1": h.be1.Addr(), "be2": hung.Addr().String()}
	cfg.AuthName, cfg.Password = fakelmtp.User, fakelmtp.Password
	cfg.ConnectTimeout, cfg.CommandTimeout = 300*time.Millisecond, 2*time.Second
	cfg.BackoffMin, cfg.BackoffMax = time.Hour, time.Hour
	pool := backend.NewPool(cfg, nil)
	t.Cleanup(func() { pool.Close() })
	h.holder.Current().Backends = pool

	// First transaction: carol waits one connect timeout and is deferred;
	// alice is delivered.
	rcptRep, dataRep := h.send(h.client(), []string{"alice@x", "carol@x"}, body)
	if dataRep["alice@x"] != "" || !strings.HasPrefix(dataRep["carol@x"], "451") {
		t.Fatalf("first transaction: RCPT %v DATA %v", rcptRep, dataRep)
	}
	// Later transactions: carol is deferred at RCPT, alice delivered.
	for range 3 {
		rcptRep, dataRep = h.send(h.client(), []string{"alice@x", "carol@x"}, body)
		if rcptRep["carol@x"] != "451 4.4.3" || dataRep["alice@x"] != "" {
			t.Fatalf("with the breaker open: RCPT %v DATA %v", rcptRep, dataRep)
		}
	}
	if n := len(h.be1.Messages()); n != 4 {
		t.Errorf("be1 got %d messages, want 4", n)
	}
}

// With verify_rcpt the backend's RCPT answer is the MTA's RCPT answer.
func TestVerifyRcpt(t *testing.T) {
	h := newHarness(t, func(_ *Options, rt *Runtime) { rt.VerifyRcpt = true })
	h.be1.SetRcptReply("alice@internal", fakelmtp.OverQuotaTemp)
	rcptRep, dataRep := h.send(h.client(), []string{"alice@x", "bob@x"}, body)
	if rcptRep["alice@x"] != "452 4.2.2" || rcptRep["bob@x"] != "" || dataRep["bob@x"] != "" {
		t.Fatalf("RCPT %v DATA %v", rcptRep, dataRep)
	}
}

// A stop answers 421 (RFC 5321 §3.8) to a client it waits on, idle,
// paused inside a transaction, or stopped in the middle of its message
// once the stop's time is up, rather than closing without a word.
func TestShutdownSays421(t *testing.T) {
	h := newHarness(t)
	idle := h.raw()
	paused := h.raw()
	paused.cmd("MAIL FROM:<s@example.org>")
	paused.expect(250)
	paused.cmd("RCPT TO:<alice@x>")
	paused.expect(250)
	midData := h.raw()
	midData.cmd("MAIL FROM:<s@example.org>")
	midData.expect(250)
	midData.cmd("RCPT TO:<alice@x>")
	midData.expect(250)
	midData.cmd("DATA")
	midData.expect(354)
	midData.cmd("Subject: the client stops here, before the final dot")
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		h.srv.Shutdown(ctx)
		close(done)
	}()
	if code, msg := idle.reply(); code != 421 {
		t.Errorf("idle session at stop: %d %q, want 421", code, msg)
	}
	if code, msg := paused.reply(); code != 421 {
		t.Errorf("paused transaction at stop: %d %q, want 421", code, msg)
	}
	if code, msg := midData.reply(); code != 421 {
		t.Errorf("message cut off at stop: %d %q, want 421", code, msg)
	}
	<-done
	if len(h.be1.Messages()) != 0 {
		t.Error("the paused transaction was delivered")
	}
}

// FuzzBodyThroughFront feeds arbitrary bodies through the front end to a
// backend: whatever the body, the backend ends up with exactly one
// well-formed transaction holding exactly the normalised body (CR LF line
// ends, lone CRs dropped), or, for a body with a line over 998 octets,
// nothing at all. No body can end the data early or add a command.
func FuzzBodyThroughFront(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nhello\r\n.leading dot\r\n"))
	f.Add([]byte("a\n.\nMAIL FROM:<x@y>\n"))
	f.Add([]byte(strings.Repeat("B", 8189) + "\r\n.\r\nMAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<alice@internal>\r\nDATA\r\n"))
	f.Add([]byte("x\r.\r\n\r\n..\r\n"))
	h := newHarness(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		h.t = t // inputs run one at a time in a process
		before := len(h.be1.Messages())
		txBefore := h.be1.Transactions()
		c := h.client()
		_, dataRep := h.send(c, []string{"alice@x"}, string(body))
		c.Quit()
		msgs := h.be1.Messages()[before:]
		if got := dataRep["alice@x"]; got == "554 5.6.0" {
			for _, m := range msgs {
				if !m.Dropped {
					t.Fatalf("a refused body reached the backend: %q", m.Body)
				}
			}
			return
		} else if got != "" {
			t.Fatalf("reply %q", got)
		}
		if len(msgs) != 1 || h.be1.Transactions()-txBefore != 1 {
			t.Fatalf("backend saw %d messages in %d transactions, want 1", len(msgs), h.be1.Transactions()-txBefore)
		}
		_, stored, _ := strings.Cut(string(msgs[0].Body), ";\r\n\t") // after the Received line's date
		if _, stored, _ = strings.Cut(stored, "\r\n"); stored != normalized(body) {
			t.Fatalf("stored body %q, want %q", stored, normalized(body))
		}
	})
}

// normalized is what a backend must store of a body sent through DATA:
// go-smtp's client dot-stuffs and a receiving server unstuffs, then our
// wire form ends every line in CR LF and drops lone CRs.
func normalized(body []byte) string {
	s := string(body)
	if s == "" {
		// go-smtp's client sends an empty body as one empty line.
		return "\r\n"
	}
	var out strings.Builder
	for s != "" {
		line, rest, found := strings.Cut(s, "\n")
		out.WriteString(strings.ReplaceAll(line, "\r", ""))
		out.WriteString("\r\n")
		s = rest
		if !found {
			break
		}
	}
	return out.String()
}
