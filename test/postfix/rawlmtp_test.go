package postfix

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// rawClient speaks LMTP line by line, for what no client library sends:
// a truncated BDAT, a NUL in a command, a line of 10 MB.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	r    *textproto.Reader
}

// dialRaw connects and reads the greeting, which must be 220.
func dialRaw(t *testing.T, network, addr string) *rawClient {
	t.Helper()
	c := dialRawNoGreeting(t, network, addr)
	if code, msg := c.read(); code != 220 {
		fatalf(t, "greeting from %s: %d %s", addr, code, msg)
	}
	return c
}

func dialRawNoGreeting(t *testing.T, network, addr string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// A bound against a hang only.
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, r: textproto.NewReader(bufio.NewReaderSize(conn, 64<<10))}
}

// read returns one (possibly multi-line) reply; code 0 means no reply
// could be read, and msg then says why (EOF, a reset).
func (c *rawClient) read() (int, string) {
	code, msg, err := c.r.ReadResponse(0)
	if err != nil && code == 0 {
		return 0, err.Error()
	}
	return code, msg
}

// cmd writes line and CRLF and reads the reply.
func (c *rawClient) cmd(line string) (int, string) {
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		return 0, err.Error()
	}
	return c.read()
}

// must runs cmd and fails the test unless the reply has code want.
func (c *rawClient) must(line string, want int) string {
	c.t.Helper()
	code, msg := c.cmd(line)
	if code != want {
		fatalf(c.t, "%.60q: %d %s, want %d", line, code, msg, want)
	}
	return msg
}

// transaction opens MAIL and RCPTs (each must be accepted).
func (c *rawClient) transaction(rcpts ...string) {
	c.t.Helper()
	c.must("LHLO raw.test", 250)
	c.must("MAIL FROM:<"+sender+">", 250)
	for _, r := range rcpts {
		c.must("RCPT TO:<"+r+">", 250)
	}
}

// isReset reports whether err is the peer resetting the connection (as
// opposed to closing it after a reply).
func isReset(err error) bool {
	if err == nil {
		return false
	}
	var ne *net.OpError
	if errors.As(err, &ne) {
		s := ne.Err.Error()
		return strings.Contains(s, "reset") || strings.Contains(s, "broken pipe")
	}
	return strings.Contains(err.Error(), "reset")
}

// rawHeader is the head of a message sent by the raw client.
func rawHeader(m *mail) string {
	return fmt.Sprintf("From: %s\r\nSubject: %s\r\nMessage-ID: %s\r\n\r\n", sender, m.subject, m.id)
}
