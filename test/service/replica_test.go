package service

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
	"github.com/lmtpgate/lmtpgate/internal/testbin"
	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

// TestMasterReplicaDaemon runs the daemon with lookup.order
// [master-replica] and no Cyrus configuration, against a real murder whose
// master is reached through a relay that counts open connections: mail
// routes from the replica, a mailbox created a moment ago is found for its
// first message, `lmtpgate mode no-master` leaves no connection to the
// master and keeps routing, a restart while the master is down routes
// from the snapshot, and `lmtpgate mode master` streams again. Deliveries
// are checked in the backend's mailbox over IMAP.
func TestMasterReplicaDaemon(t *testing.T) {
	l := murderlab.StartTest(t, murderlab.Options{})
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := l.CreateMailbox(c, 1, "user/alice", nil); err != nil {
		t.Fatal(err)
	}
	r := newRelay(t, l.MasterMupdateAddr())
	cr := l.Creds()
	var addrs []string
	for i := 1; i <= l.Backends(); i++ {
		addrs = append(addrs, fmt.Sprintf("%q: %q", l.BackendServer(i), l.BackendLMTPAddr(i)))
	}
	maddr := testbin.FreePort(t, "127.0.0.1")
	d := testbin.Start(t, fmt.Sprintf(`hostname: lmtpgate.test
imapd_conf: ""
metrics: {listen: "%s"}
lookup:
  order: [master-replica]
  master_mupdate: {address: "%s", authname: %s, password: %s, backoff_min: 200ms, backoff_max: 1s}
backends:
  authname: %s
  password: %s
  addresses: {%s}
`, maddr, r.Addr(), cr.Mupdate, cr.MupdatePassword, cr.Proxy, cr.ProxyPassword, strings.Join(addrs, ", ")))
	status := func() string {
		out, code := d.Run(t, "status")
		if code != 0 {
			t.Fatalf("lmtpgate status: exit %d\n%s", code, out)
		}
		return out
	}
	sourceLine := func() string {
		for line := range strings.SplitSeq(status(), "\n") {
			if strings.HasPrefix(line, "source:") && strings.Contains(line, "master-replica") {
				return line
			}
		}
		return ""
	}
	stored := func(mailbox, subject string) bool {
		ms, err := l.Messages(c, 1, mailbox)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.Subject == subject {
				return true
			}
		}
		return false
	}
	deliver := func(rcpt, subject string) {
		t.Helper()
		rcptRep, dataRep, err := txn("tcp", d.LMTP, []string{rcpt}, subject)
		if err != nil || rcptRep[rcpt] != "" || dataRep[rcpt] != "" {
			t.Fatalf("%s (%s): err %v, RCPT %q, DATA %q\n%s", rcpt, subject, err, rcptRep[rcpt], dataRep[rcpt], d.Output())
		}
		mbox := "user/" + strings.TrimSuffix(rcpt, "@example.org")
		if !stored(mbox, subject) {
			t.Fatalf("%s: %q was acknowledged but is not in %s", rcpt, subject, mbox)
		}
	}

	eventually(t, 30*time.Second, "the replica streaming", func() bool { return strings.Contains(sourceLine(), "streaming") })
	deliver("alice@example.org", "from the replica")
	metric := func(name string) float64 { m, _ := scrape(t, maddr); return m[name] }
	if v := metric(`lmtpgate_replica_stream{state="streaming"}`); v != 1 {
		t.Errorf("lmtpgate_replica_stream{state=\"streaming\"} = %v while streaming, want 1", v)
	}
	if v := metric(`lmtpgate_source_mailboxes{source="master-replica"}`); v < 1 {
		t.Errorf("lmtpgate_source_mailboxes{source=\"master-replica\"} = %v, want the list's size", v)
	}
	if n := waitLogLines(d, 1, `msg="delivered `, `source=master-replica`); n != 1 {
		t.Fatalf("the delivery was not routed by master-replica:\n%s", d.Output())
	}

	// A mailbox created after the dump is found for its first message:
	// the miss waits for the master's pending changes (NOOP).
	if err := l.CreateMailbox(c, 1, "user/newbie", nil); err != nil {
		t.Fatal(err)
	}
	deliver("newbie@example.org", "created a moment ago")

	// No-master mode: no connection to the master, the list still routes.
	if out, code := d.Run(t, "mode", "no-master"); code != 0 {
		t.Fatalf("mode no-master: exit %d\n%s", code, out)
	}
	eventually(t, 10*time.Second, "no connection to the master in no-master mode", func() bool { return r.open.Load() == 0 })
	if line := sourceLine(); !strings.Contains(line, "stale") || !strings.Contains(line, "stopped") {
		t.Errorf("status in no-master mode: %q, want the replica stopped and stale", line)
	}
	if v := metric(`lmtpgate_source_stale{source="master-replica"}`); v != 1 {
		t.Errorf("lmtpgate_source_stale{source=\"master-replica\"} = %v in no-master mode, want 1", v)
	}
	accepted := r.accepted.Load()
	if err := l.StopMaster(); err != nil {
		t.Fatal(err)
	}
	deliver("alice@example.org", "no-master mode")
	if r.accepted.Load() != accepted {
		t.Errorf("%d connections to the master in no-master mode", r.accepted.Load()-accepted)
	}

	// A restart while the master is down routes from the snapshot.
	if err := d.Stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.Dir, "master-replica.snapshot")); err != nil {
		t.Fatalf("no snapshot after the stop: %v", err)
	}
	d.Restart(t)
	deliver("newbie@example.org", "after a restart, from the snapshot")
	if out, code := d.Run(t, "resolve", "-v", "newbie@example.org"); code != 0 || !strings.Contains(out, "snapshot") || !strings.Contains(out, "stale") {
		t.Errorf("resolve -v from the snapshot: exit %d, want 0 and the list's staleness shown:\n%s", code, out)
	}

	// Master mode with the master still down: the stream retries, the
	// list keeps routing. With the master back it streams again.
	if out, code := d.Run(t, "mode", "master"); code != 0 {
		t.Fatalf("mode master: exit %d\n%s", code, out)
	}
	deliver("alice@example.org", "master mode, the master down")
	if err := l.StartMaster(c); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the replica streaming again", func() bool { return strings.Contains(sourceLine(), "streaming") })
	if r.open.Load() != 1 {
		t.Errorf("%d connections open to the master while streaming, want 1", r.open.Load())
	}
	deliver("alice@example.org", "streaming again")
}

// eventually fails the test if cond does not hold within bound.
func eventually(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, bound, what, cond)
}
