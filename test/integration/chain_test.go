package integration

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testbin"
	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

// The lookup chain hands a question to the next source when one cannot
// answer, and also when a local source misses, since a mailbox just
// created may not have reached the frontend's replica yet.
func TestChainFailover(t *testing.T) {
	l := setup(t)

	delivered := func(t *testing.T, d *testbin.Daemon, rcpt string, backend int, mailbox string) {
		t.Helper()
		rr, dr, id := send(t, d.LMTP, []string{rcpt}, "chain")
		if rr[rcpt] != "" || dr[rcpt] != "" {
			t.Fatalf("%s: RCPT %q DATA %q, want delivered", rcpt, rr[rcpt], dr[rcpt])
		}
		if n := count(t, l, backend, mailbox, id); n != 1 {
			t.Errorf("%s on backend %d holds %d copies, want 1", mailbox, backend, n)
		}
	}
	source := func(t *testing.T, d *testbin.Daemon, rcpt, want string) {
		t.Helper()
		// The log travels through a pipe and may trail the LMTP reply.
		last := func() bool { got := deliveredBy(d, rcpt); return len(got) > 0 && got[len(got)-1] == want }
		if !testkit.Eventually(10*time.Second, last) {
			t.Errorf("%s was delivered via sources %v, want the last via %s", rcpt, deliveredBy(d, rcpt), want)
		}
	}

	t.Run("mailboxes-db-missing", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "no", "mailboxes.db")
		d := testbin.Start(t, configDB(l, "[mailboxes-db, master-mupdate]", missing, ""))
		delivered(t, d, "alice@example.org", 1, "user/alice")
		source(t, d, "alice@example.org", "master-mupdate")
		out, code := d.Run(t, "resolve", "-v", "carol@example.org")
		if code != 0 || !strings.Contains(out, "answered by master-mupdate") || !strings.Contains(out, "mailboxes-db:") || !strings.Contains(out, "failed:") {
			t.Errorf("resolve -v with mailboxes.db missing (exit %d), want a failed mailboxes-db and the master answering:\n%s", code, out)
		}
	})

	t.Run("local-miss", func(t *testing.T) {
		// A copy of the frontend's db from before dave's mailbox existed
		// stands for a replica that has not caught up.
		stale := filepath.Join(t.TempDir(), "mailboxes.db")
		copyFile(t, l.FrontendMailboxesDB(), stale)
		if err := l.CreateMailbox(ctxT(t), 2, "user/dave", nil); err != nil {
			t.Fatal(err)
		}
		if !testkit.Eventually(time.Minute, func() bool {
			m, err := l.MasterMailboxes(ctxT(t))
			return err == nil && m["user.dave"] == l.BackendServer(2)
		}) {
			t.Fatal("the master never listed user.dave on backend 2")
		}
		d := testbin.Start(t, configDB(l, "[mailboxes-db, master-mupdate]", stale, ""))
		delivered(t, d, "dave@example.org", 2, "user/dave")
		source(t, d, "dave@example.org", "master-mupdate")
		// What the copy knows is still answered locally.
		delivered(t, d, "carol@example.org", 2, "user/carol")
		source(t, d, "carol@example.org", "mailboxes-db")
		out, _ := d.Run(t, "resolve", "-v", "dave@example.org")
		if !strings.Contains(out, "no such mailbox") || !strings.Contains(out, "answered by master-mupdate") {
			t.Errorf("resolve -v dave, want a local miss then the master:\n%s", out)
		}
	})

	t.Run("replica-down", func(t *testing.T) {
		d := testbin.Start(t, config(l, "[local-mupdate, master-mupdate]", ""))
		delivered(t, d, "alice@example.org", 1, "user/alice")
		source(t, d, "alice@example.org", "local-mupdate")
		if err := l.StopReplica(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := l.StartReplica(ctxT(t)); err != nil {
				t.Error(err)
			}
		})
		// carol was never asked, so no cached answer of the replica's
		// can serve; bb/sales likewise.
		delivered(t, d, "carol@example.org", 2, "user/carol")
		source(t, d, "carol@example.org", "master-mupdate")
		delivered(t, d, "+bb/sales@example.org", 1, "bb/sales")
		source(t, d, "+bb/sales@example.org", "master-mupdate")
		if rep := probe(t, d.LMTP, "nosuch@example.org"); rep != "550 5.1.1" {
			t.Errorf("unknown mailbox with the replica down: %q, want 550 5.1.1 (the master answered)", rep)
		}
		out, _ := d.Run(t, "status")
		if !strings.Contains(out, "local-mupdate   DOWN") {
			t.Errorf("status with the replica down, want local-mupdate DOWN:\n%s", out)
		}
	})
}
