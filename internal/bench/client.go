package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// The load generator uses this small LMTP client instead of go-smtp's: it
// writes pre-built payloads without copying them through a dot-writer,
// pipelines MAIL/RCPT/DATA when the server offers PIPELINING (RFC 2920, as
// Postfix's LMTP client does) and allocates almost nothing per message, so
// the generator costs little CPU next to the proxy under test on a shared
// machine. BenchmarkClient* in client_test.go compares the two.

// Reply is one LMTP reply: its code and the text of its last line.
type Reply struct {
	Code int
	Text string
}

// ProtocolError is a reply the client cannot parse or a sequence it does not
// expect; the connection is unusable after it.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "lmtp: " + e.Msg }

// Client is one LMTP connection.
type Client struct {
	conn       net.Conn
	r          *bufio.Reader
	w          *bufio.Writer
	timeout    time.Duration
	Pipelining bool // the server offered PIPELINING and it is in use
	ext        map[string]string
	line       []byte
}

// SplitTarget turns "unix:/path", "tcp:host:port" or "host:port" into a
// network and address for net.Dial.
func SplitTarget(target string) (network, addr string) {
	switch {
	case strings.HasPrefix(target, "unix:"):
		return "unix", strings.TrimPrefix(target, "unix:")
	case strings.HasPrefix(target, "tcp:"):
		return "tcp", strings.TrimPrefix(target, "tcp:")
	}
	return "tcp", target
}

// Dial connects to target and reads the greeting. timeout bounds the
// connect and, later, each protocol phase (one command and its replies, or
// the body and the per-recipient replies).
func Dial(ctx context.Context, target string, timeout time.Duration) (*Client, error) {
	network, addr := SplitTarget(target)
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := &Client{
		conn:    conn,
		r:       bufio.NewReaderSize(conn, 4096),
		w:       bufio.NewWriterSize(conn, 64<<10),
		timeout: timeout,
	}
	c.deadline()
	rep, err := c.readReply()
	if err != nil {
		conn.Close()
		return nil, err
	}
	if rep.Code != 220 {
		conn.Close()
		return nil, fmt.Errorf("lmtp greeting: %d %s", rep.Code, rep.Text)
	}
	return c, nil
}

// Close closes the connection without QUIT.
func (c *Client) Close() error { return c.conn.Close() }

// Quit sends QUIT and closes.
func (c *Client) Quit() error {
	c.deadline()
	c.w.WriteString("QUIT\r\n")
	c.w.Flush()
	c.readReply()
	return c.conn.Close()
}

func (c *Client) deadline() {
	if c.timeout > 0 {
		c.conn.SetDeadline(time.Now().Add(c.timeout))
	}
}

