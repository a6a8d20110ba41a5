package postfix

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/postfixlab"
)

// pair returns n messages each to alice (backend 1) and carol (backend 2):
// Postfix puts both in one LMTP transaction, so a fault of backend 2 is
// seen by backend 1's recipients too unless lmtpgate keeps them apart.
func pair(subject string, n int) []*mail {
	out := make([]*mail, n)
	for i := range out {
		out[i] = newMail(fmt.Sprintf("%s %d", subject, i), []string{"alice@example.org", "carol@example.org"})
	}
	return out
}

// A backend that is down defers its own recipients only: the other
// backend's recipients in the same transactions are delivered at once, and
// the deferred ones arrive, once, when the backend is back.
func TestBackendDown(t *testing.T) {
	l, sl := lab(t)
	faultRow(t, "backend down", "backend 2 stopped (connection refused); 10 messages to alice (backend 1) + carol (backend 2); backend 2 started again")
	g := startGate(t, l, gateConf{})
	p := startPostfix(t, g, overTCP, nil)
	if err := l.StopBackend(2); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			l.StartBackend(ctxT(t, 2*time.Minute), 2)
		}
	})
	mails := pair("backend down", 10)
	submit(t, p, mails...)
	evs := waitEvents(t, p, time.Minute, "alice delivered and carol deferred in every message", func(evs []postfixlab.Event) bool {
		return finalFor(mails, "alice@example.org")(evs) && attempted(mails, "carol@example.org")(evs)
	})
	for _, e := range evs {
		if e.Delivery() && e.To == "carol@example.org" && e.Status != "deferred" {
			errorf(t, "carol, on the stopped backend, was %s (%s), want deferred", e.Status, e.Reply)
		}
	}
	if err := l.StartBackend(ctxT(t, 2*time.Minute), 2); err != nil {
		t.Fatal(err)
	}
	restarted = true
	reconcile(t, l, sl, p, mails, reconcileOpts{})
}

// attempted reports whether addr has at least one delivery attempt logged
// for every one of mails that has it.
func attempted(mails []*mail, addr string) func([]postfixlab.Event) bool {
	return func(evs []postfixlab.Event) bool {
		seen := map[string]bool{}
		for _, e := range evs {
			if e.Delivery() && e.To == addr {
				seen[e.QueueID] = true
			}
		}
		for _, m := range mails {
			for _, r := range m.rcpts {
				if r.addr == addr && !seen[m.qid] {
					return false
				}
			}
		}
		return true
	}
}

