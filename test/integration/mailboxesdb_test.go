package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testbin"
	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

// lmtpgate routing from the frontend's own mailboxes.db, which the Cyrus
// mupdate replica rewrites as the murder changes.
func TestMailboxesDB(t *testing.T) {
	l := setup(t)

	// Changes reach lmtpgate through the file alone: no reload, no signal.
	t.Run("live", func(t *testing.T) {
		d := testbin.Start(t, config(l, "[mailboxes-db]", ""))
		const bob = "bob@example.org"
		if rep := probe(t, d.LMTP, bob); rep != "550 5.1.1" {
			t.Fatalf("bob before his mailbox exists: %q, want 550 5.1.1", rep)
		}

		// Created: routable within a second of the frontend having it.
		if err := l.CreateMailbox(ctxT(t), 1, "user/bob", nil); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitFrontend(ctxT(t), "user.bob", true); err != nil {
			t.Fatal(err)
		}
		if !testkit.Eventually(time.Second, func() bool { return probe(t, d.LMTP, bob) == "" }) {
			t.Fatalf("bob still %q a second after the frontend's mailboxes.db had user.bob", probe(t, d.LMTP, bob))
		}
		rr, dr, id := send(t, d.LMTP, []string{bob}, "new mailbox")
		if rr[bob] != "" || dr[bob] != "" {
			t.Fatalf("bob: RCPT %q DATA %q", rr[bob], dr[bob])
		}
		if n := count(t, l, 1, "user/bob", id); n != 1 {
			t.Errorf("user/bob holds %d copies, want 1", n)
		}

		// Deleted: Cyrus 3.6 renames it to DELETED.user.bob.<hex>. Neither
		// name may take mail: bob's address finds no mailbox, and the
		// DELETED copy, addressed as a shared folder, grants anonymous
		// posters no right (Cyrus's rule answers that as unknown).
		if err := l.DeleteMailbox(ctxT(t), 1, "user/bob"); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitFrontend(ctxT(t), "user.bob", false); err != nil {
			t.Fatal(err)
		}
		if !testkit.Eventually(time.Second, func() bool { return probe(t, d.LMTP, bob) == "550 5.1.1" }) {
			t.Fatalf("bob still %q a second after the frontend dropped user.bob, want 550 5.1.1", probe(t, d.LMTP, bob))
		}
		fm, err := l.FrontendMailboxes(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		var deleted []string
		for name := range fm {
			if strings.HasPrefix(name, "DELETED.") {
				deleted = append(deleted, name)
			}
		}
		if len(deleted) == 0 {
			t.Logf("no DELETED.* entry on the frontend (delete_mode immediate?): %v", fm)
		}
		for _, name := range deleted {
			rcpt := "+" + strings.ReplaceAll(name, ".", "/") + "@example.org"
			if rep := probe(t, d.LMTP, rcpt); rep != "550 5.1.1" {
				t.Errorf("%s (delayed-delete name %s): %q, want 550 5.1.1", rcpt, name, rep)
			}
			// Make sure the probe named that very mailbox.
			if out, _ := d.Run(t, "resolve", rcpt); !strings.Contains(out, "mailbox:  "+name) || !strings.Contains(out, "550 5.1.1") {
				t.Errorf("resolve %s, want mailbox %s and 550 5.1.1:\n%s", rcpt, name, out)
			}
		}

		// Moved: deleted on backend 1 and created again on backend 2;
		// mail follows it there.
		const dave = "dave@example.org"
		if err := l.CreateMailbox(ctxT(t), 1, "user/dave", nil); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitFrontend(ctxT(t), "user.dave", true); err != nil {
			t.Fatal(err)
		}
		if !testkit.Eventually(time.Second, func() bool { return probe(t, d.LMTP, dave) == "" }) {
			t.Fatalf("dave still %q a second after the frontend had user.dave", probe(t, d.LMTP, dave))
		}
		rr, dr, id = send(t, d.LMTP, []string{dave}, "before the move")
		if rr[dave] != "" || dr[dave] != "" || count(t, l, 1, "user/dave", id) != 1 {
			t.Fatalf("dave before the move: RCPT %q DATA %q, want one copy on backend 1", rr[dave], dr[dave])
		}
		if err := l.DeleteMailbox(ctxT(t), 1, "user/dave"); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitFrontend(ctxT(t), "user.dave", false); err != nil {
			t.Fatal(err)
		}
		if err := l.CreateMailbox(ctxT(t), 2, "user/dave", nil); err != nil {
			t.Fatal(err)
		}
		if !testkit.Eventually(time.Minute, func() bool {
			m, err := l.FrontendMailboxes(ctxT(t))
			return err == nil && m["user.dave"] == l.BackendServer(2)
		}) {
			t.Fatal("the frontend never listed user.dave on backend 2")
		}
		want := "server:   " + l.BackendServer(2)
		if !testkit.Eventually(time.Second, func() bool {
			out, _ := d.Run(t, "resolve", dave)
			return strings.Contains(out, want)
		}) {
			out, _ := d.Run(t, "resolve", dave)
			t.Fatalf("a second after the frontend moved user.dave to backend 2, resolve says:\n%s", out)
		}
		rr, dr, id = send(t, d.LMTP, []string{dave}, "after the move")
		if rr[dave] != "" || dr[dave] != "" {
			t.Fatalf("dave after the move: RCPT %q DATA %q", rr[dave], dr[dave])
		}
		if n := count(t, l, 2, "user/dave", id); n != 1 {
			t.Errorf("after the move user/dave on backend 2 holds %d copies, want 1", n)
		}
		if _, code := d.Run(t, "status"); code != 0 {
			t.Errorf("status: exit %d", code)
		}
		if n := len(logLines(d, "level=ERROR")); n != 0 {
			t.Errorf("the daemon logged %d errors while following the file", n)
		}
	})

	// Cyrus rewrites mailboxes.db to a new file (repack, checkpoint)
	// while mail flows: no recipient may be deferred or lost for it.
	t.Run("checkpoint-under-load", func(t *testing.T) {
		d := testbin.Start(t, config(l, "[mailboxes-db]", ""))
		rcpts := []string{"alice@example.org", "+bb/sales@example.org", "carol@example.org"}
		var (
			mu    sync.Mutex
			ids   []string
			fails []string
			stop  = make(chan struct{})
			wg    sync.WaitGroup
		)
		for s := 0; s < 3; s++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					rr, dr, id, err := sendMsg(d.LMTP, rcpts, fmt.Sprintf("load %d/%d", s, i), "", 0)
					mu.Lock()
					if err != nil {
						fails = append(fails, err.Error())
					} else {
						ids = append(ids, id)
						for _, r := range rcpts {
							if rr[r] != "" || dr[r] != "" {
								fails = append(fails, fmt.Sprintf("%s %s: RCPT %q DATA %q", id, r, rr[r], dr[r]))
							}
						}
					}
					mu.Unlock()
				}
			}()
		}
		inodes := map[uint64]bool{}
		for i := 0; i < 6; i++ {
			if err := l.Checkpoint(ctxT(t)); err != nil {
				t.Error(err)
			}
			if st, err := os.Stat(l.FrontendMailboxesDB()); err == nil {
				inodes[st.Sys().(*syscall.Stat_t).Ino] = true
			}
			time.Sleep(300 * time.Millisecond)
		}
		close(stop)
		wg.Wait()
		if len(inodes) < 2 {
			t.Errorf("the checkpoints left mailboxes.db on %d inode(s); the test did not exercise a rewrite", len(inodes))
		}
		for i, f := range fails {
			if i == 10 {
				t.Errorf("... %d failures in all", len(fails))
				break
			}
			t.Error(f)
		}
		if len(ids) < 6 {
			t.Fatalf("only %d messages sent during the checkpoints", len(ids))
		}
		t.Logf("%d messages to %d recipients each during %d checkpoints", len(ids), len(rcpts), 6)
		for _, w := range []struct {
			backend int
			mailbox string
		}{{1, "user/alice"}, {1, "bb/sales"}, {2, "user/carol"}} {
			have := counts(t, l, w.backend, w.mailbox)
			bad := 0
			for _, id := range ids {
				if have[id] != 1 {
					bad++
					if bad <= 5 {
						t.Errorf("%s on backend %d holds %d copies of %s, want 1", w.mailbox, w.backend, have[id], id)
					}
				}
			}
			if bad > 0 {
				t.Errorf("%s: %d of %d messages not there exactly once", w.mailbox, bad, len(ids))
			}
		}
		if n := len(logLines(d, "level=ERROR")); n != 0 {
			t.Errorf("the daemon logged %d errors during the checkpoints", n)
		}
	})

	// A damaged mailboxes.db never empties the routing table: the last
	// good index stays in use, the damage is reported once (log, status,
	// resolve), and the next good file is taken up by itself.
	t.Run("bad-file", func(t *testing.T) {
		db := filepath.Join(t.TempDir(), "mailboxes.db")
		copyFile(t, l.FrontendMailboxesDB(), db)
		d := testbin.Start(t, configDB(l, "[mailboxes-db]", db, ""))
		good := []string{"alice@example.org", "carol@example.org"}
		deliver := func(t *testing.T, when string) {
			t.Helper()
			rr, dr, id := send(t, d.LMTP, good, when)
			for _, r := range good {
				if rr[r] != "" || dr[r] != "" {
					t.Errorf("%s: %s got RCPT %q DATA %q, want delivered", when, r, rr[r], dr[r])
				}
			}
			if count(t, l, 1, "user/alice", id) != 1 || count(t, l, 2, "user/carol", id) != 1 {
				t.Errorf("%s: the message is not in user/alice and user/carol exactly once", when)
			}
		}
		deliver(t, "good copy")

		// A mailbox the copy does not know yet, to tell the restored
		// file from the last good index.
		const news = "+bb/news@example.org"
		if err := l.CreateMailbox(ctxT(t), 1, "bb/news", map[string]string{"anyone": "lrsp"}); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitFrontend(ctxT(t), "bb.news", true); err != nil {
			t.Fatal(err)
		}
		if rep := probe(t, d.LMTP, news); rep != "550 5.1.1" {
			t.Fatalf("bb/news is not in the copy, yet RCPT says %q", rep)
		}

		const errMsg = "cannot read mailboxes.db; keeping the previous routing table"
		size := func() int64 {
			st, err := os.Stat(db)
			if err != nil {
				t.Fatal(err)
			}
			return st.Size()
		}
		garbage := make([]byte, 8192)
		for i := range garbage {
			garbage[i] = byte(i*7 + i/13)
		}
		steps := []struct {
			name  string
			apply func()
		}{
			{"truncated", func() {
				if err := os.Truncate(db, size()/2+3); err != nil {
					t.Fatal(err)
				}
			}},
			{"garbage", func() {
				if err := os.WriteFile(db+".tmp", garbage, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(db+".tmp", db); err != nil {
					t.Fatal(err)
				}
			}},
			{"empty", func() {
				if err := os.WriteFile(db+".tmp", nil, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(db+".tmp", db); err != nil {
					t.Fatal(err)
				}
			}},
		}
		for i, step := range steps {
			step.apply()
			if !testkit.Eventually(time.Minute, func() bool { return len(logLines(d, errMsg)) > i }) {
				t.Fatalf("%s: the daemon never logged %q:\n%s", step.name, errMsg, d.Output())
			}
			lines := logLines(d, errMsg)
			last := lines[len(lines)-1]
			if !strings.Contains(last, "level=ERROR") || !strings.Contains(last, "path="+db) || !strings.Contains(last, " err=") {
				t.Errorf("%s: the error line lacks level, path or reason:\n%s", step.name, last)
			}
			t.Logf("%s: %s", step.name, last)
			deliver(t, step.name)
			out, code := d.Run(t, "status")
			if code != 0 || !strings.Contains(out, "keeping last good index") || !regexp.MustCompile(`mailboxes-db +stale +\d+ mailboxes`).MatchString(out) {
				t.Errorf("%s: status (exit %d), want the index state and the error:\n%s", step.name, code, out)
			}
			out, code = d.Run(t, "resolve", "-v", "alice@example.org")
			if code != 0 || !strings.Contains(out, "answered by mailboxes-db") || !strings.Contains(out, "keeping last good index") {
				t.Errorf("%s: resolve -v (exit %d), want the answer from the last good index and the error:\n%s", step.name, code, out)
			}
		}
		// Let several stat intervals pass over the same bad file: the
		// problem is logged once per distinct state, not once per check.
		time.Sleep(2500 * time.Millisecond)
		if n := len(logLines(d, errMsg)); n != len(steps) {
			t.Errorf("%d error lines for %d bad files, want one each:\n%s", n, len(steps), strings.Join(logLines(d, "level=ERROR"), "\n"))
		}

		// Restored, with the mailbox the copy lacked.
		copyFile(t, l.FrontendMailboxesDB(), db)
		if !testkit.Eventually(time.Minute, func() bool { return probe(t, d.LMTP, news) == "" }) {
			t.Fatalf("bb/news still %q after the good file came back", probe(t, d.LMTP, news))
		}
		d.WaitLog(t, "mailboxes.db readable again", time.Minute)
		rr, dr, id := send(t, d.LMTP, []string{news}, "restored")
		if rr[news] != "" || dr[news] != "" || count(t, l, 1, "bb/news", id) != 1 {
			t.Errorf("bb/news after the restore: RCPT %q DATA %q, want one copy on backend 1", rr[news], dr[news])
		}
		deliver(t, "restored")
		if out, _ := d.Run(t, "status"); strings.Contains(out, "keeping last good index") {
			t.Errorf("status still reports the old error after the restore:\n%s", out)
		}
	})
}
