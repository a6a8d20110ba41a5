package cyrusdb

import (
	"bytes"
	"encoding/binary"
	"slices"
)

// skiplist layout constants (lib/cyrusdb_skiplist.c, file version 1.2; all
// integers are big-endian uint32, offsets absolute).
const (
	slHeaderSize   = 48
	slOffVersion   = 20
	slOffMaxLevel  = 28
	slMaxLevel     = 20 // SKIPLIST_MAXLEVEL
	slEndOfPtrs    = 0xFFFFFFFF
	slTypeInorder  = 1
	slTypeAdd      = 2
	slTypeDelete   = 4
	slTypeCommit   = 255
	slTypeDummy    = 257
	slDummyOffset  = slHeaderSize
	slMinKeyRecord = 4 + 4 + 4 + 4 // type, keylen, datalen, terminator
)

// slRec is one decoded skiplist INORDER/ADD/DUMMY record.
type slRec struct {
	typ    uint32
	keyOff int
	keyLen int
	valOff int
	valLen int
	size   int
}

func roundup4(n int) int { return (n + 3) &^ 3 }

// readSkiplistKeyRecord decodes a DUMMY, INORDER or ADD record at off:
// type, keylen, key padded to 4, datalen, data padded to 4, forward pointers,
// and a 0xFFFFFFFF terminator. At most maxLevel pointers are allowed.
func readSkiplistKeyRecord(buf []byte, off, maxLevel int) (slRec, error) {
	be := binary.BigEndian
	var r slRec
	end := len(buf)
	if off < 0 || off > end-slMinKeyRecord {
		return r, formatErr(Skiplist, off, "record extends past end of data %d", end)
	}
	r.typ = be.Uint32(buf[off:])
	kl := uint64(be.Uint32(buf[off+4:]))
	if kl > uint64(end) {
		return r, formatErr(Skiplist, off, "key length %d exceeds file size %d", kl, end)
	}
	r.keyLen = int(kl)
	r.keyOff = off + 8
	p := r.keyOff + roundup4(r.keyLen)
	if p > end-4 {
		return r, formatErr(Skiplist, off, "key of %d bytes extends past end of data %d", r.keyLen, end)
	}
	vl := uint64(be.Uint32(buf[p:]))
	if vl > uint64(end) {
		return r, formatErr(Skiplist, off, "data length %d exceeds file size %d", vl, end)
	}
	r.valLen = int(vl)
	r.valOff = p + 4
	p = r.valOff + roundup4(r.valLen)
	if p > end-4 {
		return r, formatErr(Skiplist, off, "data of %d bytes extends past end of data %d", r.valLen, end)
	}
	for n := 0; ; n++ {
		if p > end-4 {
			return r, formatErr(Skiplist, off, "pointer list extends past end of data %d", end)
		}
		if be.Uint32(buf[p:]) == slEndOfPtrs {
			p += 4
			break
		}
		if n >= maxLevel {
			return r, formatErr(Skiplist, off, "more than %d forward pointers", maxLevel)
		}
		p += 4
	}
	r.size = p - off
	return r, nil
}

