package postfixlab

import (
	"context"
	"flag"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/sandbox"
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(sandbox.Main(!testing.Short() && Available() == nil, m.Run))
}

func requirePostfix(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts Postfix: skipped with -short")
	}
	err := Available()
	if err == nil {
		err = sandbox.Available()
	}
	if err == nil && !sandbox.Inside() {
		err = os.ErrPermission
	}
	if err != nil {
		if os.Getenv("LMTPGATE_REQUIRE_CYRUS") == "1" {
			t.Fatalf("LMTPGATE_REQUIRE_CYRUS=1 but %v", err)
		}
		t.Skip(err)
	}
}

// sink is an LMTP server on loopback that accepts every recipient except
// those starting with "temp" (451) and "perm" (550), and records the
// messages it accepted.
type sink struct {
	mu   sync.Mutex
	msgs map[string]int // recipient → messages
}

func (s *sink) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{s: s}, nil }

type sinkSession struct {
	s     *sink
	rcpts []string
}

func (ss *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	switch {
	case strings.HasPrefix(to, "temp"):
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	case strings.HasPrefix(to, "perm"):
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}
func (ss *sinkSession) Data(r io.Reader) error { return nil }
func (ss *sinkSession) LMTPData(r io.Reader, st smtp.StatusCollector) error {
	io.Copy(io.Discard, r)
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	for _, rc := range ss.rcpts {
		ss.s.msgs[rc]++
		st.SetStatus(rc, nil)
	}
	return nil
}
func (ss *sinkSession) Reset()        { ss.rcpts = nil }
func (ss *sinkSession) Logout() error { return nil }

func (s *sink) count(rcpt string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.msgs[rcpt]
}

// An instance starts, takes mail over SMTP, delivers it over lmtp:inet:
// and lmtp:unix:, logs every outcome the way ParseLog reads it, keeps a
// deferred recipient queued, and leaves no process behind when stopped.
func TestInstance(t *testing.T) {
	requirePostfix(t)
	dir, err := os.MkdirTemp("", "pflab-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	pf, err := user.LookupGroup("postfix")
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(pf.Gid)

	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			var ln net.Listener
			var transport string
			if network == "tcp" {
				ln, err = net.Listen("tcp", "127.0.0.1:0")
				transport = "lmtp:inet:" + ln.Addr().String()
			} else {
				path := filepath.Join(dir, "sink.sock")
				ln, err = net.Listen("unix", path)
				if err == nil {
					os.Chown(path, 0, gid)
					os.Chmod(path, 0o660)
				}
				transport = "lmtp:unix:" + path
			}
			if err != nil {
				t.Fatal(err)
			}
			sk := &sink{msgs: map[string]int{}}
			srv := smtp.NewServer(sk)
			srv.LMTP = true
			srv.Domain = "sink.test"
			go srv.Serve(ln)
			defer srv.Close()

			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			p, err := Start(ctx, Options{Dir: t.TempDir(), Transport: transport})
			if err != nil {
				t.Fatal(err)
			}
			stopped := false
			defer func() {
				if !stopped {
					p.Stop()
				}
			}()
			msg := []byte("Subject: t\r\nMessage-ID: <m1@pflab.test>\r\n\r\nbody\r\n")
			qid, err := p.Submit(ctx, "s@sender.test", []string{"ok@example.org", "temp@example.org", "perm@example.org"}, msg)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"ok@example.org": "sent", "temp@example.org": "deferred", "perm@example.org": "bounced"}
			var evs []Event
			deadline := time.Now().Add(time.Minute)
			for {
				evs, err = p.Events()
				if err != nil {
					t.Fatal(err)
				}
				got := map[string]string{}
				for _, e := range evs {
					if e.QueueID == qid && e.Delivery() {
						got[e.To] = e.Status
					}
				}
				if len(got) == len(want) {
					for r, s := range want {
						if got[r] != s {
							t.Errorf("%s: %s, want %s", r, got[r], s)
						}
					}
					break
				}
				if time.Now().After(deadline) {
					log, _ := p.Log()
					t.Fatalf("outcomes %v after a minute:\n%s", got, log)
				}
				time.Sleep(100 * time.Millisecond)
			}
			sawID := false
			for _, e := range evs {
				if e.QueueID == qid && e.MessageID == "<m1@pflab.test>" {
					sawID = true
				}
			}
			if !sawID {
				t.Errorf("no message-id line for %s", qid)
			}
			if n := sk.count("ok@example.org"); n != 1 {
				t.Errorf("the sink holds %d copies for ok@, want 1", n)
			}
			q, err := p.Queued(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(q) != 1 || q[0] != qid {
				t.Errorf("queued %v, want [%s] (the deferred recipient)", q, qid)
			}
			if err := p.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			pgid := p.cmd.Process.Pid
			stopped = true
			if err := p.Stop(); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(-pgid, 0); err != syscall.ESRCH {
				t.Errorf("after Stop, process group %d: %v, want ESRCH", pgid, err)
			}
		})
	}
}
