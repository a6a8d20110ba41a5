package cyrusdb

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
)

// twoskip layout constants (lib/cyrusdb_twoskip.c; all integers big-endian).
const (
	tsHeaderSize  = 64
	tsDummyOffset = tsHeaderSize
	tsMaxLevel    = 31
	// The DUMMY is a level-31 record with no key: 8 bytes of type, level
	// and lengths, 32 pointers, 8 bytes of CRCs.
	tsDummySize   = 8 + 8*(tsMaxLevel+1) + 8
	tsFirstRecord = tsDummyOffset + tsDummySize // 336
	// The smallest possible record: a level-0 DELETE or COMMIT.
	tsMinRecord = 24

	tsOffVersion     = 20
	tsOffGeneration  = 24
	tsOffNumRecords  = 32
	tsOffRepackSize  = 40
	tsOffCurrentSize = 48
	tsOffFlags       = 56
	tsOffCRC         = 60

	tsFlagDirty = 1

	tsDummy  = '='
	tsRecord = '+'
	tsDelete = '-'
	tsCommit = '$'
)

// tsHeader is the 64-byte twoskip file header.
type tsHeader struct {
	version     uint32
	generation  uint64
	numRecords  uint64
	repackSize  uint64
	currentSize uint64
	flags       uint32
}

// parseTwoskipHeader checks magic, version and CRC as Cyrus's read_header()
// does. Cyrus rejects only versions above its own (1); so do we.
func parseTwoskipHeader(data []byte) (tsHeader, error) {
	var h tsHeader
	if len(data) < tsHeaderSize {
		return h, formatErr(Twoskip, len(data), "file too short for the %d-byte header (%d bytes)", tsHeaderSize, len(data))
	}
	if !bytes.Equal(data[:len(twoskipMagic)], twoskipMagic) {
		return h, formatErr(Twoskip, 0, "bad magic")
	}
	be := binary.BigEndian
	h.version = be.Uint32(data[tsOffVersion:])
	h.generation = be.Uint64(data[tsOffGeneration:])
	h.numRecords = be.Uint64(data[tsOffNumRecords:])
	h.repackSize = be.Uint64(data[tsOffRepackSize:])
	h.currentSize = be.Uint64(data[tsOffCurrentSize:])
	h.flags = be.Uint32(data[tsOffFlags:])
	if got, want := crc32.ChecksumIEEE(data[:tsOffCRC]), be.Uint32(data[tsOffCRC:]); got != want {
		return h, formatErr(Twoskip, tsOffCRC, "header CRC mismatch (computed %08x, stored %08x)", got, want)
	}
	if h.version > 1 {
		return h, formatErr(Twoskip, tsOffVersion, "unsupported version %d (this reader knows version 1)", h.version)
	}
	if h.currentSize < tsFirstRecord {
		return h, formatErr(Twoskip, tsOffCurrentSize, "committed size %d is smaller than header plus DUMMY (%d)", h.currentSize, tsFirstRecord)
	}
	return h, nil
}

// tsRec is one decoded twoskip record header. Offsets index the buffer.
type tsRec struct {
	off     int
	typ     byte
	level   int
	ptrs    int // offset of nextloc[0]
	keyOff  int
	keyLen  int
	valLen  int
	tailLen int // key+value rounded up to 8
	tailCRC uint32
}

func (r *tsRec) next(buf []byte, i int) uint64 {
	return binary.BigEndian.Uint64(buf[r.ptrs+8*i:])
}

// readTwoskipRecord decodes and head-CRC-checks the record at off, which
// must lie wholly inside buf (the committed region). Lengths are bounded by
// the buffer before any arithmetic, so hostile lengths cannot overflow or
// cause large allocations (none are made).
func readTwoskipRecord(buf []byte, off int) (tsRec, error) {
	r := tsRec{off: off}
	end := len(buf)
	if off < 0 || off > end-tsMinRecord {
		return r, formatErr(Twoskip, off, "record header extends past committed size %d", end)
	}
	be := binary.BigEndian
	r.typ = buf[off]
	r.level = int(buf[off+1])
	if r.level > tsMaxLevel {
		return r, formatErr(Twoskip, off, "record level %d exceeds %d", r.level, tsMaxLevel)
	}
	keyLen := uint64(be.Uint16(buf[off+2:]))
	valLen := uint64(be.Uint32(buf[off+4:]))
	p := off + 8
	if keyLen == 0xFFFF {
		if p > end-8 {
			return r, formatErr(Twoskip, off, "64-bit key length extends past committed size %d", end)
		}
		keyLen = be.Uint64(buf[p:])
		p += 8
	}
	if valLen == 0xFFFFFFFF {
		if p > end-8 {
			return r, formatErr(Twoskip, off, "64-bit value length extends past committed size %d", end)
		}
		valLen = be.Uint64(buf[p:])
		p += 8
	}
	if keyLen > uint64(end) || valLen > uint64(end) {
		return r, formatErr(Twoskip, off, "key length %d or value length %d exceeds committed size %d", keyLen, valLen, end)
	}
	r.keyLen, r.valLen = int(keyLen), int(valLen)
	r.ptrs = p
	crcOff := p + 8*(r.level+1)
	r.keyOff = crcOff + 8
	r.tailLen = (r.keyLen + r.valLen + 7) &^ 7
	if r.keyOff > end || r.tailLen > end-r.keyOff {
		return r, formatErr(Twoskip, off, "record of %d bytes extends past committed size %d", r.keyOff+r.tailLen-off, end)
	}
	if got, want := crc32.ChecksumIEEE(buf[off:crcOff]), be.Uint32(buf[crcOff:]); got != want {
		return r, formatErr(Twoskip, off, "record head CRC mismatch (computed %08x, stored %08x)", got, want)
	}
	r.tailCRC = be.Uint32(buf[crcOff+4:])
	return r, nil
}