// parseSkiplist replays the file as Cyrus's skiplist recovery does
// (lib/cyrusdb_skiplist.c, recovery): the INORDER records a checkpoint wrote, then each log transaction
// of ADD and DELETE records, applied only once its COMMIT is seen. Forward
// pointers are never followed, because Cyrus rewrites them in place during a
// transaction and a crashed writer can leave them torn; the replay needs
// only record boundaries, which are all bounds-checked.
//
// Damage in the log is treated like Cyrus's recovery treats it: the
// transaction it is in, and anything after it, is not committed. The result
// is the state as of the last good COMMIT, with Info.Dirty set because the
// file is longer than that, and Info.Warning saying where and why the replay
// stopped. A bad header, DUMMY or checkpoint (INORDER) record is corruption.
//
// The replay keeps a map, so the file's key order is lost; keys come out in
// raw byte order. That is Cyrus 3.6's order for mailboxes.db; a pre-3.6 file
// using the "mbox" comparator comes out in a different but complete order.
//
// It mirrors Cyrus's recovery loop record type by record type, and is kept
// as one function so that the two can be read side by side.
func parseSkiplist(data []byte, fileSize int64) (*DB, error) {
	be := binary.BigEndian
	if len(data) < slHeaderSize {
		return nil, formatErr(Skiplist, len(data), "file too short for the %d-byte header (%d bytes)", slHeaderSize, len(data))
	}
	if !bytes.Equal(data[:len(skiplistMagic)], skiplistMagic) {
		return nil, formatErr(Skiplist, 0, "bad magic")
	}
	if v := be.Uint32(data[slOffVersion:]); v != 1 {
		return nil, formatErr(Skiplist, slOffVersion, "unsupported version %d (this reader knows version 1)", v)
	}
	maxLevel := be.Uint32(data[slOffMaxLevel:])
	if maxLevel == 0 || maxLevel > slMaxLevel {
		return nil, formatErr(Skiplist, slOffMaxLevel, "maxlevel %d out of range 1..%d", maxLevel, slMaxLevel)
	}
	dummy, err := readSkiplistKeyRecord(data, slDummyOffset, int(maxLevel))
	if err != nil {
		return nil, err
	}
	if dummy.typ != slTypeDummy || dummy.keyLen != 0 || dummy.valLen != 0 {
		return nil, formatErr(Skiplist, slDummyOffset, "no DUMMY record (type %d)", dummy.typ)
	}

	// live maps a key to its record index in recs; recs grows as records
	// are seen and dead ones are dropped at the end.
	var recs []entry
	live := make(map[string]int)
	// starts records the offset of every INORDER/ADD record, so that a
	// DELETE can be checked to name a real record.
	starts := make(map[int]int) // offset -> index in recs

	off := slDummyOffset + dummy.size
	for off <= len(data)-4 && be.Uint32(data[off:]) == slTypeInorder {
		r, err := readSkiplistKeyRecord(data, off, int(maxLevel))
		if err != nil {
			return nil, err
		}
		recs = append(recs, entry{k: span{r.keyOff, r.keyLen}, v: span{r.valOff, r.valLen}})
		live[string(data[r.keyOff:r.keyOff+r.keyLen])] = len(recs) - 1
		starts[off] = len(recs) - 1
		off += r.size
	}
	committed := off

	type op struct {
		del bool
		idx int
	}
	var pending []op
	var logErr *FormatError
log:
	for off < len(data) {
		if off > len(data)-4 {
			logErr = formatErr(Skiplist, off, "partial record at end of file")
			break
		}
		switch t := be.Uint32(data[off:]); t {
		case 0:
			// Cyrus's recovery skips stray zero words left by old
			// truncation bugs; do the same.
			off += 4
		case slTypeCommit:
			for _, o := range pending {
				e := recs[o.idx]
				key := string(data[e.k.off : e.k.off+e.k.n])
				if o.del {
					delete(live, key)
				} else {
					live[key] = o.idx
				}
			}
			pending = pending[:0]
			off += 4
			committed = off
		case slTypeAdd:
			r, err := readSkiplistKeyRecord(data, off, int(maxLevel))
			if err != nil {
				logErr = err.(*FormatError)
				break log
			}
			recs = append(recs, entry{k: span{r.keyOff, r.keyLen}, v: span{r.valOff, r.valLen}})
			starts[off] = len(recs) - 1
			pending = append(pending, op{idx: len(recs) - 1})
			off += r.size
		case slTypeDelete:
			if off > len(data)-8 {
				logErr = formatErr(Skiplist, off, "partial DELETE record at end of file")
				break log
			}
			target := int(be.Uint32(data[off+4:]))
			idx, ok := starts[target]
			if !ok {
				logErr = formatErr(Skiplist, off, "DELETE names offset %d, which is not a record", target)
				break log
			}
			pending = append(pending, op{del: true, idx: idx})
			off += 8
		default:
			logErr = formatErr(Skiplist, off, "unknown record type %d in the log", t)
			break log
		}
	}
	warning := ""
	if logErr != nil {
		// A torn or damaged tail: only the last COMMIT counts.
		warning = logErr.Error()
	}

	keep := make([]int, 0, len(live))
	for _, i := range live {
		keep = append(keep, i)
	}
	out := make([]entry, 0, len(keep))
	for _, i := range keep {
		out = append(out, recs[i])
	}
	slices.SortFunc(out, func(a, b entry) int {
		return bytes.Compare(data[a.k.off:a.k.off+a.k.n], data[b.k.off:b.k.off+b.k.n])
	})
	return &DB{
		buf:  data[:committed],
		recs: out,
		Info: Info{
			FileSize:      fileSize,
			CommittedSize: int64(committed),
			Dirty:         int64(committed) != fileSize,
			Warning:       warning,
		},
	}, nil
}
