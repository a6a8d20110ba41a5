package replica

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mupdate/fakemupdate"
)

func entriesOf(t *testing.T, v *view) map[string]lookup.Entry {
	t.Helper()
	m := map[string]lookup.Entry{}
	v.forEach(func(e lookup.Entry) error {
		if _, dup := m[e.Name]; dup {
			t.Fatalf("%q twice in the view", e.Name)
		}
		m[e.Name] = e
		return nil
	})
	return m
}

// testView is a list with an overlay: a changed, a deleted and an added
// mailbox, as a snapshot taken while streaming sees it.
func testView(t *testing.T) *view {
	t.Helper()
	b := newBuilder(0)
	for _, e := range []lookup.Entry{
		{Name: "user.alice", Server: "127.0.0.2", Partition: "default", ACL: "alice\tlrswipkxtecdan\t"},
		{Name: "user.bob", Server: "127.0.0.3", Partition: "default", ACL: "bob\tlrswipkxtecdan\t"},
		{Name: "example.com!user.carol", Server: "10.0.0.2:2003", ACL: ""},
		{Name: "user.newby", Server: "127.0.0.3", Partition: "default", State: lookup.Reserved},
	} {
		if err := b.putEntry(e); err != nil {
			t.Fatal(err)
		}
	}
	v := &view{base: b.finish()}
	v.n = v.base.Len()
	d := &draft{prev: v}
	d.apply(&change{e: lookup.Entry{Name: "user.bob", Server: "127.0.0.2", Partition: "p2", ACL: "bob\tlr\t"}})
	d.apply(&change{e: lookup.Entry{Name: "user.alice"}, deleted: true})
	d.apply(&change{e: lookup.Entry{Name: "bb.sales", Server: "127.0.0.2", ACL: "anyone\tlrsp\t", State: lookup.Moving}})
	return d.next
}

func TestSnapshotRoundTrip(t *testing.T) {
	v := testView(t)
	path := filepath.Join(t.TempDir(), "snap")
	asOf := time.Unix(1700000000, 123)
	if err := writeSnapshot(path, v, asOf, "master:3905"); err != nil {
		t.Fatal(err)
	}
	l, info, err := readSnapshot(path, 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	got := entriesOf(t, &view{base: l})
	want := entriesOf(t, v)
	if !maps.Equal(got, want) {
		t.Errorf("read back\n%v\nwant\n%v", got, want)
	}
	if info.Mailboxes != 4 || !info.AsOf.Equal(asOf) || info.Master != "master:3905" || info.Written.IsZero() {
		t.Errorf("info %+v", info)
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left: %v", err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode())
	}
}

// Every kind of damage is refused as a whole.
func TestSnapshotDamage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snap")
	if err := writeSnapshot(path, testView(t), time.Now(), "m"); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	setHeader := func(b []byte, off int, v uint32) []byte {
		binary.LittleEndian.PutUint32(b[off:], v)
		return b
	}
	resum := func(b []byte) []byte {
		return setHeader(b, 60, crc32.Checksum(b[:60], castagnoli))
	}
	tests := []struct {
		name   string
		damage func([]byte) []byte
		want   string
	}{
		{"empty", func(b []byte) []byte { return nil }, "truncated header"},
		{"truncated header", func(b []byte) []byte { return b[:30] }, "truncated header"},
		{"truncated payload", func(b []byte) []byte { return b[:len(b)-3] }, "truncated or extended"},
		{"extended", func(b []byte) []byte { return append(b, 0) }, "truncated or extended"},
		{"bad magic", func(b []byte) []byte { b[0] = 'X'; return b }, "magic"},
		{"header bit flip", func(b []byte) []byte { b[20] ^= 1; return b }, "header checksum"},
		{"payload bit flip", func(b []byte) []byte { b[len(b)-2] ^= 0x40; return b }, "payload checksum"},
		{"newer version", func(b []byte) []byte { return resum(setHeader(b, 8, 2)) }, "version 2"},
		{"count too high", func(b []byte) []byte { binary.LittleEndian.PutUint64(b[16:], 5); return resum(b) }, "truncated"},
		{"count too low", func(b []byte) []byte { binary.LittleEndian.PutUint64(b[16:], 3); return resum(b) }, "after the last mailbox"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(path, tt.damage(append([]byte(nil), good...)), 0o600); err != nil {
				t.Fatal(err)
			}
			l, _, err := readSnapshot(path, 1<<10)
			if err == nil || l != nil {
				t.Fatalf("damaged snapshot accepted (%d mailboxes)", l.Len())
			}
			if !errors.Is(err, errSnapshot) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want errSnapshot mentioning %q", err, tt.want)
			}
		})
	}
	// Names beyond the limit are refused too.
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readSnapshot(path, 5); !errors.Is(err, errSnapshot) {
		t.Errorf("limit 5: %v", err)
	}
}

