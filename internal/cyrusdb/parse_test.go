package cyrusdb

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type kv struct{ k, v string }

func collect(t *testing.T, db *DB) []kv {
	t.Helper()
	var out []kv
	if err := db.ForEach(func(k, v []byte) error {
		out = append(out, kv{string(k), string(v)})
		return nil
	}); err != nil {
		t.Fatalf("ForEach: %v", err)
	}
	if len(out) != db.Len() || db.Info.Records != db.Len() {
		t.Fatalf("ForEach gave %d records, Len %d, Info.Records %d", len(out), db.Len(), db.Info.Records)
	}
	return out
}

// parseShow reads cyr_dbtool "show" output: key TAB value LF per record.
// Keys and values are printed raw, so the fixtures' 0x1F separators appear
// as is; values containing LF cannot be represented and are not used.
func parseShow(t *testing.T, b []byte) []kv {
	t.Helper()
	var out []kv
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if line[len(line)-1] != '\n' {
			t.Fatalf("show output: unterminated line %q", line)
		}
		k, v, ok := bytes.Cut(line[:len(line)-1], []byte("\t"))
		if !ok {
			t.Fatalf("show output: no TAB in %q", line)
		}
		out = append(out, kv{string(k), string(v)})
	}
	return out
}

func diffKV(t *testing.T, what string, got, want []kv) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %d records, want %d", what, len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Errorf("%s: record %d: got %q=%q, want %q=%q", what, i, got[i].k, got[i].v, want[i].k, want[i].v)
			return
		}
	}
}

// TestFixtures checks every real Cyrus 3.6.1 mailboxes.db, in all three
// engines, against Cyrus's own dump of it.
func TestFixtures(t *testing.T) {
	shows, err := filepath.Glob("testdata/fixtures/*.cyr_dbtool-twoskip-show.txt")
	if err != nil || len(shows) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, show := range shows {
		name := strings.TrimSuffix(filepath.Base(show), ".cyr_dbtool-twoskip-show.txt")
		b, err := os.ReadFile(show)
		if err != nil {
			t.Fatal(err)
		}
		want := parseShow(t, b)
		if len(want) == 0 {
			t.Fatalf("%s: empty dump", show)
		}
		for _, f := range []Format{Twoskip, Skiplist, Flat} {
			t.Run(name+"/"+f.String(), func(t *testing.T) {
				path := fmt.Sprintf("testdata/fixtures/%s.mailboxes.db.%s", name, f)
				data, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if d, err := Detect(data); err != nil || d != f {
					t.Errorf("Detect = %v, %v; want %v", d, err, f)
				}
				for _, asked := range []Format{Auto, f} {
					db, err := Parse(data, asked)
					if err != nil {
						t.Fatalf("Parse(%v): %v", asked, err)
					}
					diffKV(t, "Parse", collect(t, db), want)
					if db.Info.Format != f || db.Info.Dirty || db.Info.CommittedSize != int64(len(data)) || !db.RawSorted() {
						t.Errorf("Info = %+v, RawSorted %v", db.Info, db.RawSorted())
					}
					if f == Twoskip && db.Info.HeaderRecords != uint64(len(want)) {
						t.Errorf("HeaderRecords = %d, want %d", db.Info.HeaderRecords, len(want))
					}
				}
				db, err := ReadFile(t.Context(), path, Auto)
				if err != nil {
					t.Fatalf("ReadFile: %v", err)
				}
				diffKV(t, "ReadFile", collect(t, db), want)
				if db.Info.Inode == 0 || db.Info.FileSize != int64(len(data)) {
					t.Errorf("ReadFile Info = %+v", db.Info)
				}
				st, err := Stat(path)
				if err != nil {
					t.Fatalf("Stat: %v", err)
				}
				if st.Format != f || st.Inode != db.Info.Inode || st.FileSize != int64(len(data)) ||
					st.CommittedSize != db.Info.CommittedSize || st.Generation != db.Info.Generation || st.Records != 0 {
					t.Errorf("Stat = %+v, ReadFile Info = %+v", st, db.Info)
				}
			})
		}
	}
}

func TestParseFormat(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Format
		ok   bool
	}{
		{"auto", Auto, true}, {"twoskip", Twoskip, true}, {" Skiplist ", Skiplist, true},
		{"flat", Flat, true}, {"twom", Auto, false}, {"", Auto, false}, {"berkeley", Auto, false},
	} {
		got, err := ParseFormat(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseFormat(%q) = %v, %v", tc.in, got, err)
		}
		if tc.ok {
			if back, _ := ParseFormat(got.String()); back != got {
				t.Errorf("String round trip of %v failed", got)
			}
		}
	}
}

func TestDetect(t *testing.T) {
	for _, tc := range []struct {
		name string
		head string
		want Format
		err  string
	}{
		{"twoskip", string(twoskipMagic) + "rest", Twoskip, ""},
		{"skiplist", string(skiplistMagic), Skiplist, ""},
		{"flat", "Nuser\x1falice\t%(T r)\n", Flat, ""},
		{"flat value with tabs", "k\tv\tw\nk2\tx\n", Flat, ""},
		{"flat long first line", "k" + strings.Repeat("x", DetectSize), Flat, ""},
		{"empty", "", Auto, "empty file"},
		{"twom", "\xa1\x02\x8b\x0dtwom file\x00\x00\x00\x00\x00\x00\x00", Auto, "unknown Cyrus database magic"},
		{"short cyrus magic", "\xa1\x02", Auto, "unknown Cyrus database magic"},
		{"twoskip truncated magic", "\xa1\x02\x8b\x0dtwosk", Auto, "unknown Cyrus database magic"},
		{"binary", "\x00\x01\x02\x03", Auto, "NUL byte"},
		{"text without tab", "hello world\nsecond\n", Auto, "no TAB"},
		{"single line without tab", "hello", Auto, "no TAB"},
		{"berkeley db", "\x00\x06\x15\x61\x00\x00\x00\x09", Auto, "NUL byte"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Detect([]byte(tc.head))
			if tc.err == "" {
				if err != nil || got != tc.want {
					t.Fatalf("Detect = %v, %v; want %v", got, err, tc.want)
				}
				return
			}
			var fe *FormatError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Detect = %v, %v; want FormatError containing %q", got, err, tc.err)
			}
		})
	}
}
