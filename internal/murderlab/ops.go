package murderlab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/murderlab/imapc"
)

// MasterMupdateAddr is the master's MUPDATE address, "127.A.B.1:3905".
func (l *Lab) MasterMupdateAddr() string {
	return net.JoinHostPort(l.ip(1), strconv.Itoa(portMasterMupdate))
}

// ReplicaMupdateAddr is the frontend replica's MUPDATE address,
// "127.A.B.1:13905". It lets only admins authenticate (Creds Admin or
// Mupdate).
func (l *Lab) ReplicaMupdateAddr() string {
	return net.JoinHostPort(l.ip(1), strconv.Itoa(portReplicaMupdate))
}

// Backends is the number of backends.
func (l *Lab) Backends() int { return len(l.backends) }

func (l *Lab) backend(i int) *instance {
	if i < 1 || i > len(l.backends) {
		panic(fmt.Sprintf("murderlab: backend %d out of range 1..%d", i, len(l.backends)))
	}
	return l.backends[i-1]
}

// BackendServer is backend i's servername (1-based), as mailboxes.db and
// MUPDATE show it: "127.A.B.(1+i)", or what Options.BackendServername
// returned. It panics if i is out of range.
func (l *Lab) BackendServer(i int) string { return l.backend(i).servername }

// BackendLMTPAddr is backend i's lmtpd, "127.A.B.(1+i):2003", where it
// listens (with Options.BackendServername, not the address its servername
// names). It requires AUTH (PLAIN as Creds().Proxy or Admin) before MAIL.
func (l *Lab) BackendLMTPAddr(i int) string {
	return net.JoinHostPort(l.backend(i).ip, strconv.Itoa(portBackendLMTP))
}

// BackendIMAPAddr is backend i's imapd, "127.A.B.(1+i):143".
func (l *Lab) BackendIMAPAddr(i int) string {
	return net.JoinHostPort(l.backend(i).ip, strconv.Itoa(portBackendIMAP))
}

// CyrusProxyLMTPAddr is Cyrus's own LMTP proxy on the frontend,
// "127.A.B.1:10024" (no AUTH needed), or "" unless Options.CyrusProxy.
func (l *Lab) CyrusProxyLMTPAddr() string {
	if !l.opt.CyrusProxy {
		return ""
	}
	return net.JoinHostPort(l.ip(1), strconv.Itoa(portCyrusProxyLMTP))
}

// FrontendImapdConf is the path of the frontend's imapd.conf.
func (l *Lab) FrontendImapdConf() string { return l.frontend.conf }

// FrontendMailboxesDB is the path of the frontend's mailboxes.db (twoskip),
// which its mupdate replica keeps in sync with the master.
func (l *Lab) FrontendMailboxesDB() string {
	return filepath.Join(l.frontend.dir, "conf", "mailboxes.db")
}

// MasterMailboxesDB is the path of the master's mailboxes.db.
func (l *Lab) MasterMailboxesDB() string {
	return filepath.Join(l.master.dir, "conf", "mailboxes.db")
}

// BackendImapdConf is the path of backend i's imapd.conf.
func (l *Lab) BackendImapdConf(i int) string { return l.backend(i).conf }

// Creds returns the lab's identities.
func (l *Lab) Creds() Creds {
	return Creds{
		Admin: adminUser, AdminPassword: adminPass,
		Proxy: proxyUser, ProxyPassword: proxyPass,
		Mupdate: mupdateUser, MupdatePassword: mupdatePass,
	}
}

// PIDs returns the PIDs of the running Cyrus master processes of the lab
// (each also the id of a process group holding its services).
func (l *Lab) PIDs() []int {
	var out []int
	for _, in := range l.all() {
		if p := in.pid(); p != 0 {
			out = append(out, p)
		}
	}
	return out
}

func (l *Lab) all() []*instance {
	out := []*instance{l.master}
	out = append(out, l.backends...)
	return append(out, l.frontend)
}

