package integration

import (
	"strings"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/testbin"
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
