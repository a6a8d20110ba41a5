package mboxlist

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"sort"
	"strings"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// An Index is an immutable routing table built from one mailboxes.db
// snapshot. It is shared by all lookups without locking; a reload builds a
// new Index and swaps the pointer.
//
// Layout: every name and ACL lives in one string arena, entries are
// fixed-size records pointing into it, and server and partition strings
// are interned (a murder has a handful of backends, a million mailboxes).
// An open-addressing hash table maps a name to its entry. For a million
// mailboxes this is about 24 bytes per entry plus the text, a few dozen
// megabytes in all, and building it needs no sort.
type Index struct {
	arena   string
	entries []ientry
	table   []uint32 // entry index + 1; 0 = empty slot
	mask    uint64
	seed    maphash.Seed
	strs    []string // interned servers and partitions; strs[0] = ""
	era     Era
	bad     int // entries whose record could not be decoded
	skipped int // records that are not routable mailboxes
}

type ientry struct {
	nameOff, nameLen uint32
	aclOff, aclLen   uint32
	server, part     uint16
	state            lookup.State
	broken           bool
}

// ErrBrokenEntry is returned (wrapped) by Lookup for a mailbox whose record
// exists but could not be decoded, or that appears twice with different
// routing. The mailbox surely exists, so this is not ErrNotFound: the
// question passes on to the next source.
var ErrBrokenEntry = errors.New("mailboxes.db entry unreadable")

// Len is the number of mailbox entries in the index (including broken
// ones).
func (x *Index) Len() int { return len(x.entries) }

// Era is the record format the index was built from.
func (x *Index) Era() Era { return x.era }

// Broken is the number of mailbox records that could not be decoded.
func (x *Index) Broken() int { return x.bad }

func (x *Index) find(name string) int {
	if len(x.table) == 0 {
		return -1
	}
	h := maphash.String(x.seed, name)
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		slot := x.table[i]
		if slot == 0 {
			return -1
		}
		e := &x.entries[slot-1]
		if int(e.nameLen) == len(name) && x.arena[e.nameOff:e.nameOff+e.nameLen] == name {
			return int(slot - 1)
		}
	}
}

// Lookup returns the entry for an internal mailbox name, ErrNotFound if
// the index has no such mailbox, or an error wrapping ErrBrokenEntry.
// It does not allocate: Name is the argument itself and the other strings
// are slices of the index's arena.
func (x *Index) Lookup(mailbox string) (lookup.Entry, error) {
	i := x.find(mailbox)
	if i < 0 {
		return lookup.Entry{}, lookup.ErrNotFound
	}
	e := &x.entries[i]
	if e.broken {
		return lookup.Entry{}, brokenErr
	}
	return lookup.Entry{
		Name:      mailbox,
		Server:    x.strs[e.server],
		Partition: x.strs[e.part],
		ACL:       x.arena[e.aclOff : e.aclOff+e.aclLen],
		State:     e.state,
	}, nil
}

// brokenErr is preallocated so that Lookup stays allocation-free.
var brokenErr = fmt.Errorf("%w (record undecodable or duplicated)", ErrBrokenEntry)

// forEach calls fn for every entry; tests use it to compare whole tables.
func (x *Index) forEach(fn func(name string, e lookup.Entry, err error)) {
	for i := range x.entries {
		e := &x.entries[i]
		name := x.arena[e.nameOff : e.nameOff+e.nameLen]
		if e.broken {
			fn(name, lookup.Entry{}, brokenErr)
			continue
		}
		fn(name, lookup.Entry{
			Name:      name,
			Server:    x.strs[e.server],
			Partition: x.strs[e.part],
			ACL:       x.arena[e.aclOff : e.aclOff+e.aclLen],
			State:     e.state,
		}, nil)
	}
}

// recordSource is what the index needs from a database snapshot: an
// in-order walk of committed records. *cyrusdb.DB satisfies it.
type recordSource interface {
	ForEach(fn func(key, value []byte) error) error
	Len() int
}

// buildStats reports what a build skipped, for the log.
type buildStats struct {
	firstBad error // first undecodable record
}

var errEraFound = errors.New("era found")

