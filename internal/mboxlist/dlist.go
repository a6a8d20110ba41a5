package mboxlist

import (
	"errors"
	"fmt"
)

// This file parses the "dlist" text that Cyrus 2.5 and later store as
// mailboxes.db values (lib/dlist.c, dlist_parsemap). The grammar, as Cyrus
// writes it:
//
//	value  = atom | quoted | literal | "NIL" | kvlist | list
//	kvlist = "%(" [ key SP value *( SP key SP value ) ] ")"
//	list   = "("  [ value *( SP value ) ] ")"
//	quoted = DQUOTE *( char | "\" char ) DQUOTE
//	literal= "{" number [ "+" ] "}" CRLF <number bytes>
//
// The bytes come from a file other programs write, so the parser is bounded
// (nesting depth, literal sizes checked against the input) and reports an
// error instead of panicking on anything it does not understand. It builds
// a flat, pre-order node array that points into the input, so parsing a
// record allocates nothing once the parser's node slice has grown.

// dkind is the kind of a dlist node.
type dkind uint8

const (
	dAtom dkind = iota + 1
	dString
	dNil
	dKV
	dList
)

func (k dkind) String() string {
	switch k {
	case dAtom:
		return "atom"
	case dString:
		return "string"
	case dNil:
		return "NIL"
	case dKV:
		return "kvlist"
	case dList:
		return "list"
	}
	return "invalid"
}

// dnode is one parsed dlist value. For atoms and strings, [start,end) is the
// content in the input (without quotes; escapes still present when esc is
// set). size is the number of nodes in the subtree including this one, so a
// caller can skip a whole nested value. The children of a kvlist alternate
// key, value, key, value.
type dnode struct {
	kind       dkind
	esc        bool
	start, end int32
	size       int32
}

// maxDlistDepth bounds nesting. Cyrus mailbox entries nest at most three
// deep (entry → ACL or history list → element); anything far deeper is
// garbage or an attack on the stack.
const maxDlistDepth = 32

// maxDlistInput bounds the input so that offsets fit in int32.
const maxDlistInput = 1 << 30

// errDlist is wrapped by every dlist syntax error.
var errDlist = errors.New("dlist syntax")

// dlistError describes where a dlist value stopped making sense.
type dlistError struct {
	Offset int
	Reason string
}

func (e *dlistError) Error() string {
	return fmt.Sprintf("dlist syntax error at byte %d: %s", e.Offset, e.Reason)
}

func (e *dlistError) Unwrap() error { return errDlist }

// dlist is a parsed value; data is the input it points into.
type dlist struct {
	data  []byte
	nodes []dnode
}

// dparser holds reusable state so that decoding a million records does not
// allocate a million node slices.
type dparser struct {
	data  []byte
	pos   int
	nodes []dnode
}

// parse parses exactly one dlist value from data, allowing only trailing
// whitespace (SP, CR, LF) after it. The returned dlist shares the parser's
// node storage and is valid until the next call.
func (p *dparser) parse(data []byte) (dlist, error) {
	if len(data) > maxDlistInput {
		return dlist{}, &dlistError{0, "value too large"}
	}
	p.data = data
	p.pos = 0
	p.nodes = p.nodes[:0]
	if err := p.value(0); err != nil {
		return dlist{}, err
	}
	for p.pos < len(data) {
		switch data[p.pos] {
		case ' ', '\r', '\n':
			p.pos++
		default:
			return dlist{}, p.fail("trailing data after value")
		}
	}
	return dlist{data: data, nodes: p.nodes}, nil
}

func (p *dparser) fail(reason string) error {
	return &dlistError{Offset: p.pos, Reason: reason}
}

func (p *dparser) value(depth int) error {
	if depth > maxDlistDepth {
		return p.fail("nesting too deep")
	}
	if p.pos >= len(p.data) {
		return p.fail("unexpected end of value")
	}
	switch c := p.data[p.pos]; c {
	case '%':
		if p.pos+1 >= len(p.data) || p.data[p.pos+1] != '(' {
			// "%{" is a file reference (sync protocol only); it never
			// appears in mailboxes.db.
			return p.fail("expected '(' after '%'")
		}
		p.pos += 2
		return p.list(dKV, depth)
	case '(':
		p.pos++
		return p.list(dList, depth)
	case '"':
		return p.quoted()
	case '{':
		return p.literal()
	case ')', ' ', '\r', '\n':
		return p.fail(fmt.Sprintf("unexpected %q", c))
	default:
		return p.atom()
	}
}