// pick0 returns the current level-0 successor of a record: nextloc[0] and
// nextloc[1] are alternatives, and a writer only ever rewrites the one that
// is not the pre-transaction link (twoskip.c _setloc), so the larger of those
// below the committed size is the committed link. Records with one pointer
// (level 0: DELETE) have no alternative.
func (r *tsRec) pick0(buf []byte) uint64 {
	end := uint64(len(buf))
	n0 := r.next(buf, 0)
	if n0 >= end {
		n0 = 0
	}
	if r.level == 0 {
		return n0
	}
	n1 := r.next(buf, 1)
	if n1 >= end {
		n1 = 0
	}
	return max(n0, n1)
}

// parseTwoskip walks level 0 of the committed state (as lib/cyrusdb_twoskip.c walks it): from the
// DUMMY, follow pick0 against current_size, forwarding through DELETE
// records, checking the head CRC of each record visited and the tail CRC of
// each record emitted. Skip pointers (levels >= 1) are never followed: they
// may point into uncommitted space after a crash, and a full walk does not
// need them.
//
// It follows Cyrus's own walk record type by record type, kept as one
// function so that the two can be read side by side.
func parseTwoskip(data []byte, fileSize int64) (*DB, error) {
	h, err := parseTwoskipHeader(data)
	if err != nil {
		return nil, err
	}
	if h.currentSize > uint64(len(data)) {
		return nil, formatErr(Twoskip, len(data), "file is truncated: %d bytes, header says %d are committed", len(data), h.currentSize)
	}
	buf := data[:h.currentSize]
	db := &DB{
		buf: buf,
		Info: Info{
			FileSize:      fileSize,
			CommittedSize: int64(h.currentSize),
			Generation:    h.generation,
			Dirty:         h.flags&tsFlagDirty != 0 || uint64(fileSize) != h.currentSize,
			HeaderRecords: h.numRecords,
			RepackSize:    int64(min(h.repackSize, 1<<62)),
		},
	}

	dummy, err := readTwoskipRecord(buf, tsDummyOffset)
	if err != nil {
		return nil, err
	}
	if dummy.typ != tsDummy || dummy.level != tsMaxLevel || dummy.keyLen != 0 || dummy.valLen != 0 {
		return nil, formatErr(Twoskip, tsDummyOffset, "no DUMMY record (type %q, level %d)", dummy.typ, dummy.level)
	}

	// Every record in a valid chain is visited once, and records are at
	// least tsMinRecord bytes long, so more hops than that prove a loop.
	maxHops := (len(buf)-tsFirstRecord)/tsMinRecord + 1
	// Size the result from the header's count, but never beyond what the
	// buffer could hold, so a lying header cannot force a huge allocation.
	hint := min(h.numRecords, uint64(maxHops))
	db.recs = make([]entry, 0, hint)

	hops := 0
	from := tsDummyOffset
	next := dummy.pick0(buf)
	for next != 0 {
		hops++
		if hops > maxHops {
			return nil, formatErr(Twoskip, from, "level-0 pointer loop (more than %d hops)", maxHops)
		}
		// pick0 already dropped pointers at or past the committed size.
		if next < tsFirstRecord {
			return nil, formatErr(Twoskip, from, "pointer %d points back into the header or DUMMY", next)
		}
		if next%8 != 0 {
			return nil, formatErr(Twoskip, from, "pointer %d is not 8-byte aligned", next)
		}
		rec, err := readTwoskipRecord(buf, int(next))
		if err != nil {
			return nil, err
		}
		switch rec.typ {
		case tsDelete:
			// A DELETE stands in the chain for a removed key and forwards
			// to the record that followed it. Cyrus takes one hop; a chain
			// of them is followed here, bounded by the hop guard.
			from, next = rec.off, rec.pick0(buf)
			continue
		case tsRecord:
			if rec.level == 0 {
				return nil, formatErr(Twoskip, rec.off, "RECORD with level 0")
			}
		default:
			return nil, formatErr(Twoskip, rec.off, "unexpected record type %q in the level-0 chain", rec.typ)
		}
		if got := crc32.ChecksumIEEE(buf[rec.keyOff : rec.keyOff+rec.tailLen]); got != rec.tailCRC {
			return nil, formatErr(Twoskip, rec.off, "record tail CRC mismatch (computed %08x, stored %08x)", got, rec.tailCRC)
		}
		db.recs = append(db.recs, entry{
			k: span{rec.keyOff, rec.keyLen},
			v: span{rec.keyOff + rec.keyLen, rec.valLen},
		})
		from, next = rec.off, rec.pick0(buf)
	}
	return db, nil
}
