package cyrusdb

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestSkiplistTornTail(t *testing.T) {
	data, err := os.ReadFile("testdata/fixtures/frontend.mailboxes.db.skiplist")
	if err != nil {
		t.Fatal(err)
	}
	full, err := Parse(data, Skiplist)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	// An uncommitted transaction: an ADD of a new key and a DELETE of the
	// first record, with no COMMIT. Neither may show.
	tail := be.AppendUint32(nil, slTypeAdd)
	tail = be.AppendUint32(tail, 4)
	tail = append(tail, "Nzzz"...)
	tail = be.AppendUint32(tail, 1)
	tail = append(tail, 'v', 0, 0, 0)
	tail = be.AppendUint32(tail, 0)
	tail = be.AppendUint32(tail, slEndOfPtrs)
	tail = be.AppendUint32(tail, slTypeDelete)
	tail = be.AppendUint32(tail, 0x90)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"uncommitted transaction", append(append([]byte{}, data...), tail...)},
		{"torn record", append(append([]byte{}, data...), tail[:10]...)},
		{"garbage type", append(append([]byte{}, data...), 0, 0, 0, 9)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := Parse(tc.data, Skiplist)
			if err != nil {
				t.Fatal(err)
			}
			diffKV(t, "Parse", collect(t, db), collect(t, full))
			if !db.Info.Dirty || db.Info.CommittedSize != int64(len(data)) {
				t.Errorf("Info = %+v", db.Info)
			}
			checkInvariants(t, tc.data, db)
		})
	}
	// The same transaction committed takes effect.
	committed := be.AppendUint32(append(append([]byte{}, data...), tail...), slTypeCommit)
	db, err := Parse(committed, Skiplist)
	if err != nil {
		t.Fatal(err)
	}
	got := collect(t, db)
	if len(got) != full.Len() || got[len(got)-1].k != "Nzzz" || got[0].k == collect(t, full)[0].k || db.Info.Dirty {
		t.Errorf("committed transaction not applied: %q, Info %+v", got, db.Info)
	}

	// Damage in the checkpoint part or header is corruption.
	bad := append([]byte{}, data...)
	be.PutUint32(bad[slOffMaxLevel:], 99)
	var fe *FormatError
	if _, err := Parse(bad, Skiplist); !errors.As(err, &fe) || fe.Offset != slOffMaxLevel {
		t.Errorf("bad maxlevel: %v", err)
	}
}

func TestFlat(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []kv
		err  string
		off  int64
	}{
		{name: "plain", in: "a\t1\nb\t2\n", want: []kv{{"a", "1"}, {"b", "2"}}},
		{name: "escapes", in: "k\xff\x80\xff\x89\tv\xff\x8a\xff\x8d\xff\xff\n", want: []kv{{"k\x00\t", "v\n\r\xff"}}},
		{name: "value with TAB (2.4 unescaped)", in: "k\tv\tw\n", want: []kv{{"k", "v\tw"}}},
		{name: "lone escape at end dropped", in: "k\tv\xff\n", want: []kv{{"k", "v"}}},
		{name: "empty key and value", in: "\t\n", want: []kv{{"", ""}}},
		{name: "no final LF", in: "a\t1\nb\t2", err: "no LF", off: 4},
		{name: "no TAB", in: "a\t1\nbogus\n", err: "no TAB", off: 4},
		{name: "empty line", in: "a\t1\n\n", err: "no TAB", off: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := Parse([]byte(tc.in), Flat)
			if tc.err != "" {
				var fe *FormatError
				if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.err) || fe.Offset != tc.off {
					t.Fatalf("Parse = %v; want FormatError %q at %d", err, tc.err, tc.off)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			diffKV(t, "Parse", collect(t, db), tc.want)
			checkInvariants(t, []byte(tc.in), db)
		})
	}
	db, err := Parse([]byte("b\t1\na\t2\n"), Flat)
	if err != nil || db.RawSorted() {
		t.Errorf("unsorted flat: RawSorted %v, %v", db.RawSorted(), err)
	}
}
