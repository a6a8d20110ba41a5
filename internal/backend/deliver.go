package backend

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/lmtpgate/lmtpgate/internal/wire"
)

// Message is a whole message, for Deliver.
type Message interface {
	// Open returns a fresh reader from the start.
	Open() (io.ReadCloser, error)
	// Size is the message size in bytes.
	Size() int64
}

// Deliver runs one whole transaction for rcpts on server with a message
// that is already complete, and returns exactly one Result per input
// recipient, in input order. It is Begin, Rcpt for each recipient, Data and
// Wait, for callers that hold the whole message (tools, tests).
func (p *Pool) Deliver(ctx context.Context, server string, env Envelope, rcpts []string, msg Message) []Result {
	results := make([]Result, len(rcpts))
	for i, r := range rcpts {
		results[i].Rcpt = r
	}
	if len(rcpts) == 0 {
		return results
	}
	body, err := msg.Open()
	if err != nil {
		for i := range results {
			results[i].Stage, results[i].Err = StageData, fmt.Errorf("open message: %w", err)
		}
		return results
	}
	defer body.Close()
	t := p.Begin(ctx, server, env)
	hs := make([]*Rcpt, len(rcpts))
	for i, r := range rcpts {
		hs[i] = t.Rcpt(r, false)
	}
	t.Data(&wireReader{r: body})
	for i, h := range hs {
		res := h.Wait(ctx)
		res.Rcpt = rcpts[i]
		results[i] = res
	}
	<-t.Done()
	return results
}

// wireReader encodes a raw message into wire form as it is read.
type wireReader struct {
	r   io.Reader
	enc wire.Encoder
	buf []byte
	out []byte
	eof bool
}

func (w *wireReader) Read(p []byte) (int, error) {
	for len(w.out) == 0 {
		if w.eof {
			return 0, io.EOF
		}
		if w.buf == nil {
			w.buf = make([]byte, 32<<10)
		}
		n, err := w.r.Read(w.buf)
		var eerr error
		w.out, eerr = w.enc.Encode(w.out[:0], w.buf[:n])
		if eerr != nil {
			return 0, eerr
		}
		if err == io.EOF {
			if w.out, eerr = w.enc.Close(w.out); eerr != nil {
				return 0, eerr
			}
			w.eof = true
		} else if err != nil {
			return 0, err
		}
	}
	n := copy(p, w.out)
	w.out = w.out[n:]
	return n, nil
}

// FormatPath renders an address for MAIL FROM or RCPT TO, "<>" for the
// null path. go-smtp hands us the local part unquoted, so one that is not a
// dot-string (RFC 5321 §4.1.2) is quoted again, with '"' and '\' escaped:
// "x> AUTH=admin"@y must not reach the backend as x> AUTH=admin@y, which
// would be read as parameters to our own command.
func FormatPath(addr string) string { return string(AppendPath(nil, addr)) }

// AppendPath appends FormatPath(addr) to b.
func AppendPath(b []byte, addr string) []byte {
	if addr == "" {
		return append(b, "<>"...)
	}
	local, domain := addr, ""
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		local, domain = addr[:i], addr[i:]
	}
	b = append(b, '<')
	if isDotString(local) {
		b = append(b, local...)
	} else {
		b = append(b, '"')
		for i := 0; i < len(local); i++ {
			if c := local[i]; c == '"' || c == '\\' {
				b = append(b, '\\')
			}
			b = append(b, local[i])
		}
		b = append(b, '"')
	}
	b = append(b, domain...)
	return append(b, '>')
}

// isDotString reports whether s is an RFC 5321 Dot-string: atoms of atext
// separated by single dots. Bytes of 0x80 and above are let through as
// atext (RFC 6531 allows UTF-8 there, and Cyrus takes it).
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c >= 0x80, c == '.':
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// xtext encodes an AUTH= value (RFC 3461 §4): '+', '=' and bytes outside
// '!'..'~' become +XX.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
