package front

import (
	"fmt"
	"strings"
	"testing"
)

// bodyOf returns a stored message's body after the trace headers lmtpgate
// adds (Return-Path and the Received line, which ends with its date).
func bodyOf(t *testing.T, stored []byte) string {
	t.Helper()
	_, rest, ok := strings.Cut(string(stored), ";\r\n\t")
	if !ok {
		t.Fatalf("no Received line in %q", stored)
	}
	_, rest, _ = strings.Cut(rest, "\r\n")
	return rest
}

// A message sent with DATA is read past go-smtp's reader; what the MTA
// pipelines after the final dot (the next transaction, in the same
// packet) is handed back to go-smtp intact, and both messages arrive as
// sent.
func TestRawDataPipelinedAfterTheDot(t *testing.T) {
	h := newHarness(t)
	c := h.raw()
	c.startData("s@example.org", "alice@x")
	first := "Subject: one\r\n\r\n..a doubled dot\r\n.\r\n"
	second := "Subject: two\r\n\r\nsecond\r\n"
	fmt.Fprintf(c.tp.W, "%sMAIL FROM:<s@example.org>\r\nRCPT TO:<alice@x>\r\nDATA\r\n", first)
	c.tp.W.Flush()
	c.expect(250) // the first message
	c.expect(250) // MAIL
	c.expect(250) // RCPT
	c.expect(354)
	fmt.Fprintf(c.tp.W, "%s.\r\nQUIT\r\n", second)
	c.tp.W.Flush()
	c.expect(250)
	c.expect(221)
	msgs := h.be1.Messages()
	if len(msgs) != 2 {
		t.Fatalf("%d messages at the backend, want 2", len(msgs))
	}
	if got := bodyOf(t, msgs[0].Body); got != "Subject: one\r\n\r\n.a doubled dot\r\n" {
		t.Errorf("first message %q", got)
	}
	if got := bodyOf(t, msgs[1].Body); got != "Subject: two\r\n\r\nsecond\r\n" {
		t.Errorf("second message %q", got)
	}
	if n := h.srv.nraw.Load(); n != 2 {
		t.Errorf("%d messages read past go-smtp's reader, want 2", n)
	}
}

// A client that sends its message without waiting for 354: what it sent
// after the DATA line was held back from go-smtp, and is the start of the
// message read past go-smtp's reader, which arrives intact.
func TestRawDataWithTheBodyBeforeThe354(t *testing.T) {
	h := newHarness(t)
	c := h.raw()
	fmt.Fprintf(c.tp.W, "MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@x>\r\nDATA\r\nSubject: eager\r\n\r\n..early\r\n.\r\nQUIT\r\n")
	c.tp.W.Flush()
	c.expect(250)
	c.expect(250)
	c.expect(354)
	c.expect(250)
	c.expect(221)
	msgs := h.be1.Messages()
	if len(msgs) != 1 || bodyOf(t, msgs[0].Body) != "Subject: eager\r\n\r\n.early\r\n" {
		t.Fatalf("messages %+v", msgs)
	}
	if n := h.srv.nraw.Load(); n != 1 {
		t.Errorf("%d messages read past go-smtp's reader, want 1", n)
	}
}

// An oversized message read past go-smtp is refused with 552 only after
// it was read to its end, so the session goes on in step: the next
// transaction on the same connection is delivered.
func TestRawDataOversizeKeepsTheSessionInStep(t *testing.T) {
	h := newHarness(t, func(o *Options, _ *Runtime) { o.Config.MaxMessageSize = 1000 })
	c := h.raw()
	c.startData("s@example.org", "alice@x")
	// Lines that look like commands, beyond the limit: they must never
	// be taken for commands.
	fmt.Fprintf(c.tp.W, "Subject: big\r\n\r\n%s", strings.Repeat("RSET\r\nMAIL FROM:<evil@x>\r\n", 200))
	fmt.Fprintf(c.tp.W, ".\r\n")
	c.tp.W.Flush()
	if code, msg := c.reply(); code != 552 {
		t.Fatalf("oversized message: %d %q, want 552", code, msg)
	}
	c.startData("s@example.org", "alice@x")
	c.cmd("Subject: small\r\n\r\nok\r\n.")
	c.expect(250)
	msgs := h.be1.Messages()
	if len(msgs) != 1 || bodyOf(t, msgs[0].Body) != "Subject: small\r\n\r\nok\r\n" {
		t.Fatalf("messages at the backend: %d, want only the small one", len(msgs))
	}
}
