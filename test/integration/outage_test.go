package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testbin"
	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

// Outages of the murder's servers must defer mail (4xx), never bounce or
// lose it, and lmtpgate must recover by itself when they come back.
func TestOutages(t *testing.T) {
	l := setup(t)

	// Only the master is asked. While it is down nothing can be known,
	// so every recipient, existing or not, is deferred; once it is back
	// the breaker closes and mail flows again, without a reload.
	t.Run("master-down", func(t *testing.T) {
		d := testbin.Start(t, config(l, "[master-mupdate]", ""))
		if rr, dr, id := send(t, d.LMTP, []string{"alice@example.org"}, "before master outage"); rr["alice@example.org"] != "" || dr["alice@example.org"] != "" {
			t.Fatalf("before the outage: RCPT %q DATA %q", rr["alice@example.org"], dr["alice@example.org"])
		} else if n := count(t, l, 1, "user/alice", id); n != 1 {
			t.Fatalf("before the outage user/alice holds %d copies, want 1", n)
		}
		if err := l.StopMaster(); err != nil {
			t.Fatal(err)
		}
		// carol and nosuch were never asked, so no cached answer can
		// stand in for the master. Ask several times: the first query
		// meets the broken connection, the later ones the open breaker.
		deferred := 0
		for i := 0; i < 4; i++ {
			for _, r := range []string{"carol@example.org", "nosuch@example.org", "dave@example.org"} {
				rep := probe(t, d.LMTP, r)
				if rep != "451 4.4.3" {
					t.Errorf("master down, attempt %d: RCPT %s = %q, want 451 4.4.3", i, r, rep)
				} else {
					deferred++
				}
			}
		}
		if deferred != 12 {
			t.Errorf("%d of 12 RCPTs deferred while the master was down", deferred)
		}
		// A whole transaction still runs: nothing accepted, all deferred.
		rr, _, _ := send(t, d.LMTP, []string{"carol@example.org", "nosuch@example.org"}, "during master outage")
		for r, rep := range rr {
			if rep != "451 4.4.3" {
				t.Errorf("master down: RCPT %s = %q in a transaction, want 451 4.4.3", r, rep)
			}
		}
		out, code := d.Run(t, "status")
		if code != 0 || !strings.Contains(out, "master-mupdate  DOWN") {
			t.Errorf("status with the master down (exit %d), want master-mupdate DOWN:\n%s", code, out)
		}

		if err := l.StartMaster(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		if !testkit.Eventually(time.Minute, func() bool { return probe(t, d.LMTP, "carol@example.org") == "" }) {
			t.Fatalf("RCPT carol still %q a minute after the master came back", probe(t, d.LMTP, "carol@example.org"))
		}
		rr, dr, id := send(t, d.LMTP, []string{"carol@example.org", "nosuch@example.org"}, "after master outage")
		if rr["carol@example.org"] != "" || dr["carol@example.org"] != "" || rr["nosuch@example.org"] != "550 5.1.1" {
			t.Errorf("after the outage: %v %v, want carol delivered and nosuch 550 5.1.1", rr, dr)
		}
		if n := count(t, l, 2, "user/carol", id); n != 1 {
			t.Errorf("after the outage user/carol holds %d copies, want 1", n)
		}
		if _, code := d.Run(t, "status"); code != 0 {
			t.Errorf("status after the outage: exit %d", code)
		}
	})

	// A backend down defers only its own recipients; the others in the
	// same transaction are delivered. The MTA's retry of the same message
	// (same Message-ID) then lands exactly once everywhere: once in the
	// mailbox that missed it, and Cyrus's duplicate suppression keeps a
	// second copy out of those that had it (still answering 250).
	t.Run("backend-down", func(t *testing.T) {
		d := testbin.Start(t, config(l, "[mailboxes-db]", ""))
		rcpts := []string{"alice@example.org", "carol@example.org", "+bb/sales@example.org"}
		if err := l.StopBackend(2); err != nil {
			t.Fatal(err)
		}
		rr, dr, id, err := sendMsg(d.LMTP, rcpts, "backend 2 down", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []string{"alice@example.org", "+bb/sales@example.org"} {
			if rr[r] != "" || dr[r] != "" {
				t.Errorf("backend 2 down: %s on backend 1 got RCPT %q DATA %q, want delivered", r, rr[r], dr[r])
			}
		}
		// Deferred at RCPT or after DATA, but deferred.
		carol := rr["carol@example.org"]
		if carol == "" {
			carol = dr["carol@example.org"]
		}
		t.Logf("backend 2 down: carol got RCPT %q DATA %q", rr["carol@example.org"], dr["carol@example.org"])
		if !strings.HasPrefix(carol, "451 4.") {
			t.Errorf("backend 2 down: carol got RCPT %q DATA %q, want a 451", rr["carol@example.org"], dr["carol@example.org"])
		}
		if n := count(t, l, 1, "user/alice", id); n != 1 {
			t.Errorf("user/alice holds %d copies, want 1", n)
		}
		if n := count(t, l, 1, "bb/sales", id); n != 1 {
			t.Errorf("bb/sales holds %d copies, want 1", n)
		}

		if err := l.StartBackend(ctxT(t), 2); err != nil {
			t.Fatal(err)
		}
		// The backend is out of service until lmtpgate's probe finds it
		// again (within backends.backoff_min, 1s): an MTA retrying
		// earlier is deferred at RCPT, which is fine.
		if !testkit.Eventually(30*time.Second, func() bool { return probe(t, d.LMTP, "carol@example.org") == "" }) {
			t.Fatal("backend 2 did not come back into service")
		}
		// The retry of the deferred recipient.
		rr, dr, _, err = sendMsg(d.LMTP, []string{"carol@example.org"}, "backend 2 down", id, 0)
		if err != nil {
			t.Fatal(err)
		}
		if rr["carol@example.org"] != "" || dr["carol@example.org"] != "" {
			t.Errorf("retry to carol: RCPT %q DATA %q, want delivered", rr["carol@example.org"], dr["carol@example.org"])
		}
		// A retry that also names the recipients that already have it.
		rr, dr, _, err = sendMsg(d.LMTP, rcpts, "backend 2 down", id, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rcpts {
			if rr[r] != "" || dr[r] != "" {
				t.Errorf("second retry: %s got RCPT %q DATA %q, want 250", r, rr[r], dr[r])
			}
		}
		for _, w := range []struct {
			backend int
			mailbox string
		}{{1, "user/alice"}, {1, "bb/sales"}, {2, "user/carol"}} {
			if n := count(t, l, w.backend, w.mailbox, id); n != 1 {
				t.Errorf("after the retries %s on backend %d holds %d copies, want exactly 1", w.mailbox, w.backend, n)
			}
		}
	})
}
