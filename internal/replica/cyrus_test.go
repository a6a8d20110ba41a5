package replica

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/bench"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mupdate"
	"github.com/lmtpgate/lmtpgate/internal/murderlab"
)

// These tests run against the real Cyrus 3.6 master of a murder on
// loopback (internal/murderlab). They are skipped under -short or without
// Cyrus; LMTPGATE_REQUIRE_CYRUS=1 makes a missing Cyrus a failure.

func labConfig(t testing.TB, l *murderlab.Lab) Config {
	cfg := DefaultConfig()
	cr := l.Creds()
	cfg.Address = l.MasterMupdateAddr()
	cfg.AuthName, cfg.Password = cr.Mupdate, cr.MupdatePassword
	cfg.BackoffMin, cfg.BackoffMax = 50*time.Millisecond, 500*time.Millisecond
	cfg.QueryTimeout = 2 * time.Second
	cfg.MissWait = 10 * time.Second
	cfg.SnapshotPath = filepath.Join(t.TempDir(), DefaultSnapshotName)
	cfg.SnapshotInterval = 0
	return cfg
}

// TestRealMaster follows a mailbox's life on the real master: create,
// rename, delete, move with XFER; then the master killed and restarted,
// frozen, and lmtpgate restarted from its snapshot while the master is
// down, and with a damaged snapshot.
func TestRealMaster(t *testing.T) {
	l := murderlab.StartTest(t, murderlab.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	be1, be2 := l.BackendServer(1), l.BackendServer(2)

	// The mailbox to move is the first one created on backend1, and
	// backend2 stays empty until it is moved (see MoveMailbox).
	if err := l.CreateMailbox(ctx, 1, "user/mover", nil); err != nil {
		t.Fatal(err)
	}
	cfg := labConfig(t, l)
	r, _ := newReplica(t, cfg)
	r.Start()
	waitStreaming(t, r)
	if e := mustFind(t, r, "user.mover"); e.Server != be1 || e.State != lookup.Active {
		t.Fatalf("user.mover after the dump: %+v", e)
	}

	t.Log("create: the first lookup after CREATE finds the mailbox, through the NOOP barrier")
	if err := l.CreateMailbox(ctx, 1, "user/alice", nil); err != nil {
		t.Fatal(err)
	}
	if e := mustFind(t, r, "user.alice"); e.Server != be1 || e.Partition != "default" || !strings.Contains(e.ACL, "alice\t") {
		t.Errorf("user.alice: %+v", e)
	}
	if err := l.CreateMailbox(ctx, 1, "user/alice/Sub", map[string]string{"anyone": "p"}); err != nil {
		t.Fatal(err)
	}
	if e := mustFind(t, r, "user.alice.Sub"); e.Server != be1 || lookup.Rights(e.ACL, "anyone") != "p" {
		t.Errorf("user.alice.Sub: %+v", e)
	}

	t.Log("rename")
	if err := l.CreateMailbox(ctx, 1, "bb/sales", map[string]string{"anyone": "lrsp"}); err != nil {
		t.Fatal(err)
	}
	mustFind(t, r, "bb.sales")
	if err := l.RenameMailbox(ctx, 1, "bb/sales", "bb/support"); err != nil {
		t.Fatal(err)
	}
	if e := mustFind(t, r, "bb.support"); e.Server != be1 {
		t.Errorf("bb.support: %+v", e)
	}
	// The old name is still a hit until its DELETE is pushed (a hit asks
	// the master nothing; the backend, which no longer has the mailbox,
	// answers for it meanwhile). Sync waits for the push.
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, r, "bb.sales")

	t.Log("delete")
	if err := l.DeleteMailbox(ctx, 1, "user/alice"); err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, r, "user.alice")
	wantNotFound(t, r, "user.alice.Sub")

	t.Log("move: RESERVE at the old server, then the new one, never a miss")
	moved := make(chan error, 1)
	go func() { moved <- l.MoveMailbox(ctx, 1, "user/mover", 2) }()
	var seen []lookup.Entry
	for done := false; !done; {
		select {
		case err := <-moved:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		default:
		}
		// Sync flushes what the master holds for update_wait, so the
		// states in between are seen.
		if err := r.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		e, err := r.Lookup(ctx, "user.mover")
		if err != nil {
			t.Fatalf("during the move: %v (states so far %v)", err, seen)
		}
		if len(seen) == 0 || seen[len(seen)-1] != e {
			seen = append(seen, e)
		}
	}
	phase := 0 // 0: active on backend1, 1: reserved, 2: active on backend2
	reserved := false
	for _, e := range seen {
		p := -1
		switch {
		case e.State == lookup.Active && e.Server == be1:
			p = 0
		case e.State == lookup.Reserved:
			p, reserved = 1, true
		case e.State == lookup.Active && e.Server == be2:
			p = 2
		}
		if p < phase {
			t.Fatalf("states out of order: %+v", seen)
		}
		phase = p
	}
	if phase != 2 {
		t.Fatalf("user.mover did not end on %s: %+v", be2, seen)
	}
	t.Logf("states seen during the move: %d (a reservation among them: %v)", len(seen), reserved)

	t.Log("the master killed mid-stream and restarted")
	if err := l.StopMaster(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the stream to fail", func() bool { return r.Status().Failures > 0 })
	if e := mustFind(t, r, "user.mover"); e.Server != be2 {
		t.Errorf("user.mover while the master is down: %+v", e)
	}
	if st := r.Status(); !st.Stale || st.Stream == StreamStreaming {
		t.Errorf("status while the master is down: %+v", st)
	}
	if err := l.StartMaster(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a second dump", func() bool { return r.Status().Dumps == 2 })
	waitStreaming(t, r)
	if err := l.CreateMailbox(ctx, 1, "user/bob", nil); err != nil {
		t.Fatal(err)
	}
	if e := mustFind(t, r, "user.bob"); e.Server != be1 {
		t.Errorf("user.bob: %+v", e)
	}

	t.Log("the master frozen (SIGSTOP): connections accepted, never greeted")
	failures := r.Status().Failures
	r.Stop()
	if err := l.Freeze("master"); err != nil {
		t.Fatal(err)
	}
	r.Start()
	eventually(t, "the frozen master to count as a failure", func() bool { return r.Status().Failures > failures })
	if st := r.Status(); !strings.Contains(st.LastError, "greeting") {
		t.Errorf("last error %q", st.LastError)
	}
	mustFind(t, r, "user.bob")
	if err := l.Thaw("master"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a dump after the thaw", func() bool { return r.Status().Dumps == 3 })

	t.Log("lmtpgate restarted while the master is down: served from the snapshot")
	r.Close()
	if err := l.StopMaster(); err != nil {
		t.Fatal(err)
	}
	r2, _ := newReplica(t, cfg)
	r2.Start()
	select {
	case <-r2.Ready():
	case <-ctx.Done():
		t.Fatal("no list from the snapshot")
	}
	for name, server := range map[string]string{"user.mover": be2, "user.bob": be1, "bb.support": be1} {
		if e := mustFind(t, r2, name); e.Server != server {
			t.Errorf("%s from the snapshot: %+v", name, e)
		}
	}
	wantNotFound(t, r2, "user.alice")
	eventually(t, "a failed connection", func() bool { return r2.Status().Failures > 0 })
	if st := r2.Status(); st.List != "snapshot" || !st.Stale {
		t.Errorf("status from the snapshot: %+v", st)
	}
	if err := l.StartMaster(ctx); err != nil {
		t.Fatal(err)
	}
	waitStreaming(t, r2)
	r2.Close()

	t.Log("a damaged snapshot is refused; the master's dump is used")
	b, err := os.ReadFile(cfg.SnapshotPath)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cfg.SnapshotPath, b[:len(b)-1], 0o600)
	r3, logs3 := newReplica(t, cfg)
	r3.Start()
	waitStreaming(t, r3)
	// The status's SnapshotError clears once a good snapshot was
	// written in its place, which may already have happened; the log
	// keeps the refusal.
	if st := r3.Status(); st.List != "dump" {
		t.Errorf("list with a damaged snapshot: %q, want dump (status %s)", st.List, st)
	}
	if !strings.Contains(logs3.String(), "snapshot of the mailbox list refused") {
		t.Errorf("the damaged snapshot's refusal is not in the log")
	}
	mustFind(t, r3, "user.bob")
	r3.Close()

	t.Log("COMPRESS DEFLATE")
	ccfg := cfg
	ccfg.Compress = true
	ccfg.SnapshotPath = ""
	r4, _ := newReplica(t, ccfg)
	r4.Start()
	waitStreaming(t, r4)
	if err := l.CreateMailbox(ctx, 1, "user/carol", nil); err != nil {
		t.Fatal(err)
	}
	if e := mustFind(t, r4, "user.carol"); e.Server != be1 {
		t.Errorf("user.carol over a compressed stream: %+v", e)
	}
	wantNotFound(t, r4, "user.nosuch")
}

// rawDump measures how fast the master sends its whole list to a client
// that only counts the mailboxes: the rate lmtpgate must keep up with.
func rawDump(t *testing.T, cfg Config) (int, time.Duration) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := mupdate.Dial(ctx, cfg.Server.Endpoint(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.NetConn.SetDeadline(time.Now().Add(2 * time.Minute))
	t0 := time.Now()
	if _, err := conn.NetConn.Write([]byte("U01 UPDATE\r\n")); err != nil {
		t.Fatal(err)
	}
	sc := mupdate.NewScanner(bufio.NewReaderSize(conn.Reader, 64<<10), 0)
	n := 0
	for {
		if err := sc.Scan(); err != nil {
			t.Fatal(err)
		}
		if string(sc.Kind()) == "OK" {
			return n, time.Since(t0)
		}
		n++
	}
}

// TestRealMasterScale gives the master a million mailboxes, measures how
// fast it dumps them and how fast the replica takes them in, and freezes
// the master in the middle of a dump.
func TestRealMasterScale(t *testing.T) {
	l := murderlab.StartTest(t, murderlab.Options{Backends: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const n = 1_000_000

	// Cyrus's own replica on the frontend would resync the million too
	// and take a core meanwhile.
	if err := l.StopReplica(); err != nil {
		t.Fatal(err)
	}
	if err := l.StopMaster(); err != nil {
		t.Fatal(err)
	}
	db := l.MasterMailboxesDB()
	flat := db + ".flat"
	if err := bench.WriteFlatMailboxes(flat, n, []string{l.BackendServer(1), l.BackendServer(2)}); err != nil {
		t.Fatal(err)
	}
	// Cyrus tools switch to user cyrus, and the flat backend opens its
	// file for writing.
	cy, err := user.Lookup("cyrus")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(cy.Uid)
	gid, _ := strconv.Atoi(cy.Gid)
	if err := os.Chown(flat, uid, gid); err != nil {
		t.Fatal(err)
	}
	os.Remove(db)
	conf := filepath.Join(filepath.Dir(filepath.Dir(db)), "imapd.conf")
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, filepath.Join(murderlab.CyrusBin, "cvt_cyrusdb"), "-C", conf, flat, "flat", db, "twoskip").CombinedOutput()
	if err != nil || strings.Contains(string(out), "DBERROR") { // it exits 0 on failure
		t.Fatalf("cvt_cyrusdb: %v: %s", err, out)
	}
	os.Remove(flat)
	t.Logf("master's mailboxes.db: %d mailboxes converted in %s", n, time.Since(t0).Round(time.Millisecond))
	if err := l.StartMaster(ctx); err != nil {
		t.Fatal(err)
	}

	cfg := labConfig(t, l)
	cfg.DumpIdleTimeout = 3 * time.Second
	got, raw := rawDump(t, cfg)
	if got != n {
		t.Fatalf("the master dumped %d mailboxes, want %d", got, n)
	}
	t.Logf("master dump to a counting client: %d mailboxes in %s (%.0f/s)", got, raw.Round(time.Millisecond), float64(got)/raw.Seconds())

	r, _ := newReplica(t, cfg)
	r.Start()
	eventually(t, "the replica's dump", func() bool { return r.Status().Dumps == 1 })
	st := r.Status()
	if st.Mailboxes != n {
		t.Fatalf("%d mailboxes in the replica, want %d", st.Mailboxes, n)
	}
	t.Logf("replica dump: %d mailboxes in %s (%.0f/s; the counting client took %s)", st.Mailboxes,
		st.LastDumpDuration.Round(time.Millisecond), float64(st.Mailboxes)/st.LastDumpDuration.Seconds(), raw.Round(time.Millisecond))
	if e := mustFind(t, r, "user."+bench.SynthMailbox(n-1)); e.Server != l.BackendServer(2) {
		t.Errorf("the last mailbox: %+v", e)
	}

	ccfg := cfg
	ccfg.Compress = true
	ccfg.SnapshotPath = ""
	rc, _ := newReplica(t, ccfg)
	rc.Start()
	eventually(t, "the compressed dump", func() bool { return rc.Status().Dumps == 1 })
	if cst := rc.Status(); cst.Mailboxes != n {
		t.Errorf("compressed: %d mailboxes", cst.Mailboxes)
	} else {
		t.Logf("replica dump with COMPRESS: %s", cst.LastDumpDuration.Round(time.Millisecond))
	}
	rc.Close()

	t.Log("the master frozen in the middle of a dump")
	r.Stop()
	failures := r.Status().Failures
	r.Start()
	eventually(t, "the dump to be under way", func() bool { st := r.Status(); return st.Stream == StreamDumping && st.DumpProgress > 0 })
	if err := l.Freeze("master"); err != nil {
		t.Fatal(err)
	}
	frozenAt := r.Status().DumpProgress
	// Meanwhile the last list is served whole.
	if e := mustFind(t, r, "user."+bench.SynthMailbox(n-1)); e.Server != l.BackendServer(2) {
		t.Errorf("the last mailbox during the frozen dump: %+v", e)
	}
	eventually(t, "the frozen dump to fail", func() bool { return r.Status().Failures > failures })
	st = r.Status()
	if !strings.Contains(st.LastError, "timeout") || st.Mailboxes != n {
		t.Errorf("after the frozen dump: %+v", st)
	}
	t.Logf("frozen after %d mailboxes of the dump: %s", frozenAt, st.LastError)
	if err := l.Thaw("master"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a complete dump after the thaw", func() bool { return r.Status().Dumps == 2 })
	if st := r.Status(); st.Mailboxes != n {
		t.Errorf("%d mailboxes after the thaw", st.Mailboxes)
	}
	if _, err := r.Lookup(ctx, "user.nosuch"); !errors.Is(err, lookup.ErrNotFound) {
		t.Errorf("miss: %v", err)
	}
}
