// Package service tests lmtpgate as systemd runs it, black box: the built
// binary is started with NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_FDS and a
// journald socket played by internal/systemdtest, and the tests check what
// systemd and the MTA see — the notification sequence, socket activation,
// reloads that keep the old state, the graceful stop and the journal
// fields. Most tests use the fake MUPDATE master and fake backends and run
// under -short; the one against a real Cyrus murder skips there (with
// LMTPGATE_REQUIRE_CYRUS=1 a missing Cyrus fails it).
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/backend/fakelmtp"
	"github.com/lmtpgate/lmtpgate/internal/mupdate/fakemupdate"
	"github.com/lmtpgate/lmtpgate/internal/systemdtest"
)

var msgSeq atomic.Int64

// ctx returns a context for waits that must not hang the suite; the
// deadline is generous and never part of an assertion.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// shortDir returns a directory under /tmp whose paths fit in sun_path.
func shortDir(t *testing.T) string {
	d, err := os.MkdirTemp("/tmp", "lgsvc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// txn runs one LMTP transaction over network/addr and returns the RCPT
// replies and the post-DATA replies by recipient ("" = accepted). err is
// set when the connection failed before every reply was read; the maps
// then hold what was read.
func txn(network, addr string, rcpts []string, subject string) (rcptRep, dataRep map[string]string, err error) {
	conn, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("mta.test"); err != nil {
		return nil, nil, err
	}
	return txnOn(c, rcpts, subject)
}

// txnOn runs MAIL, RCPT and DATA on an open session.
func txnOn(c *smtp.Client, rcpts []string, subject string) (rcptRep, dataRep map[string]string, err error) {
	rcptRep, dataRep = map[string]string{}, map[string]string{}
	if err := c.Mail("sender@example.org", nil); err != nil {
		return rcptRep, dataRep, err
	}
	n := 0
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			if reply(err) == "" {
				return rcptRep, dataRep, err
			}
			rcptRep[r] = reply(err)
			continue
		}
		rcptRep[r] = ""
		n++
	}
	if n == 0 {
		return rcptRep, dataRep, nil
	}
	return rcptRep, dataRep, data(c, rcptRep, dataRep, subject)
}

func data(c *smtp.Client, rcptRep, dataRep map[string]string, subject string) error {
	w, err := c.Data()
	if err != nil {
		return err
	}
	id := fmt.Sprintf("<%d.%d@lmtpgate.test>", time.Now().UnixNano(), msgSeq.Add(1))
	fmt.Fprintf(w, "From: sender@example.org\r\nSubject: %s\r\nMessage-ID: %s\r\n\r\nbody\r\n", subject, id)
	resp, err := w.CloseWithLMTPResponse()
	var lerr smtp.LMTPDataError
	if err != nil && !errors.As(err, &lerr) {
		return err
	}
	for r := range resp {
		dataRep[r] = ""
	}
	for r, e := range lerr {
		dataRep[r] = reply(e)
	}
	for r, v := range rcptRep {
		if _, ok := dataRep[r]; !ok && v == "" {
			return fmt.Errorf("no DATA reply for %s", r)
		}
	}
	return nil
}

// reply formats an SMTP error as "550 5.1.1"; "" if err is not a reply.
func reply(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return ""
}

// mustDeliver runs a transaction and fails the test unless every recipient
// was accepted at RCPT and after DATA.
func mustDeliver(t *testing.T, network, addr string, rcpts ...string) {
	t.Helper()
	rr, dr, err := txn(network, addr, rcpts, t.Name())
	if err != nil {
		t.Fatalf("delivery over %s %s: %v (RCPT %v, DATA %v)", network, addr, err, rr, dr)
	}
	for _, r := range rcpts {
		if rr[r] != "" || dr[r] != "" {
			t.Fatalf("%s over %s: RCPT %q, DATA %q; want both accepted", r, network, rr[r], dr[r])
		}
	}
}

// fakes is a fake MUPDATE master and two fake backends. The master knows
// user.alice on be1 and user.carol on be2; be1 and be2, and the servers of
// the frontend mailboxes.db fixture (127.0.0.2, 127.0.0.3), are mapped to
// the fake backends.
type fakes struct {
	master   *fakemupdate.Server
	be1, be2 *fakelmtp.Server
}

func newFakes(t *testing.T) *fakes {
	f := &fakes{master: fakemupdate.New(t), be1: fakelmtp.New(t), be2: fakelmtp.New(t)}
	f.master.Set("user.alice", "be1!default", "alice\tlrswipkxtecdan\t")
	f.master.Set("user.carol", "be2!default", "carol\tlrswipkxtecdan\t")
	return f
}