// A hung backend (it accepts TCP and never greets) must not slow down the
// other backend's mail. Postfix groups alice (backend 1) and carol (backend
// 2) in one transaction; with backend 2 hung, the first transaction may
// cost alice the connect timeout, but once lmtpgate knows backend 2 is
// hung (carol's first attempt timed out), alice's delay must stay within
// a second of the no-fault baseline.
func TestBackendHung(t *testing.T) {
	l, sl := lab(t)
	faultRow(t, "backend hung", fmt.Sprintf("backend 2 frozen (SIGSTOP: TCP accepted, no greeting); 1 + 10 messages to alice (backend 1) + carol (backend 2) in one transaction each; connect_timeout %s", connectTimeout))
	// A pooled connection to backend 2 would meet the freeze in a
	// command, not in the greeting: the command timeout is the connect
	// timeout, so either way the first transaction has the same budget,
	// and idle connections are dropped quickly so the greeting is what
	// is tested.
	g := startGate(t, l, gateConf{Backends: []string{"command_timeout: " + connectTimeout.String(), "idle_timeout: 1s"}})
	p := startPostfix(t, g, overUnix, nil)

	base := pair("hung baseline", 10)
	submit(t, p, base...)
	evs := waitEvents(t, p, time.Minute, "the baseline delivered", func(evs []postfixlab.Event) bool { return allFinal(base, evs) })
	baseline := maxOf(delaysOf(evs, base, "alice@example.org"))
	t.Logf("no-fault baseline: alice's delay is at most %.2fs", baseline)
	// Let the pool's idle connections go (idle_timeout 1s).
	time.Sleep(2500 * time.Millisecond)

	if err := l.Freeze("backend2"); err != nil {
		t.Fatal(err)
	}
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			if err := l.Thaw("backend2"); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(thaw)

	first := pair("hung first", 1)
	submit(t, p, first...)
	evs = waitEvents(t, p, time.Minute, "alice's first message delivered", finalFor(first, "alice@example.org"))
	d1 := delaysOf(evs, first, "alice@example.org")[0]
	limit1 := connectTimeout.Seconds() + 2
	t.Logf("backend 2 hung, first transaction: alice's delay %.2fs (limit %.1fs)", d1, limit1)
	if d1 < 0 || d1 > limit1 {
		errorf(t, "backend 2 hung: alice's first message took %.2fs, want at most the connect timeout + 2s = %.1fs", d1, limit1)
	}

	// lmtpgate knows backend 2 is hung once carol's first attempt ended
	// (the connect timeout). Until then, transactions that started
	// join the hung backend and hold their Postfix connection for the
	// connect timeout, as any client's would.
	waitEvents(t, p, time.Minute, "carol's first attempt ended", attempted(first, "carol@example.org"))

	later := pair("hung later", 10)
	submit(t, p, later...)
	evs = waitEvents(t, p, 2*time.Minute, "alice's later messages delivered", finalFor(later, "alice@example.org"))
	ds := delaysOf(evs, later, "alice@example.org")
	limit := baseline + 1
	t.Logf("backend 2 hung, later transactions: alice's delays %v (limit %.2fs)", ds, limit)
	slow := 0
	for _, d := range ds {
		if d < 0 || d > limit {
			slow++
		}
	}
	if slow > 0 {
		errorf(t, "backend 2 hung: %d of %d later messages took alice longer than the baseline %.2fs + 1s (delays %v)", slow, len(ds), baseline, ds)
	}
	note(t, fmt.Sprintf("alice's delay: baseline ≤ %.2fs, first transaction %.2fs, later ≤ %.2fs", baseline, d1, maxOf(ds)), "")
	for _, e := range evs {
		if e.Delivery() && e.To == "alice@example.org" && e.Status != "sent" {
			errorf(t, "alice, on the healthy backend, was %s (%s)", e.Status, e.Reply)
		}
	}
	thaw()
	mails := append(append(base, first...), later...)
	reconcile(t, l, sl, p, mails, reconcileOpts{bound: 90 * time.Second})
}

