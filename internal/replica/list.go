package replica

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"strings"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// A list is an immutable table of mailboxes: one master dump, one loaded
// snapshot, or one compaction of a list and the changes pushed after it.
// Lookups share it without locking.
//
// The layout is the one of the mailboxes.db routing index: the text of
// every entry (name, then ACL) lives in large string chunks, entries are
// fixed-size records pointing into them, server and partition strings are
// interned (a murder has a handful of backends and a million mailboxes),
// and an open-addressing hash table with a load factor of at most 1/2 maps
// a name to its record. A million mailboxes take about 20 bytes of record
// and 8 of table each, plus their text. The text goes into chunks of a
// fixed size rather than one growing buffer, so that building a list never
// copies what it holds already and never needs twice its size.
type list struct {
	chunks  []string
	entries []lentry
	table   []uint32 // entry index + 1; 0 = empty slot
	mask    uint64
	seed    maphash.Seed
	strs    []string // interned servers and partitions; strs[0] = ""
	live    int      // entries not deleted
}

type lentry struct {
	off             uint32 // name, then ACL, at this arena offset
	nameLen, aclLen uint32
	server, part    uint16
	state           lookup.State
	deleted         bool // a DELETE for it came later in the dump
}

// chunkBits sets the chunk size (1 MiB). One entry's text must fit in a
// chunk, so Config.MaxLiteral is bounded well below it.
const (
	chunkBits = 20
	chunkSize = 1 << chunkBits
)

var errTooLarge = errors.New("mailbox list too large")

func (l *list) text(off, n uint32) string {
	c := l.chunks[off>>chunkBits]
	o := off & (chunkSize - 1)
	return c[o : o+n]
}

func (l *list) name(e *lentry) string { return l.text(e.off, e.nameLen) }

// Len is the number of mailboxes (deleted entries excluded).
func (l *list) Len() int { return l.live }

// find returns the index of name's entry or -1.
func (l *list) find(name string) int {
	if len(l.table) == 0 {
		return -1
	}
	for i := maphash.String(l.seed, name) & l.mask; ; i = (i + 1) & l.mask {
		slot := l.table[i]
		if slot == 0 {
			return -1
		}
		e := &l.entries[slot-1]
		if int(e.nameLen) == len(name) && l.name(e) == name {
			return int(slot - 1)
		}
	}
}

// lookup returns the entry for name. It does not allocate: Name is the
// argument itself and the other strings are slices of the list.
func (l *list) lookup(name string) (lookup.Entry, bool) {
	i := l.find(name)
	if i < 0 || l.entries[i].deleted {
		return lookup.Entry{}, false
	}
	return l.entry(&l.entries[i], name), true
}

func (l *list) entry(e *lentry, name string) lookup.Entry {
	return lookup.Entry{
		Name:      name,
		Server:    l.strs[e.server],
		Partition: l.strs[e.part],
		ACL:       l.text(e.off+e.nameLen, e.aclLen),
		State:     e.state,
	}
}

// forEach calls fn for every mailbox, in the order they were added.
func (l *list) forEach(fn func(e lookup.Entry) error) error {
	for i := range l.entries {
		e := &l.entries[i]
		if e.deleted {
			continue
		}
		if err := fn(l.entry(e, l.name(e))); err != nil {
			return err
		}
	}
	return nil
}

// builder fills a new list. It is used by one goroutine; the list it
// returns from finish is immutable.
type builder struct {
	l       *list
	cur     strings.Builder // the last chunk, being filled
	intern  map[string]uint16
	scratch [4][]byte
}

func newBuilder(sizeHint int) *builder {
	sizeHint = max(sizeHint, 0)
	b := &builder{
		l: &list{
			seed: maphash.MakeSeed(),
			strs: []string{""},
		},
		intern: map[string]uint16{"": 0},
	}
	b.l.entries = make([]lentry, 0, sizeHint)
	b.rehash(sizeHint)
	return b
}

// rehash sizes the table for n entries at a load factor of at most 1/2.
func (b *builder) rehash(n int) {
	size := 16
	for size < 2*n {
		size <<= 1
	}
	l := b.l
	l.table = make([]uint32, size)
	l.mask = uint64(size - 1)
	for i := range l.entries {
		b.insertSlot(maphash.String(l.seed, l.name(&l.entries[i])), uint32(i+1))
	}
}

func (b *builder) insertSlot(h uint64, slot uint32) {
	l := b.l
	for i := h & l.mask; ; i = (i + 1) & l.mask {
		if l.table[i] == 0 {
			l.table[i] = slot
			return
		}
	}
}