// Hello sends LHLO (RFC 2033 section 4.1) and records the extensions.
// Pipelining is turned on if the server offers it and pipelining is true.
func (c *Client) Hello(name string, pipelining bool) error {
	c.deadline()
	c.w.WriteString("LHLO " + name + "\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	c.ext = map[string]string{}
	for {
		line, err := c.readLine()
		if err != nil {
			return err
		}
		code, more, text, err := parseReplyLine(line)
		if err != nil {
			return err
		}
		if code != 250 {
			return fmt.Errorf("LHLO: %d %s", code, text)
		}
		k, v, _ := strings.Cut(string(text), " ")
		c.ext[strings.ToUpper(k)] = v
		if !more {
			break
		}
	}
	_, ok := c.ext["PIPELINING"]
	c.Pipelining = pipelining && ok
	return nil
}

// Extension reports whether the server offered ext in its LHLO reply.
func (c *Client) Extension(ext string) bool {
	_, ok := c.ext[strings.ToUpper(ext)]
	return ok
}

// AuthPlain authenticates with SASL PLAIN (RFC 4616) and an empty
// authorization identity, as Cyrus's frontend does towards its backends.
func (c *Client) AuthPlain(user, pass string) error {
	c.deadline()
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	c.w.WriteString("AUTH PLAIN " + resp + "\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	rep, err := c.readReply()
	if err != nil {
		return err
	}
	if rep.Code != 235 {
		return fmt.Errorf("AUTH PLAIN: %d %s", rep.Code, rep.Text)
	}
	return nil
}

// Send runs one transaction: MAIL FROM, one RCPT per recipient, DATA, the
// header and body, then one reply per accepted recipient (RFC 2033 section
// 4.2). codes receives one reply code per recipient, in order: the RCPT
// reply if it was refused, else the post-DATA reply for it. body must be in
// wire form ending with ".\r\n" (see Body). An error means the connection
// is unusable; codes then holds 0 for every recipient without a reply.
func (c *Client) Send(from string, rcpts []string, header, body []byte, codes []int) error {
	for i := range codes {
		codes[i] = 0
	}
	c.deadline()
	// Written in pieces: the load generator must not allocate per
	// message, or it would count in lmtpgate's allocations per message
	// (BenchmarkDeliverNull).
	c.w.WriteString("MAIL FROM:<")
	c.w.WriteString(from)
	c.w.WriteString(">\r\n")
	var mail Reply
	var err error
	if !c.Pipelining {
		if mail, err = c.flushRead(); err != nil {
			return err
		}
		if mail.Code/100 != 2 {
			for i := range rcpts {
				codes[i] = mail.Code
			}
			return nil
		}
	}
	accepted := 0
	for i, rc := range rcpts {
		c.w.WriteString("RCPT TO:<")
		c.w.WriteString(rc)
		c.w.WriteString(">\r\n")
		if !c.Pipelining {
			rep, err := c.flushRead()
			if err != nil {
				return err
			}
			codes[i] = rep.Code
			if rep.Code/100 == 2 {
				accepted++
			}
		}
	}
	if !c.Pipelining && accepted == 0 {
		return c.reset()
	}
	c.w.WriteString("DATA\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	if c.Pipelining {
		if mail, err = c.readReply(); err != nil {
			return err
		}
		for i := range rcpts {
			rep, err := c.readReply()
			if err != nil {
				return err
			}
			codes[i] = rep.Code
			if mail.Code/100 != 2 {
				codes[i] = mail.Code
			} else if rep.Code/100 == 2 {
				accepted++
			}
		}
	}
	data, err := c.readReply()
	if err != nil {
		return err
	}
	if data.Code != 354 {
		for i := range rcpts {
			if codes[i]/100 == 2 {
				codes[i] = data.Code
			}
		}
		if mail.Code/100 == 2 {
			return c.reset()
		}
		return nil
	}
	if accepted == 0 {
		// A server that says 354 with no valid recipient breaks RFC
		// 2920 section 3.1; end the data and its single reply.
		c.w.WriteString(".\r\n")
		_, err := c.flushRead()
		return err
	}
	c.deadline()
	c.w.Write(header)
	c.w.Write(body)
	if err := c.w.Flush(); err != nil {
		return err
	}
	for i := range rcpts {
		if codes[i]/100 != 2 {
			continue
		}
		rep, err := c.readReply()
		if err != nil {
			for j := i; j < len(rcpts); j++ {
				if codes[j]/100 == 2 {
					codes[j] = 0
				}
			}
			return err
		}
		codes[i] = rep.Code
	}
	return nil
}

// reset ends a transaction that did not reach the data phase, so the next
// MAIL is not refused as nested (RFC 5321 section 4.1.1.5).
func (c *Client) reset() error {
	c.w.WriteString("RSET\r\n")
	rep, err := c.flushRead()
	if err != nil {
		return err
	}
	if rep.Code/100 != 2 {
		return fmt.Errorf("RSET: %d %s", rep.Code, rep.Text)
	}
	return nil
}

func (c *Client) flushRead() (Reply, error) {
	if err := c.w.Flush(); err != nil {
		return Reply{}, err
	}
	return c.readReply()
}

// readReply reads a possibly multi-line reply (RFC 5321 section 4.2).
func (c *Client) readReply() (Reply, error) {
	for {
		line, err := c.readLine()
		if err != nil {
			return Reply{}, err
		}
		code, more, text, err := parseReplyLine(line)
		if err != nil {
			return Reply{}, err
		}
		if !more {
			// A reply's text is kept only when it is not a success:
			// callers show it for failures, and the fast path stays
			// free of allocations.
			r := Reply{Code: code}
			if code/100 != 2 && code != 354 {
				r.Text = string(text)
			}
			return r, nil
		}
	}
}

// maxReplyLine bounds a reply line; RFC 5321 section 4.5.3.1.5 allows 512.
const maxReplyLine = 4096

func (c *Client) readLine() ([]byte, error) {
	c.line = c.line[:0]
	for {
		frag, err := c.r.ReadSlice('\n')
		c.line = append(c.line, frag...)
		if len(c.line) > maxReplyLine {
			return nil, &ProtocolError{"reply line too long"}
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return c.line, nil
}

// parseReplyLine splits "250-text\r\n" or "250 text\r\n".
func parseReplyLine(line []byte) (code int, more bool, text []byte, err error) {
	s := bytes.TrimRight(line, "\r\n")
	if len(s) < 3 || (len(s) > 3 && s[3] != ' ' && s[3] != '-') {
		return 0, false, nil, &ProtocolError{fmt.Sprintf("bad reply line %q", s)}
	}
	for i := range 3 {
		if s[i] < '0' || s[i] > '9' {
			return 0, false, nil, &ProtocolError{fmt.Sprintf("bad reply code %q", s)}
		}
		code = code*10 + int(s[i]-'0')
	}
	if code < 200 || code > 599 {
		return 0, false, nil, &ProtocolError{fmt.Sprintf("reply code out of range %q", s)}
	}
	if len(s) > 3 {
		more, text = s[3] == '-', s[4:]
	}
	return code, more, text, nil
}
