package cyrusdb

import (
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
)

// tsWriter builds twoskip files byte by byte for tests: valid ones for the
// benchmark and the fuzz corpus, and damaged ones for the corruption table.
// It follows the twoskip layout of lib/cyrusdb_twoskip.c independently of the parser.
type tsWriter struct {
	buf    []byte
	blanks bool // insert BLANK filler so record heads never straddle 512
}

var tsBlank = []byte(" BLANK\x07\xa0")

func newTSWriter(blanks bool) *tsWriter {
	w := &tsWriter{buf: make([]byte, tsHeaderSize), blanks: blanks}
	w.appendRec(tsDummy, tsMaxLevel, nil, nil, make([]uint64, tsMaxLevel+1))
	return w
}

// appendRec appends a record and returns its offset. len(ptrs) must be
// level+1.
func (w *tsWriter) appendRec(typ byte, level int, key, val []byte, ptrs []uint64) int {
	headLen := 8 + 8*len(ptrs)
	if len(key) >= 0xFFFF {
		headLen += 8
	}
	if w.blanks {
		for len(w.buf)/512 != (len(w.buf)+headLen+8-1)/512 {
			w.buf = append(w.buf, tsBlank...)
		}
	}
	off := len(w.buf)
	be := binary.BigEndian
	b := []byte{typ, byte(level), 0, 0, 0, 0, 0, 0}
	if len(key) >= 0xFFFF {
		be.PutUint16(b[2:], 0xFFFF)
	} else {
		be.PutUint16(b[2:], uint16(len(key)))
	}
	be.PutUint32(b[4:], uint32(len(val)))
	if len(key) >= 0xFFFF {
		b = be.AppendUint64(b, uint64(len(key)))
	}
	for _, p := range ptrs {
		b = be.AppendUint64(b, p)
	}
	b = be.AppendUint32(b, crc32.ChecksumIEEE(b))
	tail := append(append([]byte{}, key...), val...)
	for len(tail)%8 != 0 {
		tail = append(tail, 0)
	}
	b = be.AppendUint32(b, crc32.ChecksumIEEE(tail))
	w.buf = append(append(w.buf, b...), tail...)
	return off
}

// ptrOff returns the file offset of pointer i of the record at off.
func (w *tsWriter) ptrOff(off, i int) int {
	p := off + 8
	if binary.BigEndian.Uint16(w.buf[off+2:]) == 0xFFFF {
		p += 8
	}
	return p + 8*i
}

// setPtr rewrites pointer i of the record at off and fixes its head CRC,
// as a Cyrus writer does when it stitches a new record in.
func (w *tsWriter) setPtr(off, i int, v uint64) {
	binary.BigEndian.PutUint64(w.buf[w.ptrOff(off, i):], v)
	level := int(w.buf[off+1])
	crcOff := w.ptrOff(off, level+1)
	binary.BigEndian.PutUint32(w.buf[crcOff:], crc32.ChecksumIEEE(w.buf[off:crcOff]))
}

func (w *tsWriter) commit(txnStart int) int {
	return w.appendRec(tsCommit, 0, nil, nil, []uint64{uint64(txnStart)})
}

// header writes the 64-byte header with a correct CRC.
func (w *tsWriter) header(generation, numRecords, repackSize, currentSize uint64, flags uint32) {
	h := w.buf[:tsHeaderSize]
	copy(h, twoskipMagic)
	be := binary.BigEndian
	be.PutUint32(h[tsOffVersion:], 1)
	be.PutUint64(h[tsOffGeneration:], generation)
	be.PutUint64(h[tsOffNumRecords:], numRecords)
	be.PutUint64(h[tsOffRepackSize:], repackSize)
	be.PutUint64(h[tsOffCurrentSize:], currentSize)
	be.PutUint32(h[tsOffFlags:], flags)
	be.PutUint32(h[tsOffCRC:], crc32.ChecksumIEEE(h[:tsOffCRC]))
}

// buildTwoskip writes sorted keys as one committed transaction, like a
// repacked file: random levels, full skip pointers, a COMMIT, a clean
// header. It returns the file and the record offsets.
func buildTwoskip(keys, vals [][]byte, blanks bool, seed uint64) ([]byte, []int) {
	w := newTSWriter(blanks)
	rng := rand.New(rand.NewPCG(seed, 1))
	offs := make([]int, len(keys))
	// last[i] is the offset of the last record taking part in skip level
	// i (level-0 uses slot 0 of pointer block); DUMMY at first.
	var last [tsMaxLevel]int
	for i := range last {
		last[i] = tsDummyOffset
	}
	start := len(w.buf)
	for i := range keys {
		level := 1
		for level < tsMaxLevel && rng.IntN(2) == 0 {
			level++
		}
		off := w.appendRec(tsRecord, level, keys[i], vals[i], make([]uint64, level+1))
		offs[i] = off
		// Level 0 lives in pointer slot 0; skip level l>=1 in slot l+1.
		w.setPtr(last[0], 0, uint64(off))
		last[0] = off
		for l := 1; l < level; l++ {
			w.setPtr(last[l], l+1, uint64(off))
			last[l] = off
		}
	}
	w.commit(start)
	w.header(1, uint64(len(keys)), uint64(len(w.buf)), uint64(len(w.buf)), 0)
	return w.buf, offs
}
