package backend_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/murderlab"
)

const cyrusBin = murderlab.CyrusBin

// needCyrus skips (or fails, when LMTPGATE_REQUIRE_CYRUS=1) when a real
// Cyrus cannot be run here.
func needCyrus(t *testing.T) { murderlab.RequireCyrus(t) }

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startCyrusBackend runs one plain Cyrus instance (no murder) with imapd
// and an lmtpd that requires AUTH from its lmtp_admins, like a murder
// backend. It returns the IMAP and LMTP addresses and the imapd.conf path.
func startCyrusBackend(t *testing.T) (imapAddr, lmtpAddr, conf string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "lmtpgate-cyrus-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	u, _ := user.Lookup("cyrus")
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, d := range []string{"conf", "conf/socket", "conf/lock", "spool", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	imapAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	lmtpAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf = filepath.Join(dir, "imapd.conf")
	sasldb := filepath.Join(dir, "sasldb2")
	write := func(name, s string) {
		if err := os.WriteFile(name, []byte(s), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	write(conf, strings.Join([]string{
		"configdirectory: " + filepath.Join(dir, "conf"),
		"partition-default: " + filepath.Join(dir, "spool"),
		"servername: 127.0.0.1",
		"admins: admin",
		"lmtp_admins: proxy",
		"sasl_pwcheck_method: auxprop",
		"sasl_auxprop_plugin: sasldb",
		"sasl_sasldb_path: " + sasldb,
		"sasl_mech_list: PLAIN LOGIN",
		"allowplaintext: yes",
		"lmtpsocket: " + filepath.Join(dir, "conf/socket/lmtp"),
		"idlesocket: " + filepath.Join(dir, "conf/socket/idle"),
		"notifysocket: " + filepath.Join(dir, "conf/socket/notify"),
		"mboxname_lockpath: " + filepath.Join(dir, "conf/lock"),
		"",
	}, "\n"))
	write(filepath.Join(dir, "cyrus.conf"), fmt.Sprintf(`START {
  recover cmd="ctl_cyrusdb -r -C %[1]s"
}
SERVICES {
  imap cmd="imapd -C %[1]s" listen="%[2]s" prefork=0
  lmtp cmd="lmtpd -C %[1]s" listen="%[3]s" prefork=0
}
EVENTS {
}
`, conf, imapAddr, lmtpAddr))
	for _, who := range [][2]string{{"proxy", "proxypw"}, {"admin", "adminpw"}} {
		cmd := exec.Command("/usr/sbin/saslpasswd2", "-p", "-c", "-f", sasldb, "-u", "127.0.0.1", who[0])
		cmd.Stdin = strings.NewReader(who[1])
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("saslpasswd2: %v: %s", err, out)
		}
	}
	filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Chown(p, uid, gid) })

	pidfile := filepath.Join(dir, "run/master.pid")
	master := exec.Command(filepath.Join(cyrusBin, "master"), "-C", conf, "-M", filepath.Join(dir, "cyrus.conf"), "-p", pidfile)
	master.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := master.Start(); err != nil {
		t.Fatalf("start master: %v", err)
	}
	t.Cleanup(func() {
		master.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { master.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			master.Process.Kill()
			<-done
		}
	})
	// Wait for both services to listen.
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range []string{imapAddr, lmtpAddr} {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Cyrus did not listen on %s: %v", a, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return imapAddr, lmtpAddr, conf
}

// imapCreate creates mailboxes as the admin over plain IMAP.
func imapCreate(t *testing.T, addr string, mailboxes ...string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	expect := func(tag string) {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("IMAP: %v", err)
			}
			if tag == "*" || strings.HasPrefix(line, tag+" ") {
				if tag != "*" && !strings.HasPrefix(line, tag+" OK") {
					t.Fatalf("IMAP %s: %s", tag, line)
				}
				return
			}
		}
	}
	expect("*") // greeting
	fmt.Fprintf(c, "a LOGIN admin adminpw\r\n")
	expect("a")
	for i, m := range mailboxes {
		tag := fmt.Sprintf("c%d", i)
		fmt.Fprintf(c, "%s CREATE %s\r\n", tag, m)
		expect(tag)
	}
	fmt.Fprintf(c, "z LOGOUT\r\n")
}

// TestRealCyrusBackend delivers through a real Cyrus 3.6 lmtpd that
// requires AUTH from an lmtp_admin, as a murder backend does.
func TestRealCyrusBackend(t *testing.T) {
	needCyrus(t)
	imapAddr, lmtpAddr, conf := startCyrusBackend(t)
	imapCreate(t, imapAddr, "user/alice", "user/bob")

	cfg := backend.DefaultConfig()
	cfg.Addresses = map[string]string{"backend1": lmtpAddr}
	cfg.AuthName, cfg.Password = "proxy", "proxypw"
	p := backend.NewPool(cfg, testLogger(t))
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	msg := bytesMsg("From: sender@example.org\r\nSubject: real cyrus\r\nMessage-ID: <1@lmtpgate.test>\r\n\r\nbody\r\n.dot line\r\n")
	rcpts := []string{"alice@internal", "nosuchuser@internal", "bob@internal", "alice@internal"}
	res := p.Deliver(ctx, "backend1", backend.Envelope{From: "sender@example.org"}, rcpts, msg)
	checkResults(t, res, rcpts, []want{
		{delivered: true, stage: backend.StageDone},
		{stage: backend.StageRcpt, code: 550},
		{delivered: true, stage: backend.StageDone},
		{delivered: true, stage: backend.StageDone},
	})
	// A second message on the pooled connection. It needs its own
	// Message-ID: Cyrus's duplicate suppression (duplicatesuppression: on
	// by default) silently drops a second copy with the same Message-ID
	// to the same mailbox, and still answers 250.
	msg2 := bytesMsg(strings.Replace(string(msg), "<1@lmtpgate.test>", "<2@lmtpgate.test>", 1))
	res = p.Deliver(ctx, "backend1", backend.Envelope{}, []string{"bob@internal"}, msg2)
	if !res[0].Delivered() {
		t.Fatalf("second delivery: %+v", res[0])
	}
	if st := p.Stats(); st.Dials != 1 || st.Reuses != 1 {
		t.Errorf("stats = %+v, want the connection reused", st)
	}
	// Wrong password: AUTH refused with a 5xx, nothing delivered.
	badCfg := cfg
	badCfg.Password = "nope"
	bad := backend.NewPool(badCfg, testLogger(t))
	defer bad.Close()
	res = bad.Deliver(ctx, "backend1", backend.Envelope{}, []string{"alice@internal"}, msg)
	if res[0].Delivered() || res[0].Stage != backend.StageAuth || res[0].Reply == nil || res[0].Reply.Code/100 != 5 {
		t.Errorf("bad password: %+v", res[0])
	}

	// Count what lmtpd wrote into each mailbox (message files are "N.").
	count := func(mailbox string) int {
		out, err := exec.Command(filepath.Join(cyrusBin, "mbpath"), "-C", conf, mailbox).Output()
		if err != nil {
			t.Fatalf("mbpath %s: %v", mailbox, err)
		}
		files, _ := filepath.Glob(filepath.Join(strings.TrimSpace(string(out)), "*."))
		n := 0
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), "Subject: real cyrus") {
				n++
			}
		}
		return n
	}
	if n := count("user/alice"); n != 1 {
		t.Errorf("alice has %d messages in the spool, want 1 (duplicate recipient delivered once)", n)
	}
	if n := count("user/bob"); n != 2 {
		t.Errorf("bob has %d messages in the spool, want 2", n)
	}
}
