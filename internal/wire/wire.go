// Package wire turns a message body, as an MTA handed it over (LMTP DATA
// after dot-unstuffing, or BDAT chunks), into the form it takes on the wire
// to a backend inside DATA: every line ends in CR LF, a line that starts with
// '.' gets a second one (RFC 5321 §4.5.2), and the final ".\r\n" is left to
// the sender.
//
// It does this in one pass, as the bytes arrive, so that the front end can
// stream a message to its backends while the MTA is still sending it, and so
// that no later step has to walk the body again.
//
// Two rules protect the backend session (RFC 5321 §4.5.3.1.6, RFC 5322
// §2.1.1):
//
//   - A line longer than 998 octets is refused (ErrLongLine). Cyrus's lmtpd
//     reads lines in 8 KiB pieces and takes a piece that starts with ".\r\n"
//     as the end of the data, so an overlong line could end the message early
//     and smuggle the rest in as commands. No line it is given is long enough
//     to be cut.
//   - A bare LF becomes CR LF and a CR that is not followed by LF is dropped,
//     as Cyrus's own frontend does before it proxies a message (imap/lmtpengine.c,
//     the spool filter), so no peer can read a line boundary that we did not.
package wire

import (
	"bytes"
	"errors"
	"fmt"
)

// MaxLine is the longest line accepted, in octets, without its CR LF
// (RFC 5322 §2.1.1).
const MaxLine = 998

// ErrLongLine is wrapped by the error Encode returns for a line over MaxLine.
var ErrLongLine = errors.New("line longer than 998 octets")

// An Encoder holds the state between calls: where in a line the last input
// ended. The zero value is ready for a message's first byte.
type Encoder struct {
	lineLen   int   // octets of the current line so far, CRs dropped
	midLine   bool  // the current line has had content (its first byte was checked for '.')
	pendingCR bool  // the last input ended in CR: a line end if LF follows
	line      int64 // 1-based number of the current line, for the error
	offset    int64 // octets of input consumed
	err       error
	scratch   []byte
}

// Encode appends the wire form of src to dst and returns it. After an error
// (a line over MaxLine) it returns the same error for every later call; the
// message must then be refused, and nothing more is worth encoding.
func (e *Encoder) Encode(dst, src []byte) ([]byte, error) {
	if e.err != nil {
		return dst, e.err
	}
	if e.line == 0 {
		e.line = 1
	}
	for len(src) > 0 {
		if e.pendingCR {
			e.pendingCR = false
			if src[0] == '\n' {
				dst = append(dst, '\r', '\n')
				src = src[1:]
				e.offset++
				e.endLine()
				continue
			}
			// A lone CR, dropped.
		}
		seg, rest, eol := src, []byte(nil), false
		if i := bytes.IndexByte(src, '\n'); i >= 0 {
			seg, rest, eol = src[:i], src[i+1:], true
		}
		e.offset += int64(len(src) - len(rest))
		src = rest
		if n := len(seg); n > 0 && seg[n-1] == '\r' {
			seg = seg[:n-1]
			if !eol {
				// Whether this CR ends the line depends on the next byte.
				e.pendingCR = true
			}
		}
		if bytes.IndexByte(seg, '\r') >= 0 {
			seg = e.dropCR(seg)
		}
		if len(seg) > 0 {
			if !e.midLine && seg[0] == '.' {
				dst = append(dst, '.')
			}
			e.midLine = true
			e.lineLen += len(seg)
			if e.lineLen > MaxLine {
				e.err = fmt.Errorf("%w (line %d, near octet %d)", ErrLongLine, e.line, e.offset)
				return dst, e.err
			}
			dst = append(dst, seg...)
		}
		if eol {
			dst = append(dst, '\r', '\n')
			e.endLine()
		}
	}
	return dst, nil
}

// Close appends what ends the body: CR LF if the last line had no line end
// (the DATA terminator must start a line). It returns the error of an earlier
// Encode, if any.
func (e *Encoder) Close(dst []byte) ([]byte, error) {
	if e.err != nil {
		return dst, e.err
	}
	if e.midLine || e.pendingCR {
		dst = append(dst, '\r', '\n')
		e.pendingCR = false
		e.endLine()
	}
	return dst, nil
}

// Err returns the error that stopped the encoder, or nil.
func (e *Encoder) Err() error { return e.err }

func (e *Encoder) endLine() {
	e.lineLen, e.midLine = 0, false
	e.line++
}

// dropCR returns seg without its CR bytes, in the encoder's scratch buffer.
func (e *Encoder) dropCR(seg []byte) []byte {
	out := e.scratch[:0]
	for {
		i := bytes.IndexByte(seg, '\r')
		if i < 0 {
			break
		}
		out = append(out, seg[:i]...)
		seg = seg[i+1:]
	}
	out = append(out, seg...)
	e.scratch = out
	return out
}

// Append encodes a whole body in one call: Encode then Close.
func Append(dst, body []byte) ([]byte, error) {
	var e Encoder
	dst, err := e.Encode(dst, body)
	if err != nil {
		return dst, err
	}
	return e.Close(dst)
}
