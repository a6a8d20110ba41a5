package replica

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
	"strings"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// A list is an immutable table of mailboxes: one master dump, one loaded
// snapshot, or one compaction of a list and the changes pushed after it.
// Lookups share it without locking.
//
// It is laid out for a lookup that touches as little memory as possible,
// since with a million mailboxes every access is a cache (and TLB) miss:
// an open-addressing hash table whose slots hold the whole fixed-size
// record, with part of the hash as a tag, so that a lookup reads one slot
// (and, when probing, its neighbours in the same cache lines) and then the
// name once to confirm it: two misses. The text of every entry (name, then
// ACL) lives in large string chunks, and server and partition strings are
// interned (a murder has a handful of backends and a million mailboxes).
// At a load factor of at most 1/2 a million mailboxes take 48 MB of table
// plus their text. The text goes into chunks of a fixed size rather than
// one growing buffer, so that building a list never copies what it holds
// already.
type list struct {
	chunks []string
	slots  []lentry
	mask   uint64
	seed   maphash.Seed
	strs   []string // interned servers and partitions; strs[0] = ""
	used   int      // slots taken, deleted ones included
	live   int      // mailboxes (slots taken and not deleted)
}

type lentry struct {
	tag             uint32 // the hash's high half, never 0; 0 = empty slot
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

func tagOf(h uint64) uint32 { return uint32(h>>32) | 1 }

// Len is the number of mailboxes (deleted entries excluded).
func (l *list) Len() int { return l.live }

// servers returns the servers the list's mailboxes are on, sorted.
func (l *list) servers() []string {
	seen := map[uint16]bool{}
	for i := range l.slots {
		if e := &l.slots[i]; e.tag != 0 && !e.deleted {
			seen[e.server] = true
		}
	}
	var out []string
	for i := range seen {
		if l.strs[i] != "" {
			out = append(out, l.strs[i])
		}
	}
	slices.Sort(out)
	return out
}

// find returns the slot of name, or nil.
func (l *list) find(name string) *lentry {
	if len(l.slots) == 0 {
		return nil
	}
	h := maphash.String(l.seed, name)
	tag := tagOf(h)
	for i := h & l.mask; ; i = (i + 1) & l.mask {
		e := &l.slots[i]
		if e.tag == 0 {
			return nil
		}
		if e.tag == tag && int(e.nameLen) == len(name) && l.name(e) == name {
			return e
		}
	}
}

// lookup returns the entry for name. It does not allocate: Name is the
// argument itself and the other strings are slices of the list.
func (l *list) lookup(name string) (lookup.Entry, bool) {
	e := l.find(name)
	if e == nil || e.deleted {
		return lookup.Entry{}, false
	}
	return l.entry(e, name), true
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

// forEach calls fn for every mailbox, in table order.
func (l *list) forEach(fn func(e lookup.Entry) error) error {
	for i := range l.slots {
		e := &l.slots[i]
		if e.tag == 0 || e.deleted {
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
	intern  *lookup.Interner
	scratch [4][]byte
}

func newBuilder(sizeHint int) *builder {
	sizeHint = max(sizeHint, 0)
	b := &builder{
		l: &list{
			seed: maphash.MakeSeed(),
			strs: []string{""},
		},
		intern: lookup.NewInterner(),
	}
	b.resize(sizeHint)
	return b
}

// resize makes the table hold n entries at a load factor of at most 1/2,
// moving the ones it has.
func (b *builder) resize(n int) {
	size := 16
	for size < 2*n {
		size <<= 1
	}
	l := b.l
	old := l.slots
	l.slots = make([]lentry, size)
	l.mask = uint64(size - 1)
	for i := range old {
		if e := &old[i]; e.tag != 0 {
			h := maphash.String(l.seed, l.name(e))
			*b.freeSlot(h) = *e
		}
	}
}

// freeSlot returns the first empty slot on h's probe sequence.
func (b *builder) freeSlot(h uint64) *lentry {
	l := b.l
	for i := h & l.mask; ; i = (i + 1) & l.mask {
		if l.slots[i].tag == 0 {
			return &l.slots[i]
		}
	}
}

// findBuilding is find for a name given as bytes and its hash.
func (b *builder) findBuilding(h uint64, name []byte) *lentry {
	l := b.l
	tag := tagOf(h)
	for i := h & l.mask; ; i = (i + 1) & l.mask {
		e := &l.slots[i]
		if e.tag == 0 {
			return nil
		}
		if e.tag == tag && int(e.nameLen) == len(name) && l.name(e) == string(name) {
			return e
		}
	}
}

func (b *builder) str(s []byte) (uint16, error) {
	i, ok := b.intern.Index(s)
	if !ok {
		return 0, fmt.Errorf("%w: more than %d distinct servers and partitions", errTooLarge, math.MaxUint16)
	}
	b.l.strs = b.intern.Strings()
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
	h := maphash.Bytes(l.seed, name)
	e := lentry{tag: tagOf(h), state: state, nameLen: uint32(len(name)), aclLen: uint32(len(acl))}
	var err error
	if e.server, err = b.str(server); err != nil {
		return err
	}
	if e.part, err = b.str(part); err != nil {
		return err
	}
	// The text is written afresh even for a replaced entry (its ACL may
	// have grown); the old text stays in its chunk unused.
	if e.off, err = b.text(name, acl); err != nil {
		return err
	}
	if old := b.findBuilding(h, name); old != nil {
		if old.deleted {
			l.live++
		}
		*old = e
		return nil
	}
	if l.used >= math.MaxUint32-1 {
		return errTooLarge
	}
	if 2*(l.used+1) > len(l.slots) {
		b.resize(l.used + 1)
	}
	*b.freeSlot(h) = e
	l.used++
	l.live++
	return nil
}

// del marks name deleted. Its slot stays, so that a later put of the
// same name finds it and probe sequences through it are not cut.
func (b *builder) del(name []byte) {
	l := b.l
	if e := b.findBuilding(maphash.Bytes(l.seed, name), name); e != nil && !e.deleted {
		e.deleted = true
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