// buildIndex builds an index from a snapshot. Records that cannot be
// decoded do not fail the build (one bad entry must not take every other
// mailbox's routing away); they are kept as broken entries when their name
// is known, and counted.
func buildIndex(src recordSource) (*Index, buildStats, error) {
	var st buildStats
	era := EraName
	err := src.ForEach(func(k, v []byte) error {
		if e, ok := detectEra(k, v); ok {
			era = e
			return errEraFound
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEraFound) {
		return nil, st, err
	}
	n := src.Len()
	b := newBuilder(n, era)
	d := decoder{era: era}
	err = src.ForEach(func(k, v []byte) error {
		kind, rec, derr := d.decode(k, v)
		if derr != nil {
			if st.firstBad == nil {
				st.firstBad = derr
			}
			b.x.bad++
			if len(rec.name) > 0 {
				return b.add(rec, true)
			}
			return nil
		}
		switch kind {
		case recMailbox:
			return b.add(rec, false)
		default:
			b.x.skipped++
		}
		return nil
	})
	if err != nil {
		return nil, st, err
	}
	return b.finish(), st, nil
}

// builder accumulates entries; names are deduplicated as they come so a
// duplicate (which Cyrus's sorted files cannot hold for one era, but a
// name conversion could produce) is detected.
type builder struct {
	x      *Index
	arena  strings.Builder
	intern *lookup.Interner
}

func newBuilder(sizeHint int, era Era) *builder {
	if sizeHint < 0 {
		sizeHint = 0
	}
	b := &builder{
		x: &Index{
			era:  era,
			seed: maphash.MakeSeed(),
			strs: []string{""},
		},
		intern: lookup.NewInterner(),
	}
	b.x.entries = make([]ientry, 0, sizeHint)
	b.arena.Grow(sizeHint * 40)
	b.rehash(sizeHint)
	return b
}

// rehash sizes the table for n entries at a load factor of at most 1/2.
func (b *builder) rehash(n int) {
	size := 16
	for size < 2*n {
		size <<= 1
	}
	x := b.x
	x.table = make([]uint32, size)
	x.mask = uint64(size - 1)
	arena := b.arena.String()
	for i := range x.entries {
		e := &x.entries[i]
		b.insertSlot(maphash.String(x.seed, arena[e.nameOff:e.nameOff+e.nameLen]), uint32(i+1))
	}
}

func (b *builder) insertSlot(h uint64, slot uint32) {
	x := b.x
	for i := h & x.mask; ; i = (i + 1) & x.mask {
		if x.table[i] == 0 {
			x.table[i] = slot
			return
		}
	}
}

var errTooLarge = errors.New("mailboxes.db too large for the routing index")

func (b *builder) str(s []byte) (uint16, error) {
	i, ok := b.intern.Index(s)
	if !ok {
		return 0, fmt.Errorf("%w: more than %d distinct servers and partitions", errTooLarge, math.MaxUint16)
	}
	b.x.strs = b.intern.Strings()
	return i, nil
}

func (b *builder) text(s []byte) (off, n uint32, err error) {
	if uint64(b.arena.Len())+uint64(len(s)) > math.MaxUint32 {
		return 0, 0, errTooLarge
	}
	off = uint32(b.arena.Len())
	b.arena.Write(s)
	return off, uint32(len(s)), nil
}

func (b *builder) add(rec record, broken bool) error {
	x := b.x
	if len(x.entries) >= math.MaxUint32-1 {
		return errTooLarge
	}
	e := ientry{broken: broken, state: rec.state}
	var err error
	if !broken {
		if e.server, err = b.str(rec.server); err != nil {
			return err
		}
		if e.part, err = b.str(rec.partition); err != nil {
			return err
		}
	}
	// Look for a duplicate first. The arena may be reallocated by the
	// writes below, so compare before writing.
	if i := b.findBuilding(rec.name); i >= 0 {
		old := &x.entries[i]
		if old.broken || broken || old.server != e.server || old.part != e.part || old.state != e.state {
			// Two records for one name that disagree: any answer could
			// be wrong, so the mailbox's routing is unknown here.
			old.broken = true
		}
		return nil
	}
	if e.nameOff, e.nameLen, err = b.text(rec.name); err != nil {
		return err
	}
	if e.aclOff, e.aclLen, err = b.text(rec.acl); err != nil {
		return err
	}
	x.entries = append(x.entries, e)
	if 2*len(x.entries) > len(x.table) {
		b.rehash(len(x.entries))
	} else {
		b.insertSlot(maphash.Bytes(x.seed, rec.name), uint32(len(x.entries)))
	}
	return nil
}

func (b *builder) findBuilding(name []byte) int {
	x := b.x
	arena := b.arena.String()
	for i := maphash.Bytes(x.seed, name) & x.mask; ; i = (i + 1) & x.mask {
		slot := x.table[i]
		if slot == 0 {
			return -1
		}
		e := &x.entries[slot-1]
		if int(e.nameLen) == len(name) && arena[e.nameOff:e.nameOff+e.nameLen] == string(name) {
			return int(slot - 1)
		}
	}
}

func (b *builder) finish() *Index {
	b.x.arena = b.arena.String()
	b.intern = nil
	return b.x
}

// Servers returns the distinct backend server strings the index routes
// to, sorted.
func (x *Index) Servers() []string {
	seen := map[uint16]bool{}
	for i := range x.entries {
		if e := &x.entries[i]; !e.broken && e.server != 0 {
			seen[e.server] = true
		}
	}
	out := make([]string, 0, len(seen))
	for s := range seen {
		out = append(out, x.strs[s])
	}
	sort.Strings(out)
	return out
}