// A replica restarted while the master is down serves the snapshot the
// previous one wrote, marked stale as of when it was written.
func TestRestartFromSnapshot(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	cfg := testConfig(t, srv.Addr())
	r1, _ := newReplica(t, cfg)
	r1.Start()
	waitStreaming(t, r1)
	srv.Set("user.pushed", "127.0.0.3!default", "")
	if err := r1.Sync(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	r1.Close()
	srv.Stop()

	r2, logs := newReplica(t, cfg)
	r2.Start()
	<-r2.Ready()
	if e := mustFind(t, r2, "user.pushed"); e.Server != "127.0.0.3" {
		t.Errorf("user.pushed %+v", e)
	}
	mustFind(t, r2, "user.alice")
	wantNotFound(t, r2, "user.nosuch")
	eventually(t, "a failed connection", func() bool { return r2.Status().Failures > 0 })
	st := r2.Status()
	if st.List != "snapshot" || !st.Stale || st.Mailboxes != 7 || st.AsOf.IsZero() || st.SnapshotWritten.IsZero() {
		t.Errorf("status %+v", st)
	}
	if !strings.Contains(logs.String(), "loaded from the snapshot") {
		t.Errorf("log:\n%s", logs)
	}
	// When the master is back, its dump replaces the snapshot's list.
	srv.Delete("user.pushed")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitStreaming(t, r2)
	wantNotFound(t, r2, "user.pushed")
	if st := r2.Status(); st.List != "dump" {
		t.Errorf("list from %q after the dump", st.List)
	}
}

// No-master mode from the start: the snapshot is served and the master
// never contacted.
func TestSnapshotWithoutStart(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	cfg := testConfig(t, srv.Addr())
	r1, _ := newReplica(t, cfg)
	r1.Start()
	waitStreaming(t, r1)
	r1.Close()
	conns := srv.Connections()

	r2, _ := newReplica(t, cfg)
	r2.SetActive(false)
	<-r2.Ready()
	mustFind(t, r2, "user.alice")
	wantNotFound(t, r2, "user.nosuch")
	if st := r2.Status(); st.Stream != StreamStopped || st.List != "snapshot" {
		t.Errorf("status %+v", st)
	}
	if srv.Connections() != conns {
		t.Error("the master was contacted")
	}
}

// A damaged snapshot is refused with a log line naming the file, and the
// replica is unavailable until the master dumps.
func TestCorruptSnapshotRefused(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	srv.Stop()
	cfg := testConfig(t, srv.Addr())
	if err := writeSnapshot(cfg.SnapshotPath, testView(t), time.Now(), "m"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(cfg.SnapshotPath)
	b[len(b)/2] ^= 0xff
	os.WriteFile(cfg.SnapshotPath, b, 0o600)

	r, logs := newReplica(t, cfg)
	r.Start()
	eventually(t, "the snapshot to be refused", func() bool { return r.Status().SnapshotError != "" })
	if !strings.Contains(logs.String(), "snapshot of the mailbox list refused") || !strings.Contains(logs.String(), cfg.SnapshotPath) {
		t.Errorf("log:\n%s", logs)
	}
	_, err := r.Lookup(ctxT(t), "user.bob")
	wantUnavailable(t, err)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitStreaming(t, r)
	mustFind(t, r, "user.alice")
	// The good list replaces the damaged file.
	r.Close()
	if _, _, err := readSnapshot(cfg.SnapshotPath, cfg.MaxLiteral); err != nil {
		t.Errorf("snapshot after the dump: %v", err)
	}
}

// A list that changes is written again every SnapshotInterval.
func TestPeriodicSnapshot(t *testing.T) {
	srv := fakemupdate.New(t)
	fill(srv)
	cfg := testConfig(t, srv.Addr())
	cfg.SnapshotInterval = 20 * time.Millisecond
	r, _ := newReplica(t, cfg)
	r.Start()
	waitStreaming(t, r)
	srv.Set("user.periodic", "127.0.0.3!default", "")
	if err := r.Sync(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a snapshot with the change", func() bool {
		l, _, err := readSnapshot(cfg.SnapshotPath, cfg.MaxLiteral)
		if err != nil {
			return false
		}
		_, ok := l.lookup("user.periodic")
		return ok
	})
}