// LogTail returns the end (up to 8 KiB) of what each Cyrus master wrote to
// stdout/stderr, by instance name ("master", "backend1", "frontend"). Cyrus
// sends its real log to syslog; see the package comment.
func (l *Lab) LogTail() map[string]string {
	out := map[string]string{}
	for _, in := range l.all() {
		out[in.name] = in.logTail(8192)
	}
	return out
}

// adminIMAP logs in to backend i as admin. Admins use the standard
// namespace even though altnamespace is on, so "user/alice" and "bb/sales"
// are the names to use.
func (l *Lab) adminIMAP(ctx context.Context, backend int) (*imapc.Client, error) {
	c, err := imapc.Dial(ctx, l.BackendIMAPAddr(backend))
	if err != nil {
		return nil, fmt.Errorf("murderlab: backend%d imap: %w", backend, err)
	}
	if err := c.Login(ctx, adminUser, adminPass); err != nil {
		c.Close()
		return nil, fmt.Errorf("murderlab: backend%d imap: %w", backend, err)
	}
	return c, nil
}

// CreateMailbox creates a mailbox on backend i as admin, then sets each
// identifier → rights of acl (e.g. {"anyone": "p"} so that user+Sub
// delivery files into Sub, {"anyone": "lrsp"} for a shared folder that takes
// mail). name is in IMAP external form: "user/alice", "user/alice/Sub",
// "bb/sales". The backend pushes the change to the master; use WaitFrontend
// to wait for the frontend's copy.
func (l *Lab) CreateMailbox(ctx context.Context, backend int, name string, acl map[string]string) error {
	c, err := l.adminIMAP(ctx, backend)
	if err != nil {
		return err
	}
	defer c.Logout(ctx)
	if err := c.Create(ctx, name); err != nil {
		return fmt.Errorf("murderlab: backend%d: %w", backend, err)
	}
	for id, rights := range acl {
		if err := c.SetACL(ctx, name, id, rights); err != nil {
			return fmt.Errorf("murderlab: backend%d: %w", backend, err)
		}
	}
	return nil
}

// DeleteMailbox deletes a mailbox on backend i as admin. Deleting a user's
// INBOX ("user/alice") deletes the user's whole hierarchy. For a mailbox
// where the admin lacks the x right (shared folders) it grants admin "lrx"
// first.
func (l *Lab) DeleteMailbox(ctx context.Context, backend int, name string) error {
	c, err := l.adminIMAP(ctx, backend)
	if err != nil {
		return err
	}
	defer c.Logout(ctx)
	if err := c.Delete(ctx, name); err != nil {
		// Cyrus lets an admin delete a user's mailboxes but needs the x
		// right on others (shared folders): grant it and try again.
		var se *imapc.StatusError
		if !errors.As(err, &se) || se.Status != "NO" {
			return fmt.Errorf("murderlab: backend%d: %w", backend, err)
		}
		if err := c.SetACL(ctx, name, adminUser, "lrx"); err != nil {
			return fmt.Errorf("murderlab: backend%d: %w", backend, err)
		}
		if err := c.Delete(ctx, name); err != nil {
			return fmt.Errorf("murderlab: backend%d: %w", backend, err)
		}
	}
	return nil
}

// RenameMailbox renames a mailbox on backend i as admin.
func (l *Lab) RenameMailbox(ctx context.Context, backend int, from, to string) error {
	c, err := l.adminIMAP(ctx, backend)
	if err != nil {
		return err
	}
	defer c.Logout(ctx)
	if err := c.Rename(ctx, from, to); err != nil {
		return fmt.Errorf("murderlab: backend%d: %w", backend, err)
	}
	return nil
}

