// Package imapc is a small IMAP4rev1 client (RFC 3501) for the test lab: just
// enough to manage mailboxes on a Cyrus backend as an admin and read messages
// back for verification. It speaks quoted strings and literals (sending
// non-synchronising literals, RFC 7888 LITERAL+, which Cyrus advertises) and
// parses responses into a small value tree. It is not a general IMAP client:
// no IDLE, no untagged-response dispatch beyond what a command collects.
package imapc

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// maxLiteral bounds a literal the server may send; messages in the lab are
// small and a bigger length means a broken stream.
const maxLiteral = 64 << 20

// Atom is an unquoted IMAP atom (also NIL, numbers and flags such as \Seen).
type Atom string

// List is a parenthesised list.
type List []any

// Response is one server response line, literals included. Tag is "*" for
// untagged data, "+" for a continuation request, else the command tag.
// For status responses (OK, NO, BAD, BYE, PREAUTH) Status holds the word and
// Text the rest of the line; otherwise Fields holds the parsed values after
// the tag (e.g. [3 FETCH (...)] or [LIST (...) "/" name]).
type Response struct {
	Tag    string
	Status string
	Text   string
	Fields []any
}

// StatusError is a NO or BAD completion of a command.
type StatusError struct {
	Command string
	Status  string
	Text    string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("imap %s: %s %s", e.Command, e.Status, e.Text)
}

// Client is one IMAP connection. It is not safe for concurrent use.
type Client struct {
	conn     net.Conn
	r        *bufio.Reader
	tag      int
	Greeting string
	// Timeout bounds each command (write and all reads up to its
	// completion) when the context has no earlier deadline.
	Timeout time.Duration
}

// Dial connects to addr and reads the greeting. An untagged BYE greeting is
// an error.
func Dial(ctx context.Context, addr string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &Client{conn: conn, r: bufio.NewReader(conn), Timeout: 30 * time.Second}
	c.setDeadline(ctx)
	resp, err := c.readResponse()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("imap greeting: %w", err)
	}
	if resp.Tag != "*" || (resp.Status != "OK" && resp.Status != "PREAUTH") {
		conn.Close()
		return nil, fmt.Errorf("imap greeting: %s %s", resp.Status, resp.Text)
	}
	c.Greeting = resp.Text
	return c, nil
}

// Close closes the connection without LOGOUT.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) setDeadline(ctx context.Context) {
	dl := time.Now().Add(c.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = c.conn.SetDeadline(dl)
}

// Quote renders s as an IMAP string: a quoted string when it can be one,
// else a non-synchronising literal.
func Quote(s string) string {
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b == '\r' || b == '\n' || b == 0 || b >= 0x80 {
			return "{" + strconv.Itoa(len(s)) + "+}\r\n" + s
		}
	}
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	return `"` + s + `"`
}

// Do sends one command (args already rendered, use Quote for strings) and
// collects the untagged responses until its tagged completion. A NO or BAD
// completion is returned as *StatusError together with the responses.
func (c *Client) Do(ctx context.Context, command string, args ...string) ([]Response, error) {
	c.tag++
	tag := fmt.Sprintf("A%03d", c.tag)
	line := tag + " " + command
	for _, a := range args {
		line += " " + a
	}
	c.setDeadline(ctx)
	defer c.conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		return nil, err
	}
	var out []Response
	for {
		resp, err := c.readResponse()
		if err != nil {
			return out, fmt.Errorf("imap %s: %w", command, err)
		}
		switch resp.Tag {
		case tag:
			if resp.Status != "OK" {
				return out, &StatusError{Command: command, Status: resp.Status, Text: resp.Text}
			}
			return out, nil
		case "+":
			return out, fmt.Errorf("imap %s: unexpected continuation request", command)
		case "*":
			if resp.Status == "BYE" {
				// Keep reading: a LOGOUT completion follows BYE.
				if !strings.EqualFold(command, "LOGOUT") {
					return out, fmt.Errorf("imap %s: server said BYE %s", command, resp.Text)
				}
			}
			out = append(out, resp)
		default:
			return out, fmt.Errorf("imap %s: response with unknown tag %q", command, resp.Tag)
		}
	}
}

// Login authenticates with LOGIN (needs allowplaintext on the server).
func (c *Client) Login(ctx context.Context, user, pass string) error {
	_, err := c.Do(ctx, "LOGIN", Quote(user), Quote(pass))
	return err
}