func (p *dparser) list(kind dkind, depth int) error {
	self := len(p.nodes)
	p.nodes = append(p.nodes, dnode{kind: kind, start: int32(p.pos)})
	n := 0
	for {
		if p.pos >= len(p.data) {
			return p.fail("unterminated list")
		}
		if p.data[p.pos] == ')' {
			p.pos++
			break
		}
		if n > 0 {
			if p.data[p.pos] != ' ' {
				return p.fail("expected space between list items")
			}
			for p.pos < len(p.data) && p.data[p.pos] == ' ' {
				p.pos++
			}
			if p.pos < len(p.data) && p.data[p.pos] == ')' {
				// Tolerate a trailing space before ')'.
				continue
			}
		}
		if kind == dKV && n%2 == 0 {
			// Keys are plain words in every Cyrus version.
			if p.pos < len(p.data) {
				switch p.data[p.pos] {
				case '(', '%', '{', '"':
					return p.fail("kvlist key is not an atom")
				}
			}
			if err := p.atom(); err != nil {
				return err
			}
		} else if err := p.value(depth + 1); err != nil {
			return err
		}
		n++
	}
	if kind == dKV && n%2 != 0 {
		return p.fail("kvlist key without value")
	}
	p.nodes[self].end = int32(p.pos)
	p.nodes[self].size = int32(len(p.nodes) - self)
	return nil
}

// isAtomEnd reports the bytes that end an atom; Cyrus's getword stops at
// SP, parentheses and line ends.
func isAtomEnd(c byte) bool {
	switch c {
	case ' ', '(', ')', '\r', '\n', 0:
		return true
	}
	return false
}

func (p *dparser) atom() error {
	start := p.pos
	for p.pos < len(p.data) && !isAtomEnd(p.data[p.pos]) {
		p.pos++
	}
	if p.pos == start {
		return p.fail("empty atom")
	}
	kind := dAtom
	if p.pos-start == 3 && string(p.data[start:p.pos]) == "NIL" {
		kind = dNil
	}
	p.nodes = append(p.nodes, dnode{kind: kind, start: int32(start), end: int32(p.pos), size: 1})
	return nil
}

func (p *dparser) quoted() error {
	p.pos++ // opening quote
	start := p.pos
	esc := false
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case '\\':
			esc = true
			p.pos += 2
			continue
		case '"':
			p.nodes = append(p.nodes, dnode{kind: dString, esc: esc, start: int32(start), end: int32(p.pos), size: 1})
			p.pos++
			return nil
		}
		p.pos++
	}
	p.pos = len(p.data)
	return p.fail("unterminated quoted string")
}

func (p *dparser) literal() error {
	p.pos++ // '{'
	n := 0
	digits := 0
	for p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9' {
		n = n*10 + int(p.data[p.pos]-'0')
		digits++
		p.pos++
		if n > len(p.data) {
			return p.fail("literal longer than the value")
		}
	}
	if digits == 0 {
		return p.fail("literal without length")
	}
	if p.pos < len(p.data) && p.data[p.pos] == '+' {
		p.pos++
	}
	if p.pos >= len(p.data) || p.data[p.pos] != '}' {
		return p.fail("expected '}' after literal length")
	}
	p.pos++
	// Cyrus writes CRLF; a bare LF is accepted as well.
	if p.pos < len(p.data) && p.data[p.pos] == '\r' {
		p.pos++
	}
	if p.pos >= len(p.data) || p.data[p.pos] != '\n' {
		return p.fail("expected line end after literal length")
	}
	p.pos++
	if n > len(p.data)-p.pos {
		return p.fail("literal runs past end of value")
	}
	p.nodes = append(p.nodes, dnode{kind: dString, start: int32(p.pos), end: int32(p.pos + n), size: 1})
	p.pos += n
	return nil
}

// raw returns the content bytes of an atom or string node, escapes
// included.
func (d dlist) raw(i int) []byte {
	n := d.nodes[i]
	return d.data[n.start:n.end]
}

// text appends the content of an atom or string node to buf, undoing
// backslash escapes. NIL and lists append nothing.
func (d dlist) text(buf []byte, i int) []byte {
	n := d.nodes[i]
	if n.kind != dAtom && n.kind != dString {
		return buf
	}
	b := d.data[n.start:n.end]
	if !n.esc {
		return append(buf, b...)
	}
	for j := 0; j < len(b); j++ {
		if b[j] == '\\' && j+1 < len(b) {
			j++
		}
		buf = append(buf, b[j])
	}
	return buf
}
