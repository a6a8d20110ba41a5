package mboxlist

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/cyrusdb"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// dumpEntry is one entry of Cyrus 3.6.1's `ctl_mboxlist -d` JSON dump.
type dumpEntry struct {
	Name      string            `json:"name"`
	MBType    string            `json:"mbtype"`
	Partition string            `json:"partition"`
	Server    string            `json:"server"`
	ACL       map[string]string `json:"acl"`
}

func parseACL(t *testing.T, s string) map[string]string {
	t.Helper()
	m := map[string]string{}
	if s == "" {
		return m
	}
	if !strings.HasSuffix(s, "\t") {
		t.Errorf("ACL %q lacks Cyrus's trailing TAB", s)
	}
	f := strings.Split(strings.TrimSuffix(s, "\t"), "\t")
	if len(f)%2 != 0 {
		t.Fatalf("ACL %q has an odd number of fields", s)
	}
	for i := 0; i < len(f); i += 2 {
		m[f[i]] = f[i+1]
	}
	return m
}

// TestFixturesMatchCyrusDump checks every real mailboxes.db fixture, in
// all three engines, against Cyrus's own dump of the same database.
func TestFixturesMatchCyrusDump(t *testing.T) {
	dumps, err := filepath.Glob("testdata/*.ctl_mboxlist-d.json")
	if err != nil || len(dumps) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, dump := range dumps {
		host := strings.TrimSuffix(filepath.Base(dump), ".ctl_mboxlist-d.json")
		raw, err := os.ReadFile(dump)
		if err != nil {
			t.Fatal(err)
		}
		var want map[string]dumpEntry
		if err := json.Unmarshal(raw, &want); err != nil {
			t.Fatalf("%s: %v", dump, err)
		}
		for _, format := range []cyrusdb.Format{cyrusdb.Twoskip, cyrusdb.Skiplist, cyrusdb.Flat} {
			t.Run(host+"/"+format.String(), func(t *testing.T) {
				data, err := os.ReadFile(filepath.Join("testdata", host+".mailboxes.db."+format.String()))
				if err != nil {
					t.Fatal(err)
				}
				db, err := cyrusdb.Parse(data, cyrusdb.Auto)
				if err != nil {
					t.Fatal(err)
				}
				x, st, err := buildIndex(db)
				if err != nil {
					t.Fatal(err)
				}
				if st.firstBad != nil {
					t.Errorf("undecodable record: %v", st.firstBad)
				}
				if x.Era() != EraDBName {
					t.Errorf("era = %v, want 3.6+", x.Era())
				}
				got := map[string]lookup.Entry{}
				x.forEach(func(name string, e lookup.Entry, err error) {
					if err != nil {
						t.Errorf("%s: %v", name, err)
					}
					got[name] = e
				})
				nwant := 0
				for name, w := range want {
					if _, gone := typeState([]byte(w.MBType)); gone {
						continue
					}
					nwant++
					e, err := x.Lookup(name)
					if err != nil {
						t.Errorf("Lookup(%q): %v", name, err)
						continue
					}
					wstate, _ := typeState([]byte(w.MBType))
					if e.Name != name || e.Server != w.Server || e.Partition != w.Partition || e.State != wstate {
						t.Errorf("Lookup(%q) = %+v, want server %q partition %q state %v", name, e, w.Server, w.Partition, wstate)
					}
					if acl := parseACL(t, e.ACL); !equalMaps(acl, w.ACL) {
						t.Errorf("%s: ACL %q, want %v", name, e.ACL, w.ACL)
					}
				}
				if len(got) != nwant {
					var names []string
					for n := range got {
						names = append(names, n)
					}
					sort.Strings(names)
					t.Errorf("index has %d entries %v, dump has %d", len(got), names, nwant)
				}
				if _, err := x.Lookup("user.nobody"); err != lookup.ErrNotFound {
					t.Errorf("Lookup(user.nobody) error = %v, want ErrNotFound", err)
				}
			})
		}
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