// AuthenticatePlain authenticates with SASL PLAIN (RFC 4616) sent as an
// initial response (RFC 4959). authzid may be empty; a non-empty one asks to
// act as that user, which Cyrus allows to identities in proxyservers.
func (c *Client) AuthenticatePlain(ctx context.Context, authzid, authcid, pass string) error {
	ir := base64.StdEncoding.EncodeToString([]byte(authzid + "\x00" + authcid + "\x00" + pass))
	_, err := c.Do(ctx, "AUTHENTICATE", "PLAIN", ir)
	return err
}

// Logout sends LOGOUT and closes the connection.
func (c *Client) Logout(ctx context.Context) error {
	_, err := c.Do(ctx, "LOGOUT")
	c.conn.Close()
	return err
}

// Create creates a mailbox.
func (c *Client) Create(ctx context.Context, name string) error {
	_, err := c.Do(ctx, "CREATE", Quote(name))
	return err
}

// Delete deletes a mailbox.
func (c *Client) Delete(ctx context.Context, name string) error {
	_, err := c.Do(ctx, "DELETE", Quote(name))
	return err
}

// Rename renames a mailbox.
func (c *Client) Rename(ctx context.Context, from, to string) error {
	_, err := c.Do(ctx, "RENAME", Quote(from), Quote(to))
	return err
}

// SetACL sets the rights of identifier on mailbox (RFC 4314).
func (c *Client) SetACL(ctx context.Context, mailbox, identifier, rights string) error {
	_, err := c.Do(ctx, "SETACL", Quote(mailbox), Quote(identifier), Quote(rights))
	return err
}

// GetACL returns the ACL of mailbox as identifier → rights.
func (c *Client) GetACL(ctx context.Context, mailbox string) (map[string]string, error) {
	rs, err := c.Do(ctx, "GETACL", Quote(mailbox))
	if err != nil {
		return nil, err
	}
	acl := map[string]string{}
	for _, r := range rs {
		if len(r.Fields) < 2 || !isAtom(r.Fields[0], "ACL") {
			continue
		}
		for i := 2; i+1 < len(r.Fields); i += 2 {
			acl[AsString(r.Fields[i])] = AsString(r.Fields[i+1])
		}
	}
	return acl, nil
}

// Select opens mailbox read-only (EXAMINE, so that reading for verification
// changes no \Seen flag) and returns its EXISTS count.
func (c *Client) Select(ctx context.Context, mailbox string) (uint32, error) {
	rs, err := c.Do(ctx, "EXAMINE", Quote(mailbox))
	if err != nil {
		return 0, err
	}
	var exists uint32
	for _, r := range rs {
		if len(r.Fields) == 2 && isAtom(r.Fields[1], "EXISTS") {
			n, _ := strconv.ParseUint(AsString(r.Fields[0]), 10, 32)
			exists = uint32(n)
		}
	}
	return exists, nil
}

// Message is one fetched message.
type Message struct {
	UID uint32
	// Header is the header section (BODY.PEEK[HEADER]).
	Header []byte
	// Raw is the whole message (BODY.PEEK[]); nil unless asked for.
	Raw []byte
}

// FetchAll fetches UID and header (and the full message if full) of every
// message in the selected mailbox, in UID order as the server sends them.
func (c *Client) FetchAll(ctx context.Context, full bool) ([]Message, error) {
	items := "(UID BODY.PEEK[HEADER])"
	if full {
		items = "(UID BODY.PEEK[HEADER] BODY.PEEK[])"
	}
	rs, err := c.Do(ctx, "UID FETCH", "1:*", items)
	if err != nil {
		return nil, err
	}
	var out []Message
	for _, r := range rs {
		if len(r.Fields) != 3 || !isAtom(r.Fields[1], "FETCH") {
			continue
		}
		l, ok := r.Fields[2].(List)
		if !ok {
			continue
		}
		var m Message
		for i := 0; i+1 < len(l); i += 2 {
			key := strings.ToUpper(AsString(l[i]))
			switch key {
			case "UID":
				n, _ := strconv.ParseUint(AsString(l[i+1]), 10, 32)
				m.UID = uint32(n)
			case "BODY[HEADER]":
				m.Header = []byte(AsString(l[i+1]))
			case "BODY[]":
				m.Raw = []byte(AsString(l[i+1]))
			}
		}
		out = append(out, m)
	}
	return out, nil
}

func isAtom(v any, s string) bool {
	a, ok := v.(Atom)
	return ok && strings.EqualFold(string(a), s)
}

// AsString returns the text of an atom or string value ("" for NIL and
// lists).
func AsString(v any) string {
	switch t := v.(type) {
	case Atom:
		if strings.EqualFold(string(t), "NIL") {
			return ""
		}
		return string(t)
	case []byte:
		return string(t)
	case string:
		return t
	}
	return ""
}

