package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testbin"
	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

// Before a miss in mailboxes.db becomes a 550, lmtpgate pokes the frontend's
// mupdate replica through Cyrus's kick socket and looks again, as Cyrus's
// lmtpd does. With file watching reduced to an hourly poll, only the poke
// can make a mailbox created after start-up routable; without the replica
// socket the same RCPT is a 550.
func TestMissPokesTheRealReplica(t *testing.T) {
	l := setup(t)
	slow := func(c string) string {
		return strings.Replace(c, "lookup:\n", "lookup:\n  force_polling: true\n  poll_interval: 1h\n", 1)
	}
	withPoke := testbin.Start(t, slow(config(l, "[mailboxes-db]", "")))
	noPoke := testbin.Start(t, strings.Replace(slow(config(l, "[mailboxes-db]", "")), "lookup:\n", "lookup:\n  replica_socket: \"\"\n", 1))

	if err := l.CreateMailbox(ctxT(t), 2, "user/erin", nil); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFrontend(ctxT(t), "user.erin", true); err != nil {
		t.Fatal(err)
	}
	if rep := probe(t, noPoke.LMTP, "erin@example.org"); rep != "550 5.1.1" {
		t.Fatalf("without the replica socket, a mailbox unseen by the index got %q, want 550 5.1.1 (the test would prove nothing)", rep)
	}
	if rep := probe(t, withPoke.LMTP, "erin@example.org"); rep != "" {
		t.Fatalf("after poking the replica, erin got %q, want 250", rep)
	}
	rr, dr, id := send(t, withPoke.LMTP, []string{"erin@example.org"}, "after a poke")
	if rr["erin@example.org"] != "" || dr["erin@example.org"] != "" {
		t.Fatalf("delivery: RCPT %q DATA %q", rr["erin@example.org"], dr["erin@example.org"])
	}
	if n := count(t, l, 2, "user/erin", id); n != 1 {
		t.Fatalf("user/erin holds %d copies, want 1", n)
	}
	// A mailbox that does not exist anywhere is still a 550 after the poke.
	if rep := probe(t, withPoke.LMTP, "nobody-at-all@example.org"); rep != "550 5.1.1" {
		t.Fatalf("unknown mailbox after a poke: %q", rep)
	}
}

// Cyrus 3.6 deletes a mailbox by renaming it to DELETED.<name>.<hex>
// (delayed delete). For a shared folder that grants "anyone p" the copy
// still looks postable, but Cyrus's backend refuses delivery to it for
// ever; lmtpgate answers 550 5.1.1 at once instead of deferring it.
func TestDeletedSharedFolderIsUnknown(t *testing.T) {
	l := setup(t)
	if err := l.CreateMailbox(ctxT(t), 1, "bb/old", map[string]string{"anyone": "lrsp"}); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFrontend(ctxT(t), "bb.old", true); err != nil {
		t.Fatal(err)
	}
	if err := l.DeleteMailbox(ctxT(t), 1, "bb/old"); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFrontend(ctxT(t), "bb.old", false); err != nil {
		t.Fatal(err)
	}
	var deleted string
	if !testkit.Eventually(30*time.Second, func() bool {
		fm, err := l.FrontendMailboxes(ctxT(t))
		if err != nil {
			return false
		}
		for name := range fm {
			if strings.HasPrefix(name, "DELETED.bb.old.") {
				deleted = name
				return true
			}
		}
		return false
	}) {
		t.Fatal("no DELETED.* copy of bb.old appeared on the frontend (the lab expects Cyrus's default delayed delete)")
	}
	d := testbin.Start(t, config(l, "[mailboxes-db]", ""))
	rcpt := "+" + strings.ReplaceAll(deleted, ".", "/") + "@example.org"
	if rep := probe(t, d.LMTP, rcpt); rep != "550 5.1.1" {
		t.Fatalf("%s (delayed-delete copy %s): %q, want 550 5.1.1", rcpt, deleted, rep)
	}
	if rep := probe(t, d.LMTP, "+bb/sales@example.org"); rep != "" {
		t.Fatalf("a live shared folder: %q, want 250", rep)
	}
}
