package cyrusdb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
)

func bs(ss ...string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

// threeRecs is a clean committed file with keys a, b, c.
func threeRecs(blanks bool) ([]byte, []int) {
	return buildTwoskip(bs("a", "b", "c"), bs("1", "22", "333"), blanks, 7)
}

// rewriteHeader fixes up the header of buf after a test changed a field.
func rewriteHeader(buf []byte, currentSize uint64, flags uint32) []byte {
	w := &tsWriter{buf: buf}
	be := binary.BigEndian
	w.header(be.Uint64(buf[tsOffGeneration:]), be.Uint64(buf[tsOffNumRecords:]),
		be.Uint64(buf[tsOffRepackSize:]), currentSize, flags)
	return w.buf
}

func TestTwoskipCommittedState(t *testing.T) {
	type tc struct {
		name  string
		build func() []byte
		want  []kv
		dirty bool
		// err, if set, is a substring of the FormatError; errOff its offset
		// (-1: any).
		err    string
		errOff func() int64
	}
	abc := []kv{{"a", "1"}, {"b", "22"}, {"c", "333"}}
	_, offs := threeRecs(false)
	at := func(i int) func() int64 { return func() int64 { return int64(offs[i]) } }
	cases := []tc{
		{name: "clean", build: func() []byte { b, _ := threeRecs(false); return b }, want: abc},
		{name: "clean with BLANK fillers", build: func() []byte {
			keys, vals := make([][]byte, 60), make([][]byte, 60)
			for i := range keys {
				keys[i] = fmt.Appendf(nil, "key%03d", i)
				vals[i] = []byte(strings.Repeat("v", i))
			}
			b, _ := buildTwoskip(keys, vals, true, 3)
			if !strings.Contains(string(b), string(tsBlank)) {
				panic("no BLANK written")
			}
			return b
		}, want: func() []kv {
			var out []kv
			for i := range 60 {
				out = append(out, kv{fmt.Sprintf("key%03d", i), strings.Repeat("v", i)})
			}
			return out
		}()},
		{name: "empty database", build: func() []byte {
			w := newTSWriter(false)
			w.commit(len(w.buf))
			w.header(1, 0, uint64(len(w.buf)), uint64(len(w.buf)), 0)
			return w.buf
		}},
		{name: "dirty with an uncommitted record in the alternate slot", dirty: true, want: abc, build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			committed := len(w.buf)
			// Insert "bb" after "b": the writer puts the new link in the
			// slot that does not hold the committed link.
			nb := w.appendRec(tsRecord, 1, []byte("bb"), []byte("x"), []uint64{uint64(offs[2]), 0})
			w.setPtr(offs[1], 1, uint64(nb))
			w.header(1, 3, uint64(committed), uint64(committed), tsFlagDirty)
			return w.buf
		}},
		{name: "crashed: clean flag but longer than committed", dirty: true, want: abc, build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			w.setPtr(offs[2], 1, uint64(w.appendRec(tsRecord, 1, []byte("d"), []byte("x"), []uint64{0, 0})))
			return w.buf
		}},
		{name: "committed insert uses the larger slot", want: []kv{{"a", "1"}, {"b", "22"}, {"bb", "x"}, {"c", "333"}}, build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			start := len(w.buf)
			nb := w.appendRec(tsRecord, 1, []byte("bb"), []byte("x"), []uint64{uint64(offs[2]), 0})
			w.setPtr(offs[1], 1, uint64(nb))
			w.commit(start)
			w.header(1, 4, uint64(start), uint64(len(w.buf)), 0)
			return w.buf
		}},
		{name: "delete chain", want: []kv{{"a", "1"}, {"c", "333"}}, build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			start := len(w.buf)
			// b deleted, then the DELETE itself forwarded through another.
			d2 := w.appendRec(tsDelete, 0, nil, nil, []uint64{uint64(offs[2])})
			d1 := w.appendRec(tsDelete, 0, nil, nil, []uint64{uint64(d2)})
			w.setPtr(offs[0], 1, uint64(d1))
			w.commit(start)
			w.header(1, 2, uint64(start), uint64(len(w.buf)), 0)
			return w.buf
		}},
		{name: "delete of the last key", want: []kv{{"a", "1"}, {"b", "22"}}, build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			start := len(w.buf)
			d := w.appendRec(tsDelete, 0, nil, nil, []uint64{0})
			w.setPtr(offs[1], 1, uint64(d))
			w.commit(start)
			w.header(1, 2, uint64(start), uint64(len(w.buf)), 0)
			return w.buf
		}},
		{name: "pointer beyond committed size is ignored", dirty: false, want: abc[:2], build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			w.setPtr(offs[1], 0, 1<<40)
			return w.buf
		}},
		{name: "bad head CRC", err: "head CRC", errOff: at(1), build: func() []byte {
			b, offs := threeRecs(false)
			b[offs[1]+9] ^= 0x40 // inside pointer 0, CRC not fixed
			return b
		}},
		{name: "bad tail CRC", err: "tail CRC", errOff: at(2), build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			b[w.ptrOff(offs[2], int(b[offs[2]+1])+1)+8] ^= 1 // first key byte
			return b
		}},
		{name: "bad header CRC", err: "header CRC", errOff: func() int64 { return tsOffCRC }, build: func() []byte {
			b, _ := threeRecs(false)
			b[tsOffNumRecords+7]++
			return b
		}},
		{name: "version 2", err: "unsupported version 2", errOff: func() int64 { return tsOffVersion }, build: func() []byte {
			b, _ := threeRecs(false)
			binary.BigEndian.PutUint32(b[tsOffVersion:], 2)
			binary.BigEndian.PutUint32(b[tsOffCRC:], crc32.ChecksumIEEE(b[:tsOffCRC]))
			return b
		}},
		{name: "bad magic", err: "bad magic", errOff: func() int64 { return 0 }, build: func() []byte {
			b, _ := threeRecs(false)
			b[10] = 'X'
			return b
		}},
		{name: "truncated file", err: "truncated", errOff: func() int64 { return int64(offs[2]) }, build: func() []byte {
			b, offs := threeRecs(false)
			return b[:offs[2]]
		}},
		{name: "committed size inside DUMMY", err: "smaller than header plus DUMMY", errOff: func() int64 { return tsOffCurrentSize }, build: func() []byte {
			b, _ := threeRecs(false)
			return rewriteHeader(b, 200, 0)
		}},
		{name: "header only", err: "too short", errOff: func() int64 { return 10 }, build: func() []byte {
			b, _ := threeRecs(false)
			return b[:10]
		}},
		{name: "pointer back into header", err: "back into the header", errOff: at(0), build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			w.setPtr(offs[0], 0, 64)
			return w.buf
		}},
		{name: "unaligned pointer", err: "not 8-byte aligned", errOff: at(0), build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			w.setPtr(offs[0], 0, uint64(offs[1]+4))
			return w.buf
		}},
		{name: "pointer loop", err: "pointer loop", errOff: func() int64 { return -1 }, build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			w.setPtr(offs[2], 0, uint64(offs[0]))
			return w.buf
		}},
		{name: "DELETE pointing at itself", err: "pointer loop", errOff: func() int64 { return -1 }, build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			start := len(w.buf)
			d := w.appendRec(tsDelete, 0, nil, nil, []uint64{0})
			w.setPtr(d, 0, uint64(d))
			w.setPtr(offs[0], 1, uint64(d))
			w.commit(start)
			w.header(1, 2, uint64(start), uint64(len(w.buf)), 0)
			return w.buf
		}},
		{name: "pointer to a COMMIT", err: "unexpected record type '$'", errOff: func() int64 { return -1 }, build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			w.setPtr(offs[0], 0, uint64(len(b)-24))
			return w.buf
		}},
		{name: "pointer into the middle of a record", err: "", errOff: func() int64 { return -1 }, build: func() []byte {
			b, offs := threeRecs(false)
			w := &tsWriter{buf: b}
			w.setPtr(offs[0], 0, uint64(offs[1]+8))
			return w.buf
		}},
		{name: "huge 64-bit key length", err: "exceeds committed size", errOff: func() int64 { return -1 }, build: func() []byte {
			b, _ := threeRecs(false)
			w := &tsWriter{buf: b}
			start := len(w.buf)
			off := w.appendRec(tsRecord, 1, make([]byte, 0xFFFF), nil, []uint64{0, 0})
			binary.BigEndian.PutUint64(w.buf[off+8:], 1<<62)
			w.setPtr(off, 0, 0) // fix head CRC over the changed length
			w.setPtr(offs[2], 1, uint64(off))
			w.commit(start)
			w.header(1, 4, uint64(start), uint64(len(w.buf)), 0)
			return w.buf
		}},
		{name: "level above 31", err: "level 40", errOff: at(1), build: func() []byte {
			b, offs := threeRecs(false)
			b[offs[1]+1] = 40
			return b
		}},
		{name: "record running past committed size", err: "past committed size", errOff: at(2), build: func() []byte {
			b, offs := threeRecs(false)
			return rewriteHeader(b, uint64(offs[2]+16), 0)
		}},
		{name: "no DUMMY", err: "no DUMMY", errOff: func() int64 { return tsDummyOffset }, build: func() []byte {
			b, _ := threeRecs(false)
			w := &tsWriter{buf: b}
			b[tsDummyOffset] = tsRecord
			w.setPtr(tsDummyOffset, 0, binary.BigEndian.Uint64(b[tsDummyOffset+8:]))
			return w.buf
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := c.build()
			db, err := Parse(data, Twoskip)
			if c.errOff != nil {
				var fe *FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("Parse = %v, %v; want a FormatError", db, err)
				}
				if !strings.Contains(err.Error(), c.err) || fe.Format != Twoskip {
					t.Errorf("error %q, want it to contain %q", err, c.err)
				}
				if want := c.errOff(); want >= 0 && fe.Offset != want {
					t.Errorf("error offset %d, want %d (%v)", fe.Offset, want, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			diffKV(t, "Parse", collect(t, db), c.want)
			if db.Info.Dirty != c.dirty {
				t.Errorf("Dirty = %v, want %v", db.Info.Dirty, c.dirty)
			}
			if !db.RawSorted() {
				t.Errorf("RawSorted = false")
			}
			checkInvariants(t, data, db)
		})
	}
}

