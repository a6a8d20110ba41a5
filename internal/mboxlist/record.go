package mboxlist

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// This file turns one mailboxes.db record into a routing entry. Three
// generations of record exist in the wild (see the Cyrus sources of
// mboxlist.c in each release):
//
//   - Cyrus 3.6 and later: keys are 'N' + dbname for mailbox entries, plus
//     'I' (by uniqueid), 'A' (reverse ACL) and, from 3.13, 'J' keys that do
//     not route. Values are dlists with T written first.
//   - Cyrus 2.5 to 3.4: keys are internal names; values are dlists with A
//     first and T absent for a plain local mailbox; '$' keys (3.0+: $RACL,
//     $RUNQ) are not mailboxes.
//   - Cyrus 2.4 and earlier: keys are internal names; values are the text
//     "mbtype partition acl", optionally preceded by "(...)".

// Era says how a file's keys are to be read. It is a property of the whole
// file: an internal name of an old file may start with 'N' or 'A' too, so
// the era cannot be guessed from one key.
type Era uint8

const (
	// EraName: keys are internal names (Cyrus ≤ 3.4).
	EraName Era = iota
	// EraDBName: keys are 'N'/'I'/'A'/'J' + dbname (Cyrus ≥ 3.6).
	EraDBName
)

func (e Era) String() string {
	if e == EraDBName {
		return "3.6+"
	}
	return "pre-3.6"
}

// recKind classifies a decoded record.
type recKind uint8

const (
	// recSkip: not a mailbox entry (I, A, J, $ keys).
	recSkip recKind = iota
	// recGone: a mailbox key whose entry Cyrus treats as nonexistent
	// (deleted tombstone or intermediate).
	recGone
	// recMailbox: a routable entry.
	recMailbox
)

// ErrBadRecord is wrapped by errors about a single undecodable record.
var ErrBadRecord = errors.New("undecodable mailboxes.db record")

// record is the decoded form of one entry. Its byte slices point into the
// decoder's scratch buffers or into the input and are valid until the next
// decode.
type record struct {
	name      []byte
	server    []byte
	partition []byte
	acl       []byte
	state     lookup.State
}

// decoder decodes records with reusable buffers, so building an index of
// a million entries does not allocate per record.
type decoder struct {
	era  Era
	p    dparser
	name []byte
	acl  []byte
	srv  []byte
	part []byte
}

// decode decodes one record. For recSkip and recGone only rec.name (when the
// key is a mailbox key) is meaningful. A non-nil error wraps ErrBadRecord;
// rec.name is still set when the key itself was readable, so a caller can
// remember that this mailbox's routing is unknown.
func (d *decoder) decode(key, value []byte) (recKind, record, error) {
	var rec record
	if len(key) == 0 {
		return recSkip, rec, fmt.Errorf("%w: empty key", ErrBadRecord)
	}
	if d.era == EraDBName {
		if key[0] != 'N' {
			// I, A, J and any future key type do not route.
			return recSkip, rec, nil
		}
		d.name = dbnameToIntname(d.name[:0], key[1:])
	} else {
		if key[0] == '$' {
			return recSkip, rec, nil
		}
		d.name = append(d.name[:0], key...)
	}
	rec.name = d.name
	if len(rec.name) == 0 {
		return recSkip, rec, fmt.Errorf("%w: empty mailbox name", ErrBadRecord)
	}
	if len(value) > 0 && value[0] == '%' {
		return d.decodeDlist(rec, value)
	}
	if d.era == EraDBName {
		return recSkip, rec, fmt.Errorf("%w: %q: value is not a dlist", ErrBadRecord, rec.name)
	}
	return d.decodeLegacy(rec, value)
}

// dbnameToIntname converts a 3.6 dbname to the internal name used on the
// MUPDATE wire and in older files (Cyrus mbname.c): 0x1D after a domain
// becomes '!', the 0x1F separator becomes '.', and a literal '.' inside a
// component becomes '^'. The domain part keeps its dots.
func dbnameToIntname(dst, db []byte) []byte {
	rest := db
	if i := bytes.IndexByte(db, 0x1D); i >= 0 {
		dst = append(dst, db[:i]...)
		dst = append(dst, '!')
		rest = db[i+1:]
	}
	for _, c := range rest {
		switch c {
		case 0x1F:
			c = '.'
		case '.':
			c = '^'
		}
		dst = append(dst, c)
	}
	return dst
}