// A backend that hangs in the middle of a transaction (after its 354 to
// DATA, or after the final dot with its replies lost) costs only its own
// recipients a retry. Where the backend stored the message and lmtpgate
// never heard so, the retry is a duplicate: Cyrus's duplicate suppression
// drops it, and the mailbox holds one copy.
func TestBackendFrozenMidData(t *testing.T) {
	l, sl := lab(t)
	for _, fault := range []relayFault{relayFreezeAt354, relayLoseReply} {
		t.Run(strings.ReplaceAll(fault.String(), " ", "-"), func(t *testing.T) {
			faultRow(t, "backend frozen mid-DATA: "+fault.String(), fmt.Sprintf("a relay in front of backend 2 stops one transaction: %s; 3 messages to alice + carol; command_timeout %s", fault, commandTimeout))
			r := startRelay(t, l.BackendLMTPAddr(2))
			g := startGate(t, l, gateConf{Backends: []string{fmt.Sprintf("addresses: {%q: %q}", l.BackendServer(2), r.addr())}})
			p := startPostfix(t, g, overTCP, nil)
			r.arm(fault)
			mails := pair("mid-DATA "+fault.String(), 3)
			submit(t, p, mails[:1]...)
			select {
			case <-r.fired:
			case <-time.After(time.Minute):
				fatalf(t, "the relay never saw a transaction reach the fault")
			}
			// The first message met the fault: carol must be deferred
			// (lmtpgate cannot know whether backend 2 has it), alice
			// delivered.
			evs := waitEvents(t, p, time.Minute, "the first message's outcome for carol", attempted(mails[:1], "carol@example.org"))
			for _, e := range evs {
				if e.Delivery() && e.QueueID == mails[0].qid {
					t.Logf("first attempt: %s %s (%s)", e.To, e.Status, e.Reply)
					if e.To == "carol@example.org" && e.Status != "deferred" {
						errorf(t, "carol, whose backend froze mid-DATA, was %s (%s), want deferred", e.Status, e.Reply)
					}
				}
			}
			submit(t, p, mails[1:]...)
			rep := reconcile(t, l, sl, p, mails, reconcileOpts{bound: 90 * time.Second})
			if fault == relayLoseReply {
				// The backend stored carol's first copy and the relay
				// lost its reply: Postfix's retry is a second copy,
				// which Cyrus's duplicate suppression must have dropped
				// (or, if it kept it, reconcile allowed it as a
				// duplicate after a lost reply).
				for _, res := range rep.results {
					if res.mail == mails[0] && res.rcpt.addr == "carol@example.org" {
						t.Logf("carol's copy whose reply was lost: %d attempts, stored %d, Cyrus dupelim %d", len(res.attempts), res.stored, res.dupelim)
						if res.stored+res.dupelim < 2 {
							errorf(t, "the backend stored carol's copy and lost the reply, so Postfix's retry must reach it again: stored %d, dupelim %d, attempts %d", res.stored, res.dupelim, len(res.attempts))
						}
					}
				}
			}
		})
	}
}

// A flush after an outage sends a backend everything at once; lmtpgate
// must hold each backend to backends.max_transactions concurrent
// transactions, make the excess wait up to backends.queue_timeout, defer
// what still waits, and lose nothing.
func TestBackendConcurrency(t *testing.T) {
	l, sl := lab(t)
	const limit = 2
	faultRow(t, "flush after an outage", fmt.Sprintf("60 messages to alice and bob (backend 1) queued while lmtpgate was down, then flushed at Postfix's concurrency 20; backends.max_transactions %d", limit))
	r := startRelay(t, l.BackendLMTPAddr(1))
	g := startGate(t, l, gateConf{Backends: []string{
		fmt.Sprintf("addresses: {%q: %q}", l.BackendServer(1), r.addr()),
		fmt.Sprintf("max_transactions: %d", limit),
		"queue_timeout: 2s",
	}})
	p := startPostfix(t, g, overUnix, map[string]string{"initial_destination_concurrency": "20", "lmtp_destination_concurrency_limit": "20"})
	g.Kill()
	var mails []*mail
	for i := 0; i < 60; i++ {
		to := []string{"alice@example.org"}
		if i%2 == 1 {
			to = []string{"bob@example.org"}
		}
		mails = append(mails, newMail(fmt.Sprintf("flush %d", i), to))
	}
	submit(t, p, mails...)
	waitEvents(t, p, time.Minute, "every message deferred while lmtpgate is down", func(evs []postfixlab.Event) bool {
		return attempted(mails, "alice@example.org")(evs) && attempted(mails, "bob@example.org")(evs)
	})
	g.restart(t)
	if err := p.Flush(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	reconcile(t, l, sl, p, mails, reconcileOpts{bound: 90 * time.Second})
	most, total := r.maxConcurrent()
	t.Logf("backend 1 saw %d transactions, at most %d at once", total, most)
	note(t, "", fmt.Sprintf("backend 1: at most %d transactions at once (%d in all)", most, total))
	if most > limit {
		errorf(t, "backend 1 had %d transactions at once, want at most backends.max_transactions = %d", most, limit)
	}
}