var errSyntax = errors.New("malformed server response")

// readResponse reads one response, literals included.
func (c *Client) readResponse() (Response, error) {
	return ReadResponse(c.r)
}

// ReadResponse parses one server response from r (exported for the fuzz
// target and tests).
func ReadResponse(r *bufio.Reader) (Response, error) {
	var resp Response
	tag, err := readAtom(r)
	if err != nil {
		return resp, err
	}
	resp.Tag = tag
	if tag == "+" {
		resp.Text, err = restOfLine(r)
		resp.Text = strings.TrimPrefix(resp.Text, " ")
		return resp, err
	}
	if err := expectSP(r); err != nil {
		return resp, err
	}
	first, err := readAtom(r)
	if err != nil {
		return resp, err
	}
	switch strings.ToUpper(first) {
	case "OK", "NO", "BAD", "BYE", "PREAUTH":
		resp.Status = strings.ToUpper(first)
		resp.Text, err = restOfLine(r)
		resp.Text = strings.TrimPrefix(resp.Text, " ")
		return resp, err
	}
	resp.Fields = append(resp.Fields, Atom(first))
	for {
		b, err := r.ReadByte()
		if err != nil {
			return resp, err
		}
		switch b {
		case '\r':
			if b, err := r.ReadByte(); err != nil || b != '\n' {
				return resp, errSyntax
			}
			return resp, nil
		case '\n':
			return resp, nil
		case ' ':
			v, err := readValue(r, 0)
			if err != nil {
				return resp, err
			}
			resp.Fields = append(resp.Fields, v)
		default:
			return resp, errSyntax
		}
	}
}

func expectSP(r *bufio.Reader) error {
	b, err := r.ReadByte()
	if err != nil {
		return err
	}
	if b != ' ' {
		return errSyntax
	}
	return nil
}

func restOfLine(r *bufio.Reader) (string, error) {
	s, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(s, "\r\n"), nil
}

// readAtom reads atom characters, keeping a bracketed section such as
// BODY[HEADER.FIELDS (SUBJECT)] or [CAPABILITY ...] inside the atom.
func readAtom(r *bufio.Reader) (string, error) {
	var sb strings.Builder
	depth := 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			return "", err
		}
		switch {
		case b == '[':
			depth++
		case b == ']' && depth > 0:
			depth--
		case b == '\r' || b == '\n':
			_ = r.UnreadByte()
			return sb.String(), nilIfNonEmpty(sb.Len())
		case depth == 0 && (b == ' ' || b == '(' || b == ')' || b == '{' || b == '"'):
			_ = r.UnreadByte()
			return sb.String(), nilIfNonEmpty(sb.Len())
		}
		sb.WriteByte(b)
		if sb.Len() > 1<<16 {
			return "", errSyntax
		}
	}
}

func nilIfNonEmpty(n int) error {
	if n == 0 {
		return errSyntax
	}
	return nil
}

// readValue reads one value (atom, quoted string, literal, NIL or a
// parenthesised list). It is the whole value grammar of RFC 3501 §9 that
// this client needs,
// kept as one function so that the grammar reads in one place.
func readValue(r *bufio.Reader, depth int) (any, error) {
	if depth > 32 {
		return nil, errSyntax
	}
	b, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	switch b {
	case '(':
		l := List{}
		for {
			nb, err := r.ReadByte()
			if err != nil {
				return nil, err
			}
			if nb == ')' {
				return l, nil
			}
			if len(l) > 0 {
				if nb != ' ' {
					return nil, errSyntax
				}
			} else {
				_ = r.UnreadByte()
			}
			v, err := readValue(r, depth+1)
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		}
	case '"':
		var sb []byte
		for {
			c, err := r.ReadByte()
			if err != nil {
				return nil, err
			}
			switch c {
			case '"':
				return sb, nil
			case '\\':
				c, err = r.ReadByte()
				if err != nil {
					return nil, err
				}
			case '\r', '\n':
				return nil, errSyntax
			}
			sb = append(sb, c)
			if len(sb) > 1<<16 {
				return nil, errSyntax
			}
		}
	case '{':
		s, err := r.ReadString('}')
		if err != nil {
			return nil, err
		}
		s = strings.TrimSuffix(strings.TrimSuffix(s, "}"), "+")
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > maxLiteral {
			return nil, errSyntax
		}
		if crlf, err := r.ReadString('\n'); err != nil || strings.TrimRight(crlf, "\r\n") != "" {
			return nil, errSyntax
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return buf, nil
	default:
		_ = r.UnreadByte()
		a, err := readAtom(r)
		if err != nil {
			return nil, err
		}
		return Atom(a), nil
	}
}
