package murderlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// deliver sends one message over LMTP to addr, authenticating as the proxy
// identity the way Cyrus's frontend does (AUTH PLAIN, empty authzid), and
// returns the per-recipient error (nil for 250).
func deliver(ctx context.Context, t *testing.T, l *Lab, addr, rcpt, subject, msgid string) error {
	return deliverAuth(ctx, t, l, addr, true, rcpt, subject, msgid)
}

func deliverAuth(ctx context.Context, t *testing.T, l *Lab, addr string, auth bool, rcpt, subject, msgid string) error {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("murderlab-test"); err != nil {
		return err
	}
	cr := l.Creds()
	if !auth {
		// Cyrus's proxy runs with -a and offers no AUTH.
	} else if err := c.Auth(sasl.NewPlainClient("", cr.Proxy, cr.ProxyPassword)); err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	if err := c.Mail("sender@example.org", nil); err != nil {
		return fmt.Errorf("mail: %w", err)
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return fmt.Errorf("rcpt: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "From: sender@example.org\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: %s\r\n\r\nbody of %s\r\n", rcpt, subject, msgid, subject)
	if _, err := w.CloseWithLMTPResponse(); err != nil {
		return fmt.Errorf("data: %w", err)
	}
	return c.Quit()
}

func expectOneMessage(ctx context.Context, t *testing.T, l *Lab, backend int, mailbox, subject, msgid string) {
	t.Helper()
	ms, err := l.Messages(ctx, backend, mailbox)
	if err != nil {
		t.Fatalf("Messages(%d, %q): %v", backend, mailbox, err)
	}
	if len(ms) != 1 {
		t.Fatalf("Messages(%d, %q) = %d messages, want 1: %+v", backend, mailbox, len(ms), ms)
	}
	m := ms[0]
	if m.Subject != subject || m.MessageID != msgid || m.UID == 0 {
		t.Errorf("Messages(%d, %q)[0] = uid %d subject %q id %q, want subject %q id %q", backend, mailbox, m.UID, m.Subject, m.MessageID, subject, msgid)
	}
	if !strings.Contains(string(m.Raw), "body of "+subject) {
		t.Errorf("Messages(%d, %q)[0].Raw lacks the body: %q", backend, mailbox, m.Raw)
	}
}

// groupsGone checks that no live process of any of the groups remains.
func groupsGone(t *testing.T, pgids []int) {
	t.Helper()
	for _, g := range pgids {
		if left := GroupProcesses(g); len(left) > 0 {
			t.Errorf("process group %d still has processes %v", g, left)
		}
		if err := syscall.Kill(g, 0); !errors.Is(err, syscall.ESRCH) {
			// The master itself may linger only as a zombie, which
			// GroupProcesses ignores; Go has reaped ours.
			t.Errorf("Cyrus master %d still exists (kill 0: %v)", g, err)
		}
	}
}

func TestLab(t *testing.T) {
	l := StartTest(t, Options{Log: testWriter{t}, CyrusProxy: true})
	t0 := time.Now()
	t.Logf("lab started in %s", l.StartupDuration())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	if l.BackendServer(1) == l.BackendServer(2) || !strings.HasPrefix(l.BackendLMTPAddr(1), l.BackendServer(1)+":") {
		t.Fatalf("backend addresses: %s %s %s", l.BackendServer(1), l.BackendServer(2), l.BackendLMTPAddr(1))
	}
	if l.CyrusProxyLMTPAddr() == "" {
		t.Fatal("CyrusProxyLMTPAddr empty with CyrusProxy")
	}

	// Mailboxes, and the frontend replica's view of them.
	steps := []struct {
		backend int
		name    string
		acl     map[string]string
		intname string
	}{
		{1, "user/alice", nil, "user.alice"},
		{1, "user/alice/Sub", map[string]string{"anyone": "p"}, "user.alice.Sub"},
		{2, "user/carol", nil, "user.carol"},
		{1, "bb/sales", map[string]string{"anyone": "lrsp"}, "bb.sales"},
	}
	for _, s := range steps {
		if err := l.CreateMailbox(ctx, s.backend, s.name, s.acl); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range steps {
		if err := l.WaitFrontend(ctx, s.intname, true); err != nil {
			t.Fatal(err)
		}
	}
	fm, err := l.FrontendMailboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		if got := fm[s.intname]; got != l.BackendServer(s.backend) {
			t.Errorf("frontend: %s on %q, want %q", s.intname, got, l.BackendServer(s.backend))
		}
	}
	// Creating a mailbox that exists must fail: the IMAP error path works.
	if err := l.CreateMailbox(ctx, 1, "user/alice", nil); err == nil {
		t.Error("creating user/alice twice succeeded")
	}

	// Direct delivery to each backend's lmtpd, read back over IMAP.
	deliveries := []struct {
		backend        int
		rcpt, mailbox  string
		subject, msgid string
	}{
		{1, "alice@example.org", "user/alice", "to alice", "<a1@lab>"},
		{1, "alice+Sub@example.org", "user/alice/Sub", "to alice sub", "<a2@lab>"},
		{2, "carol@example.org", "user/carol", "to carol", "<c1@lab>"},
		{1, "+bb/sales@example.org", "bb/sales", "to sales", "<s1@lab>"},
	}
	for _, d := range deliveries {
		if err := deliver(ctx, t, l, l.BackendLMTPAddr(d.backend), d.rcpt, d.subject, d.msgid); err != nil {
			t.Fatalf("deliver %s to backend%d: %v", d.rcpt, d.backend, err)
		}
	}
	for _, d := range deliveries {
		expectOneMessage(ctx, t, l, d.backend, d.mailbox, d.subject, d.msgid)
	}
	// An unknown user on a backend is a permanent RCPT failure.
	err = deliver(ctx, t, l, l.BackendLMTPAddr(2), "nosuch@example.org", "x", "<x@lab>")
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 {
		t.Errorf("deliver to unknown user: %v, want 550", err)
	}
	// Cyrus's own proxy on the frontend routes by its mailboxes.db.
	if err := deliverAuth(ctx, t, l, l.CyrusProxyLMTPAddr(), false, "carol@example.org", "via proxy", "<c2@lab>"); err != nil {
		t.Errorf("deliver through Cyrus's LMTP proxy: %v", err)
	} else if ms, err := l.Messages(ctx, 2, "user/carol"); err != nil || len(ms) != 2 {
		t.Errorf("carol after proxy delivery: %d messages, %v", len(ms), err)
	}

	t.Logf("step: rename at %s", time.Since(t0).Round(time.Millisecond))
	// Rename and delete reach the frontend.
	if err := l.CreateMailbox(ctx, 2, "shared/support", map[string]string{"anyone": "lrsp"}); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFrontend(ctx, "shared.support", true); err != nil {
		t.Fatal(err)
	}
	if err := l.RenameMailbox(ctx, 2, "shared/support", "shared/helpdesk"); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFrontend(ctx, "shared.helpdesk", true); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFrontend(ctx, "shared.support", false); err != nil {
		t.Fatal(err)
	}
	if err := l.DeleteMailbox(ctx, 2, "shared/helpdesk"); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFrontend(ctx, "shared.helpdesk", false); err != nil {
		t.Fatal(err)
	}

	t.Logf("step: checkpoint at %s", time.Since(t0).Round(time.Millisecond))
	// Checkpoint rewrites the frontend's mailboxes.db under a new inode
	// with the same contents.
	ino := func() uint64 {
		st, err := os.Stat(l.FrontendMailboxesDB())
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	fm, err = l.FrontendMailboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("frontend mailboxes: %v", fm)
	before := ino()
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if after := ino(); after == before {
		t.Errorf("Checkpoint left mailboxes.db at inode %d", before)
	}
	if fm2, err := l.FrontendMailboxes(ctx); err != nil || fmt.Sprint(fm2) != fmt.Sprint(fm) {
		t.Errorf("after Checkpoint: %v (%v), want %v", fm2, err, fm)
	}

	t.Logf("step: backend outage at %s", time.Since(t0).Round(time.Millisecond))
	// Backend outage: its LMTP port goes away and comes back.
	pid1 := l.backend(1).pid()
	if err := l.StopBackend(1); err != nil {
		t.Fatal(err)
	}
	groupsGone(t, []int{pid1})
	if err := deliver(ctx, t, l, l.BackendLMTPAddr(1), "alice@example.org", "down", "<d@lab>"); err == nil {
		t.Error("delivery to a stopped backend succeeded")
	}
	if err := l.StopBackend(1); err != nil {
		t.Errorf("second StopBackend: %v", err)
	}
	if err := l.StartBackend(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := deliver(ctx, t, l, l.BackendLMTPAddr(1), "alice@example.org", "back", "<b@lab>"); err != nil {
		t.Errorf("delivery after backend restart: %v", err)
	}

	t.Logf("step: master outage at %s", time.Since(t0).Round(time.Millisecond))
	// Master outage: MUPDATE goes away, mailbox creation fails, and both
	// come back; the replica resyncs and sees what is created afterwards.
	pidm := l.master.pid()
	if err := l.StopMaster(); err != nil {
		t.Fatal(err)
	}
	groupsGone(t, []int{pidm})
	if c, err := net.DialTimeout("tcp", l.MasterMupdateAddr(), 2*time.Second); err == nil {
		c.Close()
		t.Error("master mupdate still answers after StopMaster")
	}
	if err := l.CreateMailbox(ctx, 2, "user/dave", nil); err == nil {
		t.Error("CreateMailbox with the master down succeeded")
	}
	if err := l.StartMaster(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateMailbox(ctx, 2, "user/dave", nil); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFrontend(ctx, "user.dave", true); err != nil {
		t.Fatal(err)
	}

	t.Logf("step: replica outage at %s", time.Since(t0).Round(time.Millisecond))
	// Replica outage.
	if err := l.StopReplica(); err != nil {
		t.Fatal(err)
	}
	if err := l.StartReplica(ctx); err != nil {
		t.Fatal(err)
	}

	t.Logf("step: close at %s", time.Since(t0).Round(time.Millisecond))
	// Close leaves nothing behind and is idempotent.
	pids := l.PIDs()
	if len(pids) != 2+l.Backends() {
		t.Errorf("PIDs() = %v, want %d", pids, 2+l.Backends())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	groupsGone(t, pids)
	if got := l.PIDs(); len(got) != 0 {
		t.Errorf("PIDs() after Close = %v", got)
	}
}

func TestTwoLabsConcurrently(t *testing.T) {
	RequireCyrus(t)
	var (
		labs [2]*Lab
		wg   sync.WaitGroup
		mu   sync.Mutex
	)
	for i := range labs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// StartTest may call t.Fatal, which must run on the test
			// goroutine: start here and register cleanup on success.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			l, err := Start(ctx, Options{Dir: t.TempDir(), Backends: 1, Log: testWriter{t}})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("lab %d: %v", i, err)
				return
			}
			labs[i] = l
			t.Cleanup(func() { l.Close() })
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if labs[0].MasterMupdateAddr() == labs[1].MasterMupdateAddr() {
		t.Fatalf("both labs on %s", labs[0].MasterMupdateAddr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := labs[0].CreateMailbox(ctx, 1, "user/alice", nil); err != nil {
		t.Fatal(err)
	}
	if err := labs[1].CreateMailbox(ctx, 1, "user/bob", nil); err != nil {
		t.Fatal(err)
	}
	if err := labs[0].WaitFrontend(ctx, "user.alice", true); err != nil {
		t.Fatal(err)
	}
	if err := labs[1].WaitFrontend(ctx, "user.bob", true); err != nil {
		t.Fatal(err)
	}
	for i, l := range labs {
		m, err := l.FrontendMailboxes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(m) != 1 {
			t.Errorf("lab %d frontend has %v, want exactly its own mailbox", i, m)
		}
	}
	var pids []int
	for _, l := range labs {
		pids = append(pids, l.PIDs()...)
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	}
	groupsGone(t, pids)
}

// testWriter sends the lab's progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// A frozen backend accepts TCP connections but never greets; thawed, it
// greets again; and a lab with a frozen instance still closes.
func TestFreezeThaw(t *testing.T) {
	l := StartTest(t, Options{Backends: 1})
	if err := l.Freeze("backend1"); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", l.BackendLMTPAddr(1), 10*time.Second)
	if err != nil {
		t.Fatalf("a frozen backend must still accept TCP: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 64)
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("a frozen backend greeted: %q", buf[:n])
	}
	if err := l.Thaw("backend1"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := c.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "220") {
		t.Fatalf("thawed backend: %q, %v", buf[:n], err)
	}
	if err := l.Freeze("nosuch"); err == nil {
		t.Error("Freeze of an unknown instance succeeded")
	}
	if err := l.Freeze("master"); err != nil {
		t.Fatal(err)
	}
	// Close must not wait for ever on a frozen master (checked by t.Cleanup).
}
