package mupdate_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
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

	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mupdate"
	"github.com/lmtpgate/lmtpgate/internal/murderlab"
)

const cyrusBin = murderlab.CyrusBin

// requireCyrus skips under -short or when Cyrus cannot run here, except
// that LMTPGATE_REQUIRE_CYRUS=1 turns a missing Cyrus into a failure; it
// returns user cyrus's ids.
func requireCyrus(t *testing.T) (uid, gid int) {
	t.Helper()
	murderlab.RequireCyrus(t)
	cy, err := user.Lookup("cyrus")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ = strconv.Atoi(cy.Uid)
	gid, _ = strconv.Atoi(cy.Gid)
	return uid, gid
}

// startCyrusMaster runs a Cyrus master that serves only "mupdate -m" on a
// free 127.0.0.1 port, with user mupdate/mupdatepw as admin in a sasldb.
// It returns the address and a function that stops master (by its PID).
func startCyrusMaster(t *testing.T) (addr string, stop func()) {
	t.Helper()
	uid, gid := requireCyrus(t)
	dir := t.TempDir()
	// Cyrus runs as user cyrus and must reach its files.
	for p := dir; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, sub := range []string{"conf", "conf/db", "conf/socket", "conf/proc", "conf/log", "conf/lock", "spool", "run", "sieve"} {
		p := filepath.Join(dir, sub)
		if err := os.MkdirAll(p, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = ln.Addr().String()
	ln.Close()

	sasldb := filepath.Join(dir, "sasldb2")
	// The SASL realm is the servername.
	cmd := exec.Command("saslpasswd2", "-p", "-c", "-f", sasldb, "-u", "127.0.0.1", "mupdate")
	cmd.Stdin = strings.NewReader("mupdatepw")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("saslpasswd2: %v: %s", err, out)
	}
	if err := os.Chown(sasldb, uid, gid); err != nil {
		t.Fatal(err)
	}
	os.Chmod(sasldb, 0o640)

	conf := filepath.Join(dir, "imapd.conf")
	imapd := fmt.Sprintf(`configdirectory: %[1]s/conf
partition-default: %[1]s/spool
servername: 127.0.0.1
admins: mupdate
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: %[2]s
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
lmtpsocket: %[1]s/run/lmtp
idlesocket: %[1]s/run/idle
notifysocket: %[1]s/run/notify
mboxname_lockpath: %[1]s/run/lock
proc_path: %[1]s/run/proc
sievedir: %[1]s/sieve
`, dir, sasldb)
	cyrusConf := fmt.Sprintf("START {\n}\nSERVICES {\n  mupdate cmd=\"mupdate -m -C %s\" listen=\"%s\" prefork=1\n}\nEVENTS {\n}\n", conf, addr)
	for name, body := range map[string]string{"imapd.conf": imapd, "cyrus.conf": cyrusConf} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	logf, err := os.Create(filepath.Join(dir, "master.log"))
	if err != nil {
		t.Fatal(err)
	}
	master := exec.Command(filepath.Join(cyrusBin, "master"), "-C", conf, "-M", filepath.Join(dir, "cyrus.conf"),
		"-p", filepath.Join(dir, "run", "master.pid"), "-D")
	master.Dir = dir
	master.Stdout, master.Stderr = logf, logf
	master.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := master.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { master.Wait(); close(done) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		pid := master.Process.Pid
		syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			// master is the leader of its own group, made for it above.
			syscall.Kill(-pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "master.log"))
			t.Logf("cyrus master output:\n%s", b)
		}
	})

	// Wait for the greeting.
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if strings.HasPrefix(line, "* ") {
				break
			}
		}
		select {
		case <-done:
			t.Fatal("cyrus master exited")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("cyrus mupdate on %s did not come up", addr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return addr, stop
}

// populate writes mailboxes to the master as a backend's ctl_mboxlist -m
// would: ACTIVATE and RESERVE as an admin.
func populate(t *testing.T, addr string, cmds ...[]string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	for {
		r, err := mupdate.ReadResponse(br, 0)
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind == "OK" {
			break
		}
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00mupdate\x00mupdatepw"))
	cmds = append([][]string{{"AUTHENTICATE", "PLAIN", ir}}, cmds...)
	for i, cmd := range cmds {
		tag := fmt.Sprintf("P%02d", i)
		var b strings.Builder
		b.WriteString(tag + " " + cmd[0])
		for _, a := range cmd[1:] {
			fmt.Fprintf(&b, " {%d+}\r\n%s", len(a), a)
		}
		b.WriteString("\r\n")
		if _, err := conn.Write([]byte(b.String())); err != nil {
			t.Fatal(err)
		}
		r, err := mupdate.ReadResponse(br, 0)
		if err != nil {
			t.Fatal(err)
		}
		if r.Tag != tag || r.Kind != "OK" {
			t.Fatalf("%s: %v", cmd[0], r)
		}
	}
}

func TestRealCyrusMaster(t *testing.T) {
	addr, stop := startCyrusMaster(t)
	populate(t, addr,
		[]string{"ACTIVATE", "user.alice", "127.0.0.2!default", "alice\tlrswipkxtecdan\t"},
		[]string{"ACTIVATE", "user.john^doe", "127.0.0.3!default", "john.doe\tlrswipkxtecdan\t"},
		[]string{"ACTIVATE", "bb.sales", "127.0.0.2!default", "anyone\tlrsp\t"},
		[]string{"RESERVE", "user.newby", "127.0.0.3!default"},
	)

	cfg := testConfig(addr)
	cfg.QueryTimeout = 10 * time.Second
	c, _ := newClient(t, cfg)
	ctx := context.Background()
	tests := []struct {
		name string
		want lookup.Entry
	}{
		{"user.alice", lookup.Entry{Name: "user.alice", Server: "127.0.0.2", Partition: "default", ACL: "alice\tlrswipkxtecdan\t", State: lookup.Active}},
		{"user.john^doe", lookup.Entry{Name: "user.john^doe", Server: "127.0.0.3", Partition: "default", ACL: "john.doe\tlrswipkxtecdan\t", State: lookup.Active}},
		{"bb.sales", lookup.Entry{Name: "bb.sales", Server: "127.0.0.2", Partition: "default", ACL: "anyone\tlrsp\t", State: lookup.Active}},
		{"user.newby", lookup.Entry{Name: "user.newby", Server: "127.0.0.3", Partition: "default", State: lookup.Reserved}},
	}
	for _, tt := range tests {
		got, err := c.Lookup(ctx, tt.name)
		if err != nil {
			t.Fatalf("Lookup(%q): %v", tt.name, err)
		}
		if got != tt.want {
			t.Errorf("Lookup(%q)\n got %+v\nwant %+v", tt.name, got, tt.want)
		}
	}
	for _, name := range []string{"user.nosuch", "user/alice", "USER.ALICE"} {
		if _, err := c.Lookup(ctx, name); !errors.Is(err, lookup.ErrNotFound) {
			t.Errorf("Lookup(%q) err = %v, want ErrNotFound", name, err)
		}
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if st := c.Stats(); st.Connects != 1 || st.Queries != 7 {
		t.Errorf("Stats = %+v, want 1 connect and 7 queries", st)
	}

	// Cyrus refuses a wrong password; that must be "unavailable".
	bad := testConfig(addr)
	bad.Password = "wrong"
	bc, _ := newClient(t, bad)
	_, err := bc.Lookup(ctx, "user.alice")
	wantUnavailable(t, err)

	// The master goes away: unavailable, never "not found".
	stop()
	_, err = c.Lookup(ctx, "user.alice")
	wantUnavailable(t, err)
	_, err = c.Lookup(ctx, "user.nosuch")
	wantUnavailable(t, err)
}