// MoveMailbox moves a mailbox from backend from to backend to with Cyrus's
// XFER, as admin on the source backend; a user's INBOX ("user/alice")
// takes the user's whole hierarchy along. The source deactivates the
// mailbox at the master (it becomes a reservation), copies it to the
// destination and activates it there. Cyrus reports a failure to move a
// user as an untagged NO before a tagged OK, so that is an error too.
//
// Cyrus 3.6 as Debian builds it (without libuuid) makes mailbox uniqueids
// from rand(), and the backends of a lab produce the same sequence: the
// first mailbox created on backend1 has the uniqueid of the first one
// created on backend2. XFER refuses to move a mailbox whose uniqueid the
// destination already holds ("Mailbox has been moved to another server"),
// so move mailboxes to a backend that has none created the same way, e.g.
// one that is still empty. Moving a shared (non-user) mailbox trips an
// assertion in Cyrus 3.6.1's imapd; move users.
func (l *Lab) MoveMailbox(ctx context.Context, from int, name string, to int) error {
	c, err := l.adminIMAP(ctx, from)
	if err != nil {
		return err
	}
	defer c.Logout(ctx)
	rs, err := c.Do(ctx, "XFER", imapc.Quote(name), imapc.Quote(l.BackendServer(to)))
	if err != nil {
		return fmt.Errorf("murderlab: backend%d: %w", from, err)
	}
	for _, r := range rs {
		if r.Status == "NO" || r.Status == "BAD" {
			return fmt.Errorf("murderlab: backend%d: XFER %s: %s %s", from, name, r.Status, r.Text)
		}
	}
	return nil
}

// FrontendMailboxes returns the frontend's mailboxes.db as Cyrus itself
// reads it (ctl_mboxlist -d): internal name → server string.
func (l *Lab) FrontendMailboxes(ctx context.Context) (map[string]string, error) {
	return dumpMailboxes(ctx, l.frontend.conf)
}

// MasterMailboxes is FrontendMailboxes for the master.
func (l *Lab) MasterMailboxes(ctx context.Context) (map[string]string, error) {
	return dumpMailboxes(ctx, l.master.conf)
}

func dumpMailboxes(ctx context.Context, conf string) (map[string]string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(CyrusBin, "ctl_mboxlist"), "-d", "-C", conf)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("murderlab: ctl_mboxlist -d: %v: %s", err, stderr.String())
	}
	var m map[string]struct {
		Server string `json:"server"`
		MBType string `json:"mbtype"`
	}
	if len(bytes.TrimSpace(out)) == 0 {
		return map[string]string{}, nil
	}
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, fmt.Errorf("murderlab: ctl_mboxlist -d output: %w", err)
	}
	res := make(map[string]string, len(m))
	for name, e := range m {
		// Deleted and intermediate entries do not exist for delivery.
		if strings.ContainsAny(e.MBType, "di") {
			continue
		}
		res[name] = e.Server
	}
	return res, nil
}

