package service

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
	"github.com/lmtpgate/lmtpgate/internal/testbin"
)

// TestMasterDown runs lmtpgate against a real Cyrus murder with
// order [master-mupdate, mailboxes-db], the master reached through a relay
// that counts connection attempts. With the master stopped, deliveries go
// on from the frontend's mailboxes.db, and the breaker keeps the attempts
// to reach the master to a few per backoff period, not one per message
// (each of which would otherwise cost a connect or a timeout). When the
// master is back, it answers again.
func TestMasterDown(t *testing.T) {
	l := murderlab.StartTest(t, murderlab.Options{})
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := l.CreateMailbox(c, 1, "user/alice", nil); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFrontend(c, "user.alice", true); err != nil {
		t.Fatal(err)
	}
	r := newRelay(t, l.MasterMupdateAddr())
	cr := l.Creds()
	const backoffMin = 2 * time.Second
	d := testbin.Start(t, fmt.Sprintf(`hostname: lmtpgate.test
imapd_conf: %s
lookup:
  order: [master-mupdate, mailboxes-db]
  master_mupdate: {address: "%s", authname: %s, password: %s, backoff_min: %s, backoff_max: 10s}
  cache: {positive_ttl: 0s, negative_ttl: 0s}
backends:
  authname: %s
  password: %s
  connect_timeout: 3s
  command_timeout: 10s
`, l.FrontendImapdConf(), r.Addr(), cr.Mupdate, cr.MupdatePassword, backoffMin, cr.Proxy, cr.ProxyPassword))

	fromMaster := func() int {
		return len(logLines(d.Output(), `msg="delivered `, `source=master-mupdate`))
	}
	mustDeliver(t, "tcp", d.LMTP, "alice@example.org")
	if waitLogLines(d, 1, `msg="delivered `, `source=master-mupdate`) != 1 {
		t.Fatalf("with the master up, the delivery was not routed by it:\n%s", d.Output())
	}

	if err := l.StopMaster(); err != nil {
		t.Fatal(err)
	}
	before := r.accepted.Load()
	start := time.Now()
	const n = 20
	for range n {
		mustDeliver(t, "tcp", d.LMTP, "alice@example.org")
	}
	elapsed := time.Since(start)
	attempts := r.accepted.Load() - before
	// The breaker admits one attempt, then at most one per backoffMin
	// (backoff only grows from there).
	limit := 1 + int64(elapsed/backoffMin) + 1
	t.Logf("%d connection attempts to the master during %d deliveries over %v (limit %d)", attempts, n, elapsed.Round(time.Millisecond), limit)
	if attempts > limit || attempts >= n {
		t.Errorf("%d connection attempts to the stopped master for %d deliveries, want at most %d", attempts, n, limit)
	}
	if got := waitLogLines(d, n, `msg="delivered `, `source=mailboxes-db`); got != n {
		t.Errorf("%d deliveries routed by mailboxes-db while the master was down, want %d", got, n)
	}
	if got := strings.Count(d.Output(), "mupdate server unreachable"); got != 1 {
		t.Errorf(`"mupdate server unreachable" logged %d times, want once`, got)
	}

	if err := l.StartMaster(c); err != nil {
		t.Fatal(err)
	}
	for fromMaster() < 2 {
		if c.Err() != nil {
			t.Fatalf("the master, back up, never routed a delivery again:\n%s", d.Output())
		}
		mustDeliver(t, "tcp", d.LMTP, "alice@example.org")
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(d.Output(), "mupdate server reachable again") {
		t.Error(`no "mupdate server reachable again" log line`)
	}
}
