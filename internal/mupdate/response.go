package mupdate

import (
	"bufio"
	"errors"
	"fmt"
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
//
// ReadResponse allocates the strings it returns; a reader of a long stream
// uses a Scanner instead.
func ReadResponse(r *bufio.Reader, max int) (Response, error) {
	s := NewScanner(r, max)
	if err := s.Scan(); err != nil {
		return Response{}, err
	}
	return s.Response(), nil
}

// A Scanner reads responses one after another from a stream, with the
// grammar and limits of ReadResponse, into buffers it reuses: once they
// have grown to the largest response seen, reading another response
// allocates nothing. This is what keeps a MUPDATE dump of a million
// mailboxes (four wire lines each) cheap. The byte slices it returns are
// valid only until the next Scan.
type Scanner struct {
	r    *bufio.Reader
	max  int
	line []byte // a line that did not fit in r's buffer, assembled
	data []byte // the decoded tokens of the current response, back to back
	toks []span // where each token lies in data
}

// span is one token's place in Scanner.data.
type span struct{ start, end int }

// NewScanner returns a Scanner reading from r; max is as for ReadResponse.
func NewScanner(r *bufio.Reader, max int) *Scanner {
	if max <= 0 {
		max = DefaultMaxLiteral
	}
	return &Scanner{r: r, max: max}
}

// Scan reads the next response. Its errors are those of ReadResponse;
// after one the stream is out of step and the scanner must not be used
// again.
func (s *Scanner) Scan() error {
	s.data = s.data[:0]
	s.toks = s.toks[:0]
	total := 0
	for {
		line, err := s.readLine()
		if err != nil {
			return err
		}
		total += len(line)
		lit, err := s.tokenize(line)
		if err != nil {
			return err
		}
		if len(s.toks) > maxArgs+2 {
			return protoErr("too many arguments")
		}
		if lit < 0 {
			break
		}
		if lit > s.max {
			return protoErr("literal of %d bytes exceeds limit %d", lit, s.max)
		}
		// A whole response is bounded too, so that many literals in a
		// row cannot make one response grow without end.
		if total += lit; total > 4*s.max {
			return protoErr("response exceeds %d bytes", 4*s.max)
		}
		start := len(s.data)
		s.data = append(s.data, make([]byte, lit)...)
		if _, err := readFull(s.r, s.data[start:]); err != nil {
			return err
		}
		s.toks = append(s.toks, span{start, len(s.data)})
	}
	if len(s.toks) < 2 {
		return protoErr("response without tag and keyword")
	}
	// The keyword is ours to change: upper-case it in place, so that
	// callers compare it with a constant.
	for i := s.toks[1].start; i < s.toks[1].end; i++ {
		if c := s.data[i]; 'a' <= c && c <= 'z' {
			s.data[i] = c - 'a' + 'A'
		}
	}
	return nil
}

func (s *Scanner) tok(i int) []byte { return s.data[s.toks[i].start:s.toks[i].end] }

// Tag returns the current response's tag ("*" for untagged data).
func (s *Scanner) Tag() []byte { return s.tok(0) }

// Kind returns the current response's keyword, upper-cased.
func (s *Scanner) Kind() []byte { return s.tok(1) }

// NArgs returns the number of arguments after the keyword.
func (s *Scanner) NArgs() int { return len(s.toks) - 2 }

// Arg returns argument i (0-based), decoded; NIL is empty.
func (s *Scanner) Arg(i int) []byte { return s.tok(i + 2) }

// Buffered reports how many bytes of the stream are already read ahead:
// zero means the next Scan would wait for the peer.
func (s *Scanner) Buffered() int { return s.r.Buffered() }

// Response returns the current response as strings (which allocates).
func (s *Scanner) Response() Response {
	r := Response{Tag: string(s.Tag()), Kind: string(s.Kind()), Args: make([]string, s.NArgs())}
	for i := range r.Args {
		r.Args[i] = string(s.Arg(i))
	}
	return r
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
// longer than max bytes. The line is valid until the next read.
func (s *Scanner) readLine() ([]byte, error) {
	frag, err := s.r.ReadSlice('\n')
	line := frag
	if err == bufio.ErrBufferFull {
		// Longer than the reader's buffer: assemble it in ours.
		s.line = append(s.line[:0], frag...)
		for err == bufio.ErrBufferFull {
			if len(s.line) > s.max+2 {
				return nil, protoErr("line exceeds %d bytes", s.max)
			}
			frag, err = s.r.ReadSlice('\n')
			s.line = append(s.line, frag...)
		}
		line = s.line
	}
	if len(line) > s.max+2 {
		return nil, protoErr("line exceeds %d bytes", s.max)
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// tokenize appends the tokens of one wire line to s.toks, their decoded
// bytes to s.data. If the line ends in a literal marker it returns the
// literal's length, else -1. It is the whole grammar of a line (RFC 3656
// §4, as Cyrus's prot_printastring and prot_printliteral write it), kept as
// one function so that the grammar reads in one place.
func (s *Scanner) tokenize(line []byte) (int, error) {
	i := 0
	first := len(s.toks) == 0
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
		start := len(s.data)
		switch c := line[i]; {
		case c == '"':
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
				s.data = append(s.data, c)
				i++
			}
			s.toks = append(s.toks, span{start, len(s.data)})
		case c == '{':
			end := i + 1
			for end < len(line) && line[end] != '}' {
				end++
			}
			if end != len(line)-1 {
				return 0, protoErr("literal marker not at end of line")
			}
			digits := line[i+1 : end]
			if n := len(digits); n > 0 && digits[n-1] == '+' {
				digits = digits[:n-1]
			}
			if len(digits) == 0 || len(digits) > 10 {
				return 0, protoErr("bad literal length %q", line[i:end+1])
			}
			n := 0
			for _, d := range digits {
				if d < '0' || d > '9' {
					return 0, protoErr("bad literal length %q", line[i:end+1])
				}
				n = n*10 + int(d-'0')
			}
			return n, nil
		default:
			from := i
			for i < len(line) && line[i] != ' ' {
				c := line[i]
				if c < 0x20 || c == 0x7f || c == '"' || c == '{' {
					return 0, protoErr("invalid byte 0x%02x in atom", c)
				}
				i++
			}
			if i == from {
				return 0, protoErr("empty atom at column %d", i)
			}
			// NIL is the empty string.
			if atom := line[from:i]; string(atom) != "NIL" {
				s.data = append(s.data, atom...)
			}
			s.toks = append(s.toks, span{start, len(s.data)})
		}
	}
	return -1, nil
}