// WaitFrontend polls the frontend's mailboxes.db (through ctl_mboxlist -d)
// until it has (present) or lacks (!present) the internal name, e.g.
// "user.alice" or "bb.sales", or ctx ends.
func (l *Lab) WaitFrontend(ctx context.Context, intname string, present bool) error {
	for {
		m, err := l.FrontendMailboxes(ctx)
		if err == nil {
			if _, ok := m[intname]; ok == present {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("murderlab: frontend never showed %q present=%v: %w (last error %v)", intname, present, ctx.Err(), err)
		case <-time.After(30 * time.Millisecond):
		}
	}
}

// Message is one message read back from a backend.
type Message struct {
	UID       uint32
	Subject   string
	MessageID string
	Raw       []byte
}

// Messages reads every message of mailbox on backend i (without setting
// \Seen). mailbox is in the admin's external form ("user/alice",
// "user/alice/Sub", "bb/sales"). A user's mailbox is read as that user,
// authorised through the proxy identity (admins have no read right on user
// mailboxes, and the proxy is in proxyservers); in the alternate namespace
// the user sees user/alice as INBOX and user/alice/Sub as Sub. Shared
// mailboxes are read as admin, which needs the r right through anyone.
func (l *Lab) Messages(ctx context.Context, backend int, mailbox string) ([]Message, error) {
	c, err := imapc.Dial(ctx, l.BackendIMAPAddr(backend))
	if err != nil {
		return nil, fmt.Errorf("murderlab: backend%d imap: %w", backend, err)
	}
	defer c.Logout(ctx)
	sel := mailbox
	if rest, ok := strings.CutPrefix(mailbox, "user/"); ok {
		owner, sub, _ := strings.Cut(rest, "/")
		if err := c.AuthenticatePlain(ctx, owner, proxyUser, proxyPass); err != nil {
			return nil, fmt.Errorf("murderlab: backend%d imap as %s: %w", backend, owner, err)
		}
		sel = "INBOX"
		if sub != "" {
			sel = sub
		}
	} else if err := c.Login(ctx, adminUser, adminPass); err != nil {
		return nil, fmt.Errorf("murderlab: backend%d imap: %w", backend, err)
	}
	if _, err := c.Select(ctx, sel); err != nil {
		return nil, fmt.Errorf("murderlab: backend%d: %w", backend, err)
	}
	ms, err := c.FetchAll(ctx, true)
	if err != nil {
		return nil, fmt.Errorf("murderlab: backend%d: %w", backend, err)
	}
	out := make([]Message, 0, len(ms))
	for _, m := range ms {
		msg := Message{UID: m.UID, Raw: m.Raw}
		if h, err := mail.ReadMessage(bytes.NewReader(append(m.Header, '\r', '\n'))); err == nil {
			msg.Subject = h.Header.Get("Subject")
			msg.MessageID = h.Header.Get("Message-Id")
		}
		out = append(out, msg)
	}
	return out, nil
}

// StopMaster stops the MUPDATE master. Delivery through the frontend goes on
// from its mailboxes.db; mailbox creation fails on the backends meanwhile.
func (l *Lab) StopMaster() error { return l.master.stop() }

// StartMaster starts the master again and waits until it greets. Its
// mailboxes.db survived, so it knows every mailbox; the replica reconnects
// after its mupdate_retry_delay (2 s here) and resyncs.
func (l *Lab) StartMaster(ctx context.Context) error { return l.startInstance(ctx, l.master) }

// StopBackend stops backend i (imapd and lmtpd).
func (l *Lab) StopBackend(i int) error { return l.backend(i).stop() }

// StartBackend starts backend i again; its START pushes its mailbox list to
// the master, so the master must be running or this fails.
func (l *Lab) StartBackend(ctx context.Context, i int) error {
	return l.startInstance(ctx, l.backend(i))
}

// StopReplica stops the whole frontend instance: its mupdate replica, its
// IMAP proxy and Cyrus's LMTP proxy. Its mailboxes.db stays and goes stale.
func (l *Lab) StopReplica() error { return l.frontend.stop() }

// StartReplica starts the frontend instance again and waits until the
// replica has resynced with the master (it greets only after that), so the
// master must be running.
func (l *Lab) StartReplica(ctx context.Context) error { return l.startInstance(ctx, l.frontend) }

// Checkpoint makes Cyrus rewrite the frontend's mailboxes.db the way a
// twoskip repack does: a new file mailboxes.db.NEW with only the live
// records, renamed over mailboxes.db (a new inode). It runs
// `cyr_dbtool -C <frontend imapd.conf> <mailboxes.db> twoskip repack`;
// `ctl_cyrusdb -c` only archives a copy and leaves the file in place.
func (l *Lab) Checkpoint(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, filepath.Join(CyrusBin, "cyr_dbtool"),
		"-C", l.frontend.conf, l.FrontendMailboxesDB(), "twoskip", "repack")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("murderlab: cyr_dbtool repack: %v: %s", err, out)
	}
	return nil
}