// checkInvariants asserts what every successful parse must satisfy: each
// key and value lies inside the committed part of the input, and the
// record count is consistent.
func checkInvariants(t *testing.T, data []byte, db *DB) {
	t.Helper()
	if db.Info.CommittedSize < 0 || db.Info.CommittedSize > int64(len(data)) {
		t.Fatalf("CommittedSize %d outside 0..%d", db.Info.CommittedSize, len(data))
	}
	n := 0
	err := db.ForEach(func(k, v []byte) error {
		n++
		for _, s := range [][]byte{k, v} {
			if cap(s) != len(s) {
				return fmt.Errorf("slice has spare capacity %d > %d", cap(s), len(s))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range db.recs {
		for _, s := range []span{e.k, e.v} {
			if s.off < 0 || s.n < 0 || s.off+s.n > len(db.buf) {
				t.Fatalf("span %+v outside buffer of %d", s, len(db.buf))
			}
		}
	}
	if db.Info.Format != Flat && len(db.buf) > len(data) {
		t.Fatalf("buffer %d larger than input %d", len(db.buf), len(data))
	}
	if n != db.Len() {
		t.Fatalf("ForEach saw %d, Len %d", n, db.Len())
	}
}

func TestForEachStops(t *testing.T) {
	b, _ := threeRecs(false)
	db, err := Parse(b, Auto)
	if err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	n := 0
	if err := db.ForEach(func(k, v []byte) error { n++; return stop }); err != stop || n != 1 {
		t.Fatalf("ForEach = %v after %d calls, want stop after 1", err, n)
	}
}

func TestEmptyInput(t *testing.T) {
	for _, f := range []Format{Auto, Twoskip, Skiplist, Flat} {
		_, err := Parse(nil, f)
		var fe *FormatError
		if !errors.As(err, &fe) || fe.Reason != "empty file" {
			t.Errorf("Parse(nil, %v) = %v, want FormatError empty file", f, err)
		}
	}
}

// benchFile is a synthetic mailboxes.db-like twoskip file.
func benchFile(n int) []byte {
	keys, vals := make([][]byte, n), make([][]byte, n)
	for i := range n {
		keys[i] = fmt.Appendf(nil, "Nexample.com!user\x1fu%07d", i)
		vals[i] = fmt.Appendf(nil, "%%(I %08x-1234-5678-9abc-def012345678 T r P default S backend%d M 1795945353 A %%(u%07d lrswipkxtecdan))", i, i%4, i)
	}
	b, _ := buildTwoskip(keys, vals, true, 42)
	return b
}

// BenchmarkParseTwoskip parses a 1,000,000-record file (about 100 MB).
func BenchmarkParseTwoskip(b *testing.B) {
	data := benchFile(1_000_000)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		db, err := Parse(data, Twoskip)
		if err != nil {
			b.Fatal(err)
		}
		if db.Len() != 1_000_000 {
			b.Fatalf("Len = %d", db.Len())
		}
	}
}
