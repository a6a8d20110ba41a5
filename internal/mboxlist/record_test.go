package mboxlist

import (
	"errors"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

func TestDecodeRecord(t *testing.T) {
	type want struct {
		ok                   bool
		name, srv, part, acl string
		state                lookup.State
		err                  bool
	}
	tests := []struct {
		name       string
		era        Era
		key, value string
		want       want
	}{
		// Interop §7.4, Cyrus 3.6 format.
		{"7.4.1 user INBOX remote", EraDBName,
			"Nuser\x1ffred", "%(T er P default S backend1 M 1718000000 A %(fred lrswipkxtecdan))",
			want{ok: true, name: "user.fred", srv: "backend1", part: "default", acl: "fred\tlrswipkxtecdan\t"}},
		{"7.4.2 subfolder", EraDBName,
			"Nuser\x1ffred\x1fSent", "%(T er P default S backend1 M 1718000000 A %(fred lrswipkxtecdan))",
			want{ok: true, name: "user.fred.Sent", srv: "backend1", part: "default", acl: "fred\tlrswipkxtecdan\t"}},
		{"7.4.3 shared", EraDBName,
			"Nshared\x1flists\x1fcyrus", "%(T er P default S backend2 M 1718000000 A %(anyone p admin lrswipkxtecdan))",
			want{ok: true, name: "shared.lists.cyrus", srv: "backend2", part: "default", acl: "anyone\tp\tadmin\tlrswipkxtecdan\t"}},
		{"7.4.4 reserved", EraDBName,
			"Nshared\x1fnew", "%(T erz P default S backend2 M 1718000000 A %())",
			want{ok: true, name: "shared.new", srv: "backend2", part: "default", state: lookup.Reserved}},
		{"moving", EraDBName,
			"Nuser\x1fbob", "%(T erm P default S backend2 M 1718000000 A %(bob lrs))",
			want{ok: true, name: "user.bob", srv: "backend2", part: "default", acl: "bob\tlrs\t", state: lookup.Moving}},
		{"flags in any order", EraDBName,
			"Nuser\x1fbob", "%(T rme P default S b1)",
			want{ok: true, name: "user.bob", srv: "b1", part: "default", state: lookup.Moving}},
		{"7.4.5 tombstone", EraDBName,
			"Nuser\x1fcassandane\x1fbar", "%(T edl I 54b3 V 1751895948 C 18 F 20 M 1751895947)",
			want{}},
		{"intermediate", EraDBName,
			"Nuser\x1fcassandane\x1fa", "%(T ei P default M 1751895947)",
			want{}},
		{"7.4.6 delayed-delete copy is a mailbox", EraDBName,
			"NDELETED\x1fuser\x1fcassandane\x1fbar\x1f686BCF8B", "%(T el I 54b3 P default V 1 C 18 F 20 M 2 A %(cassandane lrswipkxtecdan admin lrswipkxtecdan anyone p))",
			want{ok: true, name: "DELETED.user.cassandane.bar.686BCF8B", part: "default", acl: "cassandane\tlrswipkxtecdan\tadmin\tlrswipkxtecdan\tanyone\tp\t"}},
		{"7.4.7 virtdomains", EraDBName,
			"Nexample.com\x1duser\x1falice", "%(T er P default S backend1 M 1 A %(alice@example.com lrswipkxtecdan))",
			want{ok: true, name: "example.com!user.alice", srv: "backend1", part: "default", acl: "alice@example.com\tlrswipkxtecdan\t"}},
		{"7.4.8 local entry", EraDBName,
			"Nuser\x1fabc", "%(T el I f39c P default V 1752061659 C 1 F 1 M 1752061658 A %(abc lrswipkxtecdan))",
			want{ok: true, name: "user.abc", part: "default", acl: "abc\tlrswipkxtecdan\t"}},
		{"7.1 dot in component becomes ^", EraDBName,
			"Nuser\x1fjohn.doe\x1fa.b", "%(T er P default S b1)",
			want{ok: true, name: "user.john^doe.a^b", srv: "b1", part: "default"}},
		{"quoted server with 0x1F-free escapes", EraDBName,
			"Nuser\x1fq", `%(T er P "default" S "10.0.0.2:2003")`,
			want{ok: true, name: "user.q", srv: "10.0.0.2:2003", part: "default"}},
		{"I key skipped", EraDBName, "Iabc123", "%(T e N user\x1fbob P default)", want{}},
		{"A key skipped", EraDBName, "AUbob\x1fuser\x1fbob", "%(x y)", want{}},
		{"J key skipped", EraDBName, "Jabc", "garbage", want{}},
		{"3.6 value not a dlist", EraDBName, "Nuser\x1fx", "1 b1!default ", want{name: "user.x", err: true}},
		{"3.6 value not a kvlist", EraDBName, "Nuser\x1fx", "(a b)", want{name: "user.x", err: true}},
		{"3.6 broken dlist", EraDBName, "Nuser\x1fx", "%(T er P", want{name: "user.x", err: true}},

		// Interop §7.5, Cyrus 2.5–3.4 dlists with internal-name keys.
		{"2.5 remote", EraName,
			"user.fred", "%(A %(fred lrswipkxtecdan) P default S backend1 T r M 1500000000)",
			want{ok: true, name: "user.fred", srv: "backend1", part: "default", acl: "fred\tlrswipkxtecdan\t"}},
		{"2.5 T absent: local", EraName,
			"user.fred", "%(A %(fred lrs) I abc P default V 1 M 2)",
			want{ok: true, name: "user.fred", part: "default", acl: "fred\tlrs\t"}},
		{"2.5 reserved", EraName,
			"user.fred", "%(A %() P default S backend1 T rz M 1)",
			want{ok: true, name: "user.fred", srv: "backend1", part: "default", state: lookup.Reserved}},
		{"2.5 deleted", EraName, "user.fred", "%(A %() P default T d M 1)", want{}},
		{"2.5 mupdate-style location", EraName,
			"example.com!user.alice", "%(A %(alice@example.com lrs) P backend1!default T r)",
			want{ok: true, name: "example.com!user.alice", srv: "backend1", part: "default", acl: "alice@example.com\tlrs\t"}},
		{"2.5 name starting with N is a name", EraName,
			"Nshared", "%(A %(anyone p) P default S b2 T r)",
			want{ok: true, name: "Nshared", srv: "b2", part: "default", acl: "anyone\tp\t"}},
		{"3.x $RACL skipped", EraName, "$RACL$U$bob$user.bob", "", want{}},
		{"3.x $RUNQ skipped", EraName, "$RUNQ$x", "whatever", want{}},
		{"ACL as string", EraName, "user.s", "%(A \"s\tlrs\t\" P default S b)",
			want{ok: true, name: "user.s", srv: "b", part: "default", acl: "s\tlrs\t"}},

		// ≤ 2.4 text.
		{"2.4 remote", EraName, "user.fred", "1 backend1!default fred\tlrswipkxtecdan\t",
			want{ok: true, name: "user.fred", srv: "backend1", part: "default", acl: "fred\tlrswipkxtecdan\t"}},
		{"2.4 reserved remote", EraName, "user.fred", "3 backend1!default ",
			want{ok: true, name: "user.fred", srv: "backend1", part: "default", state: lookup.Reserved}},
		{"2.4 moving", EraName, "user.fred", "9 backend1!default fred\tlrs\t",
			want{ok: true, name: "user.fred", srv: "backend1", part: "default", acl: "fred\tlrs\t", state: lookup.Moving}},
		{"2.4 deleted", EraName, "user.fred", "17 backend1!default ", want{}},
		{"2.4 local", EraName, "user.fred", "0 default fred\tlrs\t",
			want{ok: true, name: "user.fred", part: "default", acl: "fred\tlrs\t"}},
		{"2.4 netnews remote", EraName, "netnews.x", "5 news1!default anyone\tr\t",
			want{ok: true, name: "netnews.x", srv: "news1", part: "default", acl: "anyone\tr\t"}},
		{"2.4 remote without !", EraName, "user.fred", "1 backend1 fred\tlrs\t",
			want{ok: true, name: "user.fred", srv: "backend1", acl: "fred\tlrs\t"}},
		{"2.4 prefix", EraName, "user.fred", "(uniqueid abc specialuse (\\Sent)) 1 backend1!default fred\tlrs\t",
			want{ok: true, name: "user.fred", srv: "backend1", part: "default", acl: "fred\tlrs\t"}},
		{"2.4 no acl field", EraName, "user.fred", "1 backend1!default",
			want{ok: true, name: "user.fred", srv: "backend1", part: "default"}},
		{"2.4 unbalanced prefix", EraName, "user.fred", "(uniqueid 1 b!d ", want{name: "user.fred", err: true}},
		{"2.4 garbage", EraName, "user.fred", "hello world", want{name: "user.fred", err: true}},
		{"2.4 huge number", EraName, "user.fred", "99999999999999999999 b!d ", want{name: "user.fred", err: true}},
		{"2.4 no partition", EraName, "user.fred", "1 ", want{name: "user.fred", err: true}},
		{"empty value", EraName, "user.fred", "", want{name: "user.fred", err: true}},
		{"empty key", EraName, "", "1 b!d ", want{err: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := decoder{era: tc.era}
			kind, rec, err := d.decode([]byte(tc.key), []byte(tc.value))
			if (err != nil) != tc.want.err {
				t.Fatalf("decode error = %v, want error %v", err, tc.want.err)
			}
			if err != nil {
				if !errors.Is(err, ErrBadRecord) {
					t.Errorf("error %v does not wrap ErrBadRecord", err)
				}
				if string(rec.name) != tc.want.name {
					t.Errorf("name on error = %q, want %q", rec.name, tc.want.name)
				}
				return
			}
			if got := kind == recMailbox; got != tc.want.ok {
				t.Fatalf("kind = %v, want mailbox=%v", kind, tc.want.ok)
			}
			e, ok, err := DecodeRecord([]byte(tc.key), []byte(tc.value), tc.era)
			if err != nil || ok != tc.want.ok {
				t.Fatalf("DecodeRecord = %v, %v", ok, err)
			}
			if !ok {
				return
			}
			want := lookup.Entry{Name: tc.want.name, Server: tc.want.srv, Partition: tc.want.part, ACL: tc.want.acl, State: tc.want.state}
			if e != want {
				t.Errorf("entry = %+v\n        want %+v", e, want)
			}
		})
	}
}

func TestDBNameRoundTrip(t *testing.T) {
	for _, name := range []string{"user.fred", "user.john^doe.a^b", "example.com!user.alice", "shared", "example.com!shared.x^y", "DELETED.user.x.686BCF8B"} {
		db := intnameToDBName(name)
		if got := string(dbnameToIntname(nil, db)); got != name {
			t.Errorf("round trip of %q via %q = %q", name, db, got)
		}
	}
	if got := string(intnameToDBName("example.com!user.alice")); got != "example.com\x1duser\x1falice" {
		t.Errorf("dbname = %q", got)
	}
}

func TestDetectEra(t *testing.T) {
	tests := []struct {
		key, value string
		era        Era
		sure       bool
	}{
		{"Nuser\x1ffred", "%(T er P default S b)", EraDBName, true},
		{"Nshared", "%(T er P default S b)", EraDBName, true},
		{"Iabc", "%(T e N shared)", EraDBName, true},
		{"Nexample.com\x1dshared", "%()", EraDBName, true},
		{"user.fred", "%(A %(fred lrs) P default S b T r)", EraName, false},
		{"user.fred", "1 b!default ", EraName, false},
	}
	for _, tc := range tests {
		era, sure := detectEra([]byte(tc.key), []byte(tc.value))
		if era != tc.era || sure != tc.sure {
			t.Errorf("detectEra(%q, %q) = %v, %v; want %v, %v", tc.key, tc.value, era, sure, tc.era, tc.sure)
		}
	}
}

// FuzzRecord decodes arbitrary records in both eras: it must never panic,
// and whatever it returns for a routable mailbox must be self-consistent.
func FuzzRecord(f *testing.F) {
	f.Add([]byte("Nuser\x1ffred"), []byte("%(T er P default S backend1 M 1718000000 A %(fred lrswipkxtecdan))"))
	f.Add([]byte("Nexample.com\x1duser\x1falice"), []byte("%(T erz P default S b A %())"))
	f.Add([]byte("user.fred"), []byte("%(A %(fred lrs) P default S backend1 T r M 1)"))
	f.Add([]byte("user.fred"), []byte("(uniqueid abc) 3 backend1!default fred\tlrs\t"))
	f.Add([]byte("$RACL"), []byte(""))
	f.Add([]byte("Iabc"), []byte("%(T e N user\x1fbob H ())"))
	f.Fuzz(func(t *testing.T, key, value []byte) {
		for _, era := range []Era{EraName, EraDBName} {
			d := decoder{era: era}
			kind, rec, err := d.decode(key, value)
			if err != nil {
				if !errors.Is(err, ErrBadRecord) {
					t.Fatalf("error %v does not wrap ErrBadRecord", err)
				}
				continue
			}
			if kind == recMailbox {
				if len(rec.name) == 0 {
					t.Fatalf("mailbox with empty name from %q", key)
				}
				if rec.state > lookup.Moving {
					t.Fatalf("bad state %v", rec.state)
				}
			}
		}
	})
}
