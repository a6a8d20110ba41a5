package postfix

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
	"github.com/lmtpgate/lmtpgate/internal/postfixlab"
	"github.com/lmtpgate/lmtpgate/internal/sandbox"
)

// trio returns n messages each to alice (backend 1), carol (backend 2) and
// nosuch: an unknown recipient is the one lookup that asks every source,
// the master included.
func trio(subject string, n int) []*mail {
	out := make([]*mail, n)
	for i := range out {
		out[i] = newMail(fmt.Sprintf("%s %d", subject, i), []string{"alice@example.org", "carol@example.org", nosuch})
	}
	return out
}

// allDelays returns the delay of every recipient's final attempt in mails.
func allDelays(evs []postfixlab.Event, mails []*mail) []float64 {
	var out []float64
	for _, a := range []string{"alice@example.org", "carol@example.org", nosuch} {
		out = append(out, delaysOf(evs, mails, a)...)
	}
	return out
}

// masterOutage runs the drill shared by the master-down and master-hung
// tests: a no-fault baseline, the fault, one message, then ten more whose
// every recipient must be answered within a second of the baseline (the
// master's breaker is open by then: an unknown recipient must not cost a
// lookup timeout per message), then the master comes back and everything
// is reconciled. check runs after the first message, with the fault on.
func masterOutage(t *testing.T, l *murderlab.Lab, sl *sandbox.Syslog, tr transport, fault func() error, restore func() error, check func(g *gate) string) {
	g := startGate(t, l, gateConf{})
	p := startPostfix(t, g, tr, nil)
	base := trio("master baseline", 5)
	submit(t, p, base...)
	evs := waitEvents(t, p, time.Minute, "the baseline final", func(evs []postfixlab.Event) bool { return allFinal(base, evs) })
	baseline := maxOf(allDelays(evs, base))
	t.Logf("no-fault baseline: every recipient answered within %.2fs", baseline)

	if err := fault(); err != nil {
		t.Fatal(err)
	}
	restored := false
	t.Cleanup(func() {
		if !restored {
			if err := restore(); err != nil {
				t.Errorf("restore the master: %v", err)
			}
		}
	})
	first := trio("master first", 1)
	submit(t, p, first...)
	evs = waitEvents(t, p, 2*time.Minute, "the first message final", func(evs []postfixlab.Event) bool { return allFinal(first, evs) })
	t.Logf("first message with the master out: delays %v", allDelays(evs, first))
	checked := ""
	if check != nil {
		checked = check(g)
	}
	later := trio("master later", 10)
	submit(t, p, later...)
	evs = waitEvents(t, p, 3*time.Minute, "the later messages final", func(evs []postfixlab.Event) bool { return allFinal(later, evs) })
	ds := allDelays(evs, later)
	limit := baseline + 1
	slow := 0
	for _, d := range ds {
		if d < 0 || d > limit {
			slow++
		}
	}
	t.Logf("later messages with the master out: delays %v (limit %.2fs)", ds, limit)
	if slow > 0 {
		errorf(t, "with the master out, %d of %d recipients of later messages took longer than the baseline %.2fs + 1s (max %.2fs)", slow, len(ds), baseline, maxOf(ds))
	}
	restored = true
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	reconcile(t, l, sl, p, append(append(base, first...), later...), reconcileOpts{})
	note(t, fmt.Sprintf("later messages: every recipient answered within %.2fs (no-fault baseline %.2fs)%s", maxOf(ds), baseline, checked), "")
}

// The master down (connection refused): mail keeps flowing from the
// frontend's own sources, an unknown recipient is refused as unknown
// (every source that answered said so), and nothing waits on the master.
func TestMasterDown(t *testing.T) {
	l, sl := lab(t)
	faultRow(t, "master down", "MUPDATE master stopped; 1 + 10 messages to alice, carol and an unknown recipient; lookup order mailboxes-db, local-mupdate, master-mupdate")
	masterOutage(t, l, sl, overUnix, l.StopMaster, func() error { return l.StartMaster(ctxT(t, 2*time.Minute)) }, nil)
}

// The master hung (SIGSTOP: TCP accepted, nothing answered): its breaker
// must open on the timeouts, so that an unknown recipient stops costing a
// lookup timeout per message, and `lmtpgate status` must not call it ok.
func TestMasterHung(t *testing.T) {
	l, sl := lab(t)
	faultRow(t, "master hung", "MUPDATE master frozen (SIGSTOP); 1 + 10 messages to alice, carol and an unknown recipient; lookup order mailboxes-db, local-mupdate, master-mupdate")
	masterOutage(t, l, sl, overTCP, func() error { return l.Freeze("master") }, func() error { return l.Thaw("master") }, func(g *gate) string {
		out, code := g.Run(t, "status")
		health := sourceHealth(out, "master-mupdate")
		t.Logf("lmtpgate status with the master hung (exit %d): master-mupdate %q", code, health)
		if health == "ok" || health == "" {
			errorf(t, "lmtpgate status says master-mupdate %q while the master is hung:\n%s", health, out)
		}
		return "; `lmtpgate status`: master-mupdate " + health
	})
}

// sourceHealth returns the health word `lmtpgate status` prints for a
// lookup source ("source:   master-mupdate  ok   ..."), "" if absent.
func sourceHealth(status, name string) string {
	for _, ln := range strings.Split(status, "\n") {
		f := strings.Fields(ln)
		if len(f) >= 3 && f[0] == "source:" && f[1] == name {
			return f[2]
		}
	}
	return ""
}
