package postfix

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/postfixlab"
)

// countSent counts status=sent lines for the test's mailboxes.
func countSent(evs []postfixlab.Event) int {
	n := 0
	for _, e := range evs {
		if e.Status == "sent" && strings.HasSuffix(e.To, "@example.org") {
			n++
		}
	}
	return n
}

// lmtpgate killed with SIGKILL while Postfix delivers: what it had
// acknowledged is stored, what it had not is deferred and retried after the
// restart, and the only duplicates are copies a backend stored whose reply
// died with the process.
func TestKillUnderLoad(t *testing.T) {
	l, sl := lab(t)
	faultRow(t, "lmtpgate killed under load", "150 messages (1–4 recipients); SIGKILL of lmtpgate after 40 deliveries; restarted on the same socket")
	g := startGate(t, l, gateConf{})
	p := startPostfix(t, g, overUnix, nil)
	mails := mix("killed", 150)
	done := make(chan error, 1)
	go func() { done <- submitAll(p, mails...) }()
	waitEvents(t, p, 2*time.Minute, "40 deliveries", func(evs []postfixlab.Event) bool { return countSent(evs) >= 40 })
	g.Kill()
	t.Logf("killed lmtpgate after %d deliveries", func() int { evs, _ := p.Events(); return countSent(evs) }())
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Postfix meets the dead socket at least once before the restart.
	waitEvents(t, p, time.Minute, "a deferral after the kill", func(evs []postfixlab.Event) bool {
		for _, e := range evs {
			if e.Status == "deferred" {
				return true
			}
		}
		return false
	})
	g.restart(t)
	rep := reconcile(t, l, sl, p, mails, reconcileOpts{bound: 90 * time.Second})
	window := 0
	for _, e := range rep.events {
		if e.Status == "deferred" && strings.Contains(e.Reply, "may be sent more than once") {
			window++
		}
	}
	t.Logf("Postfix logged %d attempts that may have been delivered (lost connection after the message was sent)", window)
}

// Twenty reloads while Postfix delivers: each one is answered by the
// daemon (lmtpgate reload exits 0) and none is noticed by the MTA: no
// deferral, no bounce, nothing lost.
func TestReloadsUnderLoad(t *testing.T) {
	l, sl := lab(t)
	faultRow(t, "20 reloads under load", "messages submitted without pause while `lmtpgate reload` runs 20 times, each after a changed configuration (lookup.timeout) and at least one delivery since the last")
	g := startGate(t, l, gateConf{})
	p := startPostfix(t, g, overTCP, nil)

	var mu sync.Mutex
	var mails []*mail
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			batch := mix(fmt.Sprintf("reload %d", i), 8)
			if err := submitAll(p, batch...); err != nil {
				done <- err
				return
			}
			mu.Lock()
			mails = append(mails, batch...)
			mu.Unlock()
		}
	}()
	stopped := false
	stopLoad := func() error {
		if stopped {
			return nil
		}
		stopped = true
		close(stop)
		return <-done
	}
	t.Cleanup(func() { stopLoad() })
	sent := 0
	for i := 0; i < 20; i++ {
		evs := waitEvents(t, p, time.Minute, "a delivery since the last reload", func(evs []postfixlab.Event) bool { return countSent(evs) > sent })
		sent = countSent(evs)
		conf := g.conf
		conf.Lookup = []string{fmt.Sprintf("timeout: %ds", 10+i%2)}
		g.reconfigure(t, l, conf)
		if out, code := g.Run(t, "reload"); code != 0 {
			errorf(t, "reload %d: exit %d: %s", i+1, code, out)
		}
	}
	if err := stopLoad(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	all := mails
	mu.Unlock()
	rep := reconcile(t, l, sl, p, all, reconcileOpts{bound: 90 * time.Second})
	deferred := 0
	for _, res := range rep.results {
		for _, e := range res.attempts {
			if e.Status == "deferred" {
				deferred++
				if deferred <= 3 {
					errorf(t, "a reload was noticed: %s of %s deferred (%s)", res.rcpt.addr, res.mail.id, e.Reply)
				}
			}
		}
	}
	t.Logf("%d messages, %d recipients, %d deferrals across 20 reloads", len(all), len(rep.results), deferred)
}