// config returns lmtpgate YAML (without listen, control_socket and
// state_dir) for the fakes. lookup is inserted into the lookup section
// (order, mailboxes_db, ...), extra at the top level. Caching is off, so
// every recipient is a lookup the test can count.
func (f *fakes) config(lookup, extra string) string {
	return fmt.Sprintf(`hostname: lmtpgate.test
imapd_conf: ""
lookup:
  master_mupdate: {address: "%s", authname: %s, password: %s, backoff_min: 200ms, backoff_max: 1s}
  cache: {positive_ttl: 0s, negative_ttl: 0s}
%s
backends:
  authname: %s
  password: %s
  connect_timeout: 3s
  command_timeout: 10s
  addresses: {be1: "%s", be2: "%s", "127.0.0.2": "%s", "127.0.0.3": "%s"}
%s
`, f.master.Addr(), fakemupdate.DefaultUser, fakemupdate.DefaultPassword, indent(lookup),
		fakelmtp.User, fakelmtp.Password, f.be1.Addr(), f.be2.Addr(), f.be1.Addr(), f.be2.Addr(), extra)
}

func indent(s string) string {
	var b strings.Builder
	for l := range strings.SplitSeq(strings.TrimSpace(s), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

// copyFixture copies the Cyrus 3.6 frontend mailboxes.db (twoskip) fixture
// into dir and returns its path.
func copyFixture(t *testing.T, dir string) string {
	t.Helper()
	src := filepath.Join("..", "..", "internal", "mboxlist", "testdata", "frontend.mailboxes.db.twoskip")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "mailboxes.db")
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

// env returns os.Environ() without the variables that would make the
// daemon under test behave as if a service manager were watching this
// test process, plus extra.
func env(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LMTPGATE_JOURNAL_SOCKET":
			continue
		}
		out = append(out, kv)
	}
	return append(out, extra...)
}

// kinds reduces notifications to their kind, WATCHDOG=1 left out:
// "READY STATUS RELOADING READY STOPPING".
func kinds(all []string) string {
	var out []string
	for _, raw := range all {
		m := systemdtest.ParseNotify(raw)
		switch {
		case m["READY"] == "1":
			out = append(out, "READY")
		case m["RELOADING"] == "1":
			out = append(out, "RELOADING")
		case m["STOPPING"] == "1":
			out = append(out, "STOPPING")
		case m["WATCHDOG"] == "1":
		case m["STATUS"] != "":
			out = append(out, "STATUS")
		default:
			out = append(out, "OTHER("+raw+")")
		}
	}
	return strings.Join(out, " ")
}

// count returns how many raw notifications assign key=value.
func countNotify(all []string, key, value string) int {
	n := 0
	for _, raw := range all {
		if systemdtest.ParseNotify(raw)[key] == value {
			n++
		}
	}
	return n
}

// logLines returns the daemon's text log lines matching every pattern.
func logLines(out string, patterns ...string) []string {
	var res []string
	for l := range strings.SplitSeq(out, "\n") {
		ok := true
		for _, p := range patterns {
			if !regexp.MustCompile(p).MatchString(l) {
				ok = false
				break
			}
		}
		if ok && l != "" {
			res = append(res, l)
		}
	}
	return res
}

// relay is a TCP relay to upstream that counts the connections it
// accepted. When upstream refuses, the accepted connection is closed at
// once, as a client sees a master that is down behind a load balancer.
type relay struct {
	ln       net.Listener
	upstream string
	accepted atomic.Int64
	open     atomic.Int64 // connections accepted and not yet closed
}

func newRelay(t *testing.T, upstream string) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, upstream: upstream}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.accepted.Add(1)
			r.open.Add(1)
			go func() {
				defer r.open.Add(-1)
				up, err := net.DialTimeout("tcp", upstream, 5*time.Second)
				if err != nil {
					c.Close()
					return
				}
				done := make(chan struct{})
				go func() { io.Copy(up, c); up.Close(); close(done) }()
				io.Copy(c, up)
				c.Close()
				<-done
			}()
		}
	}()
	return r
}

func (r *relay) Addr() string { return r.ln.Addr().String() }

// waitLogLines waits (up to 10 s) until the daemon's log has at least want
// lines matching every pattern, and returns how many it has. The log
// travels through a pipe, so it may trail the LMTP reply it accompanies.
func waitLogLines(d interface{ Output() string }, want int, patterns ...string) int {
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := len(logLines(d.Output(), patterns...))
		if n >= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}
