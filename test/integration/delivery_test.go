package integration

import (
	"strings"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/testbin"
)

// One transaction with recipients on both backends, a user sub-folder, a
// shared folder and an unknown mailbox, through each lookup source alone:
// every copy must land in exactly the mailbox it was meant for.
func TestDeliverThroughEachSource(t *testing.T) {
	l := setup(t)
	for _, order := range []string{"[master-mupdate]", "[local-mupdate]", "[mailboxes-db]"} {
		t.Run(strings.Trim(order, "[]"), func(t *testing.T) {
			d := testbin.Start(t, config(l, order, ""))
			rcpts := []string{"Alice@example.org", "alice+Sub@example.org", "+bb/sales@example.org", "carol@example.org", "nosuch@example.org"}
			rcptRep, dataRep, id := send(t, d.LMTP, rcpts, "through "+order)
			if rcptRep["nosuch@example.org"] != "550 5.1.1" {
				t.Errorf("unknown mailbox at RCPT: %q, want 550 5.1.1", rcptRep["nosuch@example.org"])
			}
			for _, r := range rcpts[:4] {
				if rcptRep[r] != "" || dataRep[r] != "" {
					t.Errorf("%s: RCPT %q DATA %q, want both accepted", r, rcptRep[r], dataRep[r])
				}
			}
			want := []struct {
				backend int
				mailbox string
				n       int
			}{
				{1, "user/alice", 1}, {1, "user/alice/Sub", 1}, {1, "bb/sales", 1}, {2, "user/carol", 1},
			}
			for _, w := range want {
				if got := count(t, l, w.backend, w.mailbox, id); got != w.n {
					t.Errorf("%s on backend %d holds %d copies, want %d", w.mailbox, w.backend, got, w.n)
				}
			}
			msg := raw(t, l, 2, "user/carol", id)
			if !strings.HasPrefix(msg, "Return-Path: <sender@example.org>") || !strings.Contains(msg, "by lmtpgate.test (lmtpgate) with LMTP") {
				t.Errorf("stored message lacks lmtpgate's trace headers:\n%.400s", msg)
			}
			// Exit 5: one of the addresses would be refused.
			out, code := d.Run(t, "resolve", "-v", "alice@example.org", "nosuch@example.org")
			if code != 5 || !strings.Contains(out, "server:   "+l.BackendServer(1)) || !strings.Contains(out, "550 5.1.1") {
				t.Errorf("resolve (exit %d):\n%s", code, out)
			}
		})
	}
}
