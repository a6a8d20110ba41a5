package mupdate

import (
	"bufio"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrProtocol is wrapped by every error ReadResponse returns for bytes that
// are not a well-formed MUPDATE response (or exceed the size limits).
var ErrProtocol = errors.New("mupdate protocol error")

// DefaultMaxLiteral bounds one line and one literal when no limit is given.
const DefaultMaxLiteral = 64 << 10

// maxArgs bounds the strings in one response. The longest response Cyrus
// sends (MAILBOX name location acl, or the greeting line) has fewer than
// ten; anything near this limit is not MUPDATE.
const maxArgs = 64

// Response is one server response (RFC 3656 §4): a tag ("*" for untagged
// data), a keyword and its arguments.
type Response struct {
	// Tag is the client's command tag, or "*" for untagged lines.
	Tag string
	// Kind is the response keyword in upper case: OK, NO, BAD, BYE,
	// MAILBOX, RESERVE, DELETE, AUTH, STARTTLS, COMPRESS, PARTIAL-UPDATE…
	Kind string
	// Args are the remaining atoms, quoted strings and literals, decoded.
	// NIL is returned as the empty string.
	Args []string
}

func (r Response) String() string {
	return fmt.Sprintf("%s %s %q", r.Tag, r.Kind, r.Args)
}

func protoErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, a...))
}

// ReadResponse reads one response from r: a line, and for every literal
// {n} or {n+} that ends a line, n bytes of data after the CRLF and the rest
// of the response on the following line. Cyrus sends every string as a
// non-synchronising literal, so a MAILBOX response spans four wire lines.
// Quoted strings take backslash escapes of '\' and '"' only (RFC 3501
// quoted, which RFC 3656 uses). Lines may end in CRLF or a bare LF.
//
// max bounds each line and each literal (DefaultMaxLiteral if <= 0), and
// four times max bounds the whole response. A
// response that breaks the grammar or a limit returns an error wrapping
// ErrProtocol; the stream is then out of step and the caller must drop the
// connection. I/O errors are returned as they are. ReadResponse never
// panics on any input.
func ReadResponse(r *bufio.Reader, max int) (Response, error) {
	if max <= 0 {
		max = DefaultMaxLiteral
	}
	var toks []string
	total := 0
	for {
		line, err := readLine(r, max)
		if err != nil {
			return Response{}, err
		}
		total += len(line)
		lit, err := tokenize(line, &toks)
		if err != nil {
			return Response{}, err
		}
		if len(toks) > maxArgs+2 {
			return Response{}, protoErr("too many arguments")
		}
		if lit < 0 {
			break
		}
		if lit > max {
			return Response{}, protoErr("literal of %d bytes exceeds limit %d", lit, max)
		}
		// A whole response is bounded too, so that many literals in a
		// row cannot make one response grow without end.
		if total += lit; total > 4*max {
			return Response{}, protoErr("response exceeds %d bytes", 4*max)
		}
		buf := make([]byte, lit)
		if _, err := readFull(r, buf); err != nil {
			return Response{}, err
		}
		toks = append(toks, string(buf))
	}
	if len(toks) < 2 {
		return Response{}, protoErr("response without tag and keyword")
	}
	return Response{Tag: toks[0], Kind: strings.ToUpper(toks[1]), Args: toks[2:]}, nil
}

func readFull(r *bufio.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// readLine returns one line without its CRLF (or LF), failing if it is
// longer than max bytes.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > max+2 {
			return nil, protoErr("line exceeds %d bytes", max)
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			return nil, err
		}
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// tokenize appends the tokens of one wire line to toks. If the line ends
// in a literal marker it returns the literal's length, else -1.
// It is the whole grammar of a line (RFC 3656 §4, as Cyrus's
// prot_printastring and prot_printliteral write it), kept as one function so
// that the grammar reads in one place.
func tokenize(line []byte, toks *[]string) (int, error) {
	i := 0
	first := len(*toks) == 0
	for i < len(line) {
		if !first {
			// Tokens are separated by exactly one space; after a literal
			// the continuation line starts with that space.
			if line[i] != ' ' {
				return 0, protoErr("expected space at column %d", i)
			}
			i++
			if i == len(line) {
				return 0, protoErr("trailing space")
			}
		}
		first = false
		switch c := line[i]; {
		case c == '"':
			var b strings.Builder
			i++
			for {
				if i >= len(line) {
					return 0, protoErr("unterminated quoted string")
				}
				c := line[i]
				if c == '"' {
					i++
					break
				}
				if c == '\\' {
					i++
					if i >= len(line) || (line[i] != '\\' && line[i] != '"') {
						return 0, protoErr("bad escape in quoted string")
					}
					c = line[i]
				}
				if c == 0 {
					return 0, protoErr("NUL in quoted string")
				}
				b.WriteByte(c)
				i++
			}
			*toks = append(*toks, b.String())
		case c == '{':
			end := i + 1
			for end < len(line) && line[end] != '}' {
				end++
			}
			if end != len(line)-1 {
				return 0, protoErr("literal marker not at end of line")
			}
			digits := string(line[i+1 : end])
			digits = strings.TrimSuffix(digits, "+")
			if digits == "" || len(digits) > 10 || strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
				return 0, protoErr("bad literal length %q", line[i:end+1])
			}
			n, err := strconv.Atoi(digits)
			if err != nil {
				return 0, protoErr("bad literal length %q", digits)
			}
			return n, nil
		default:
			start := i
			for i < len(line) && line[i] != ' ' {
				c := line[i]
				if c < 0x20 || c == 0x7f || c == '"' || c == '{' {
					return 0, protoErr("invalid byte 0x%02x in atom", c)
				}
				i++
			}
			if i == start {
				return 0, protoErr("empty atom at column %d", i)
			}
			atom := string(line[start:i])
			if atom == "NIL" {
				atom = ""
			}
			*toks = append(*toks, atom)
		}
	}
	return -1, nil
}
