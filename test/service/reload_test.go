package service

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/systemdtest"
	"github.com/lmtpgate/lmtpgate/internal/testbin"
)

// TestModeSwitchDuringTransaction switches to no-master with
// `lmtpgate mode no-master` while an LMTP transaction has its recipients
// (resolved by the master) but has not sent DATA. That transaction must
// still be delivered; afterwards the master is not contacted at all (the
// frontend's mailboxes.db routes), and `lmtpgate mode master` brings it
// back into the chain.
func TestModeSwitchDuringTransaction(t *testing.T) {
	f := newFakes(t)
	dir := t.TempDir()
	db := copyFixture(t, dir)
	d := testbin.Start(t, f.config("order: [master-mupdate, mailboxes-db]\nmailboxes_db: "+db, ""))

	conn, err := net.Dial("tcp", d.LMTP)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("mta.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("sender@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if f.master.Finds() == 0 {
		t.Fatal("the master was not asked for alice in master mode")
	}

	if out, code := d.Run(t, "mode", "no-master"); code != 0 {
		t.Fatalf("lmtpgate mode no-master: exit %d\n%s", code, out)
	}
	if out, _ := d.Run(t, "status"); !strings.Contains(out, "mode:     no-master") {
		t.Fatalf("status after mode no-master:\n%s", out)
	}

	rr := map[string]string{"alice@example.org": ""}
	dr := map[string]string{}
	if err := data(c, rr, dr, "across the mode switch"); err != nil || dr["alice@example.org"] != "" {
		t.Fatalf("transaction begun in master mode: %v, DATA %v; want 250", err, dr)
	}
	c.Quit()
	if got := len(f.be1.Messages()); got != 1 {
		t.Fatalf("be1 holds %d messages, want 1", got)
	}

	conns, finds := f.master.Connections(), f.master.Finds()
	for range 3 {
		mustDeliver(t, "tcp", d.LMTP, "alice@example.org", "carol@example.org", "bob@example.org")
	}
	if c2, f2 := f.master.Connections(), f.master.Finds(); c2 != conns || f2 != finds {
		t.Errorf("no-master mode: master saw %d new connections and %d new FINDs, want 0", c2-conns, f2-finds)
	}
	if n := waitLogLines(d, 9, `msg="delivered `, `mode=no-master`, `source=mailboxes-db`); n != 9 {
		t.Errorf("%d deliveries routed by mailboxes-db in no-master mode, want 9", n)
	}

	if out, code := d.Run(t, "mode", "master"); code != 0 {
		t.Fatalf("lmtpgate mode master: exit %d\n%s", code, out)
	}
	mustDeliver(t, "tcp", d.LMTP, "alice@example.org", "carol@example.org")
	if c2, f2 := f.master.Connections(), f.master.FindsFor("user.carol"); c2 <= conns || f2 == 0 {
		t.Errorf("back in master mode: %d new connections to the master, %d FINDs for carol; want both > 0", c2-conns, f2)
	}
}

// TestBrokenReload rewrites the configuration with an unknown key and
// then a bad value: `lmtpgate reload` must fail naming the key, the daemon
// keeps delivering with the old configuration, and both `lmtpgate status`
// and systemd's STATUS= report the failure until a fixed file reloads.
// With watch_config: true, saving the file reloads by itself.
func TestBrokenReload(t *testing.T) {
	f := newFakes(t)

	t.Run("explicit", func(t *testing.T) {
		nl := systemdtest.ListenNotify(t, t.TempDir())
		d := testbin.Start(t, f.config("order: [master-mupdate]", ""), env("NOTIFY_SOCKET="+nl.Path())...)
		if _, err := nl.WaitFor(ctx(t), "READY", "1"); err != nil {
			t.Fatal(err)
		}
		good, err := os.ReadFile(d.Config)
		if err != nil {
			t.Fatal(err)
		}
		mustDeliver(t, "tcp", d.LMTP, "alice@example.org")

		for _, tc := range []struct{ name, yaml, key string }{
			{"unknown key", string(good) + "bogus_key: 1\n", "bogus_key"},
			{"bad value", strings.Replace(string(good), "hostname: lmtpgate.test", "hostname: lmtpgate.test\nmode: sideways", 1), "mode"},
			{"bad source", strings.Replace(string(good), "order: [master-mupdate]", "order: [master-mupdate, nis]", 1), "lookup.order"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if err := os.WriteFile(d.Config, []byte(tc.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
				out, code := d.Run(t, "reload")
				if code == 0 || !strings.Contains(out, tc.key) {
					t.Errorf("reload of a broken file: exit %d, output %q; want non-zero naming %s", code, out, tc.key)
				}
				mustDeliver(t, "tcp", d.LMTP, "alice@example.org")
				st, _ := d.Run(t, "status")
				if !strings.Contains(st, "FAILED:") || !strings.Contains(st, tc.key) {
					t.Errorf("status does not show the reload error:\n%s", st)
				}
				rdy, err := nl.WaitFor(ctx(t), "READY", "1")
				if err != nil {
					t.Fatal(err)
				}
				if s := rdy["STATUS"]; !strings.Contains(s, "LAST RELOAD FAILED") || !strings.Contains(s, tc.key) {
					t.Errorf("STATUS= after a rejected reload: %q", s)
				}
			})
		}

		if err := os.WriteFile(d.Config, good, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, code := d.Run(t, "reload"); code != 0 {
			t.Fatalf("reload of the fixed file: exit %d\n%s", code, out)
		}
		if st, _ := d.Run(t, "status"); strings.Contains(st, "FAILED") {
			t.Errorf("status still shows a reload error after a good reload:\n%s", st)
		}
		rdy, err := nl.WaitFor(ctx(t), "READY", "1")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(rdy["STATUS"], "FAILED") {
			t.Errorf("STATUS= still shows a reload error after a good reload: %q", rdy["STATUS"])
		}
		mustDeliver(t, "tcp", d.LMTP, "alice@example.org")
		t.Logf("STATUS line: %s", rdy["STATUS"])
	})

	t.Run("watch_config", func(t *testing.T) {
		d := testbin.Start(t, f.config("order: [master-mupdate]", "watch_config: true"))
		good, err := os.ReadFile(d.Config)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(d.Output(), "configuration reloaded") {
			t.Fatal("reloaded before any edit")
		}
		db := copyFixture(t, t.TempDir())
		edited := strings.Replace(string(good), "order: [master-mupdate]", "order: [master-mupdate, mailboxes-db]\n  mailboxes_db: "+db, 1)
		if err := os.WriteFile(d.Config, []byte(edited), 0o600); err != nil {
			t.Fatal(err)
		}
		d.WaitLog(t, "configuration reloaded", time.Minute)
		if st, _ := d.Run(t, "status"); !strings.Contains(st, "lookup order master-mupdate, mailboxes-db") {
			t.Errorf("status after the edit:\n%s", st)
		}
	})
}