// intnameToDBName is the inverse of dbnameToIntname; tests and tools use it
// to build 3.6 keys.
func intnameToDBName(intname string) []byte {
	dst := make([]byte, 0, len(intname))
	rest := intname
	if i := indexByteString(intname, '!'); i >= 0 {
		dst = append(dst, intname[:i]...)
		dst = append(dst, 0x1D)
		rest = intname[i+1:]
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		switch c {
		case '.':
			c = 0x1F
		case '^':
			c = '.'
		}
		dst = append(dst, c)
	}
	return dst
}

func indexByteString(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func (d *decoder) decodeDlist(rec record, value []byte) (recKind, record, error) {
	dl, err := d.p.parse(value)
	if err != nil {
		return recSkip, rec, fmt.Errorf("%w: %q: %v", ErrBadRecord, rec.name, err)
	}
	if dl.nodes[0].kind != dKV {
		return recSkip, rec, fmt.Errorf("%w: %q: value is a %v, not a kvlist", ErrBadRecord, rec.name, dl.nodes[0].kind)
	}
	var tflags []byte
	haveServer, havePart := false, false
	d.srv, d.part, d.acl = d.srv[:0], d.part[:0], d.acl[:0]
	end := int(dl.nodes[0].size)
	for k := 1; k < end; {
		v := k + 1
		key := dl.raw(k)
		if len(key) == 1 {
			switch key[0] {
			case 'T':
				tflags = dl.raw(v)
			case 'S':
				d.srv = dl.text(d.srv[:0], v)
				haveServer = dl.nodes[v].kind != dNil
			case 'P':
				d.part = dl.text(d.part[:0], v)
				havePart = dl.nodes[v].kind != dNil
			case 'A':
				d.acl = aclString(d.acl[:0], dl, v)
			}
		}
		k = v + int(dl.nodes[v].size)
	}
	switch state, gone := typeState(tflags); {
	case gone:
		return recGone, rec, nil
	default:
		rec.state = state
	}
	rec.acl = d.acl
	rec.server = d.srv
	rec.partition = d.part
	if !haveServer && havePart {
		// A location in MUPDATE form "server!partition" (seen in
		// entries written by some 2.5-era tools): split it.
		if i := bytes.IndexByte(d.part, '!'); i >= 0 {
			rec.server = d.part[:i]
			rec.partition = d.part[i+1:]
		}
	}
	return recMailbox, rec, nil
}

// typeState interprets a T value, letters in any order. 3.6 starts with a
// type letter (e n s p f b c a) and 2.5–3.4 write flags only; the routing
// flags d, i, z and m collide with no type letter, so one rule serves both.
// Cyrus's mboxlist_lookup reports deleted and intermediate entries as
// nonexistent before proxy_mlookup looks at reserved and moving.
func typeState(t []byte) (state lookup.State, gone bool) {
	state = lookup.Active
	for _, c := range t {
		switch c {
		case 'd', 'i':
			return lookup.Active, true
		case 'z':
			state = lookup.Reserved
		case 'm':
			if state != lookup.Reserved {
				state = lookup.Moving
			}
		}
	}
	return state, false
}

// aclString renders an A value as the Cyrus ACL string
// "identifier TAB rights TAB ...". The value is normally a kvlist of
// identifier → rights; a plain string is taken as an ACL string already.
func aclString(dst []byte, dl dlist, v int) []byte {
	switch dl.nodes[v].kind {
	case dAtom, dString:
		return dl.text(dst, v)
	case dKV:
	default:
		return dst
	}
	end := v + int(dl.nodes[v].size)
	for k := v + 1; k < end; {
		r := k + 1
		dst = dl.text(dst, k)
		dst = append(dst, '\t')
		dst = dl.text(dst, r)
		dst = append(dst, '\t')
		k = r + int(dl.nodes[r].size)
	}
	return dst
}

// Cyrus 2.x mbtype bits (imap/mboxlist.h before 2.5). 3.6's own parser of
// this text applies its newer bit layout to the number; the 2.x layout is
// the one these files were written with.
const (
	legacyRemote   = 1
	legacyReserve  = 2
	legacyNetnews  = 4
	legacyMoving   = 8
	legacyDeleted  = 16
	legacyMaxValue = 1 << 20
)

// decodeLegacy decodes "mbtype SP location SP acl" (Cyrus ≤ 2.4), where
// location is "server!partition" for a remote entry, optionally preceded
// by a parenthesised list "(uniqueid ... specialuse ...)" in late 2.4.
func (d *decoder) decodeLegacy(rec record, value []byte) (recKind, record, error) {
	v := value
	if len(v) > 0 && v[0] == '(' {
		// Skip the balanced parenthesised prefix.
		depth := 0
		i := 0
		for ; i < len(v); i++ {
			if v[i] == '(' {
				depth++
			} else if v[i] == ')' {
				depth--
				if depth == 0 {
					break
				}
			}
		}
		if depth != 0 {
			return recSkip, rec, fmt.Errorf("%w: %q: unbalanced '(' in legacy value", ErrBadRecord, rec.name)
		}
		v = bytes.TrimLeft(v[i+1:], " ")
	}
	n, digits := 0, 0
	for digits < len(v) && v[digits] >= '0' && v[digits] <= '9' {
		n = n*10 + int(v[digits]-'0')
		digits++
		if n > legacyMaxValue {
			return recSkip, rec, fmt.Errorf("%w: %q: mbtype out of range", ErrBadRecord, rec.name)
		}
	}
	if digits == 0 || (digits < len(v) && v[digits] != ' ') {
		return recSkip, rec, fmt.Errorf("%w: %q: value is neither a dlist nor \"mbtype partition acl\"", ErrBadRecord, rec.name)
	}
	v = v[digits:]
	if len(v) > 0 {
		v = v[1:]
	}
	loc := v
	var acl []byte
	if i := bytes.IndexByte(v, ' '); i >= 0 {
		loc, acl = v[:i], v[i+1:]
	}
	if len(loc) == 0 {
		return recSkip, rec, fmt.Errorf("%w: %q: legacy value without partition", ErrBadRecord, rec.name)
	}
	if n&legacyDeleted != 0 {
		return recGone, rec, nil
	}
	switch {
	case n&legacyReserve != 0:
		rec.state = lookup.Reserved
	case n&legacyMoving != 0:
		rec.state = lookup.Moving
	default:
		rec.state = lookup.Active
	}
	rec.partition = loc
	if i := bytes.IndexByte(loc, '!'); i >= 0 {
		rec.server, rec.partition = loc[:i], loc[i+1:]
	} else if n&legacyRemote != 0 {
		// Cyrus's proxy code cuts the location at '!' if there is one
		// and otherwise uses all of it as the server.
		rec.server, rec.partition = loc, nil
	}
	rec.acl = bytes.TrimRight(acl, "\r\n")
	return recMailbox, rec, nil
}

// DecodeRecord decodes one mailboxes.db record of a file of the given era.
// ok is false for records that do not describe a routable mailbox: keys
// that are not mailbox entries and entries Cyrus treats as nonexistent
// (deleted, intermediate). An error wraps ErrBadRecord.
func DecodeRecord(key, value []byte, era Era) (e lookup.Entry, ok bool, err error) {
	d := decoder{era: era}
	kind, rec, err := d.decode(key, value)
	if err != nil || kind != recMailbox {
		return lookup.Entry{}, false, err
	}
	return lookup.Entry{
		Name:      string(rec.name),
		Server:    string(rec.server),
		Partition: string(rec.partition),
		ACL:       string(rec.acl),
		State:     rec.state,
	}, true, nil
}

// detectEra decides the era of a file from its records: 3.6 and later
// write T first in every dlist value ("%(T ") and use 0x1F/0x1D in keys;
// older versions write A (or I, P) first and never put those bytes in a
// name.
func detectEra(key, value []byte) (Era, bool) {
	if bytes.HasPrefix(value, []byte("%(T ")) {
		return EraDBName, true
	}
	if bytes.IndexByte(key, 0x1F) >= 0 || bytes.IndexByte(key, 0x1D) >= 0 {
		return EraDBName, true
	}
	return EraName, false
}