// findBuilding is find for a name given as bytes.
func (b *builder) findBuilding(h uint64, name []byte) int {
	l := b.l
	for i := h & l.mask; ; i = (i + 1) & l.mask {
		slot := l.table[i]
		if slot == 0 {
			return -1
		}
		e := &l.entries[slot-1]
		if int(e.nameLen) == len(name) && l.name(e) == string(name) {
			return int(slot - 1)
		}
	}
}

func (b *builder) str(s []byte) (uint16, error) {
	if len(s) == 0 {
		return 0, nil
	}
	if i, ok := b.intern[string(s)]; ok { // no allocation for the lookup
		return i, nil
	}
	if len(b.l.strs) >= math.MaxUint16 {
		return 0, fmt.Errorf("%w: more than %d distinct servers and partitions", errTooLarge, math.MaxUint16)
	}
	str := string(s)
	i := uint16(len(b.l.strs))
	b.l.strs = append(b.l.strs, str)
	b.intern[str] = i
	return i, nil
}

// text stores name and acl one after the other and returns their offset.
func (b *builder) text(name, acl []byte) (uint32, error) {
	n := len(name) + len(acl)
	if n > chunkSize {
		return 0, fmt.Errorf("%w: an entry of %d bytes", errTooLarge, n)
	}
	l := b.l
	if len(l.chunks) == 0 || b.cur.Len()+n > chunkSize {
		if len(l.chunks) >= 1<<(32-chunkBits) {
			return 0, fmt.Errorf("%w: more than 4 GiB of names and ACLs", errTooLarge)
		}
		// A chunk, once full, is never written again, so the strings
		// sliced from it stay valid; the next one starts empty.
		b.cur = strings.Builder{}
		b.cur.Grow(chunkSize)
		l.chunks = append(l.chunks, "")
	}
	off := uint32(len(l.chunks)-1)<<chunkBits | uint32(b.cur.Len())
	b.cur.Write(name)
	b.cur.Write(acl)
	// String does not copy: it is a view of the bytes written so far,
	// which later writes (within the capacity) do not move.
	l.chunks[len(l.chunks)-1] = b.cur.String()
	return off, nil
}

// put adds a mailbox, or replaces the entry of the same name: in a dump
// the later line is the newer state.
func (b *builder) put(name, server, part, acl []byte, state lookup.State) error {
	l := b.l
	e := lentry{state: state, nameLen: uint32(len(name)), aclLen: uint32(len(acl))}
	var err error
	if e.server, err = b.str(server); err != nil {
		return err
	}
	if e.part, err = b.str(part); err != nil {
		return err
	}
	h := maphash.Bytes(l.seed, name)
	i := b.findBuilding(h, name)
	if i >= 0 {
		old := &l.entries[i]
		if old.deleted {
			l.live++
		}
		// The old text stays in its chunk unused; the new one is
		// written afresh (an ACL may have grown).
		if e.off, err = b.text(name, acl); err != nil {
			return err
		}
		*old = e
		return nil
	}
	if len(l.entries) >= math.MaxUint32-1 {
		return errTooLarge
	}
	if e.off, err = b.text(name, acl); err != nil {
		return err
	}
	l.entries = append(l.entries, e)
	l.live++
	if 2*len(l.entries) > len(l.table) {
		b.rehash(len(l.entries))
	} else {
		b.insertSlot(h, uint32(len(l.entries)))
	}
	return nil
}

// del marks name deleted. Its record stays, so that a later put of the
// same name finds it.
func (b *builder) del(name []byte) {
	l := b.l
	if i := b.findBuilding(maphash.Bytes(l.seed, name), name); i >= 0 && !l.entries[i].deleted {
		l.entries[i].deleted = true
		l.live--
	}
}

// putEntry is put for an Entry held as strings. It copies them into
// scratch buffers rather than converting, which would allocate per entry.
func (b *builder) putEntry(e lookup.Entry) error {
	s := &b.scratch
	s[0] = append(s[0][:0], e.Name...)
	s[1] = append(s[1][:0], e.Server...)
	s[2] = append(s[2][:0], e.Partition...)
	s[3] = append(s[3][:0], e.ACL...)
	return b.put(s[0], s[1], s[2], s[3], e.State)
}

// Len is the number of mailboxes added so far.
func (b *builder) Len() int { return b.l.live }

func (b *builder) finish() *list {
	b.intern = nil
	return b.l
}
