// Package postfixlab runs a private Postfix instance for lmtpgate's tests:
// Debian's postfix package, started from a configuration directory of its
// own (main.cf, master.cf, queue, data directory and a maillog_file), never
// the system instance. Mail is submitted over SMTP to the instance's own
// smtpd on loopback and goes to one LMTP transport (lmtp:inet: or
// lmtp:unix:), as on a Cyrus frontend; the log is parsed into delivery
// events (ParseLog) so that a test can reconcile what Postfix was told with
// what the mailboxes hold.
//
// The instance runs in the foreground (postfix start-fg) as a child of the
// test in a process group of its own, and Stop ends it by the PID in its
// pid file. Nothing here survives the test process by design of the
// caller: run it inside internal/sandbox, whose PID namespace takes every
// process with it when the tests end.
//
// Every daemon runs unchrooted: Debian's master.cf chroots the LMTP client
// into the queue directory, where a unix socket path of the test would not
// exist.
package postfixlab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

// Where Debian's postfix package installs its programs.
const (
	CommandDir = "/usr/sbin"
	DaemonDir  = "/usr/lib/postfix/sbin"
)

// stopGrace is how long Postfix gets to exit after SIGTERM before its
// process group is killed.
const stopGrace = 10 * time.Second

// Available reports whether Postfix can run here: the programs, the
// postfix user and postdrop group the package creates, and root (master
// starts as root and drops privileges per service). The error names what
// is missing.
func Available() error {
	var missing []string
	for _, p := range []string{filepath.Join(CommandDir, "postfix"), filepath.Join(CommandDir, "postqueue"),
		filepath.Join(CommandDir, "smtp-source"), filepath.Join(DaemonDir, "master")} {
		if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	if _, err := user.Lookup("postfix"); err != nil {
		missing = append(missing, "user postfix")
	}
	if _, err := user.LookupGroup("postdrop"); err != nil {
		missing = append(missing, "group postdrop")
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root privileges")
	}
	if len(missing) > 0 {
		return fmt.Errorf("postfixlab: Postfix unavailable (package postfix), missing: %s", strings.Join(missing, ", "))
	}
	return nil
}

// Options configure an instance.
type Options struct {
	// Dir is required: the instance's configuration, queue, data and log
	// live under it. It must be empty or missing.
	Dir string
	// Transport is the virtual_transport every recipient domain goes to,
	// e.g. "lmtp:inet:127.0.0.1:2424" or "lmtp:unix:/run/lmtpgate/lmtp.sock".
	Transport string
	// Domains are the virtual_mailbox_domains; nil means example.org.
	Domains []string
	// DiscardDomain receives the instance's bounces and is discarded, so
	// that a test's sender address is never delivered anywhere; "" means
	// sender.test.
	DiscardDomain string
	// Settings are extra main.cf parameters, over the defaults (see
	// Defaults).
	Settings map[string]string
}

// Defaults are the main.cf parameters a test instance gets besides the
// paths: short retry intervals so a fault test sees its deferred mail
// retried within seconds, every recipient of a message to one LMTP
// destination in one transaction (as production Postfix does), long queue
// IDs (unique for the life of the instance), and nothing resolved through
// DNS.
var Defaults = map[string]string{
	"queue_run_delay":                  "5s",
	"minimal_backoff_time":             "5s",
	"maximal_backoff_time":             "10s",
	"lmtp_destination_recipient_limit": "50",
	"enable_long_queue_ids":            "yes",
	"lmtp_host_lookup":                 "native",
	"smtp_dns_support_level":           "disabled",
	"smtpd_peername_lookup":            "no",
	"smtputf8_enable":                  "no",
	"notify_classes":                   "",
}

// Postfix is a running instance.
type Postfix struct {
	dir, conf, queue, logFile string
	smtpAddr                  string
	cmd                       *exec.Cmd
	out                       *os.File
	done                      chan struct{}
}

// Start writes the instance's configuration and runs it, and returns once
// its smtpd greets.
func Start(ctx context.Context, opt Options) (*Postfix, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if opt.Dir == "" || opt.Transport == "" {
		return nil, errors.New("postfixlab: Options.Dir and Options.Transport are required")
	}
	dir, err := filepath.Abs(opt.Dir)
	if err != nil {
		return nil, err
	}
	p := &Postfix{dir: dir, conf: filepath.Join(dir, "conf"), queue: filepath.Join(dir, "queue"),
		logFile: filepath.Join(dir, "log", "postfix.log")}
	if err := p.build(opt); err != nil {
		return nil, err
	}
	if err := p.start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Postfix) build(opt Options) error {
	pu, err := user.Lookup("postfix")
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(pu.Uid)
	for _, d := range []string{p.dir, p.conf, p.queue, filepath.Dir(p.logFile)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	// Postfix's daemons run as user postfix and reach the queue through
	// this path; master wants its data directory owned by postfix.
	if err := testkit.MakeSearchable(p.dir, "postfix"); err != nil {
		return err
	}
	data := filepath.Join(p.dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	if err := os.Chown(data, uid, -1); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	p.smtpAddr = ln.Addr().String()
	ln.Close()

	domains := opt.Domains
	if domains == nil {
		domains = []string{"example.org"}
	}
	discard := opt.DiscardDomain
	if discard == "" {
		discard = "sender.test"
	}
	set := map[string]string{
		"compatibility_level":             "3.6",
		"queue_directory":                 p.queue,
		"data_directory":                  data,
		"command_directory":               CommandDir,
		"daemon_directory":                DaemonDir,
		"meta_directory":                  "/etc/postfix",
		"shlib_directory":                 "/usr/lib/postfix",
		"mail_owner":                      "postfix",
		"setgid_group":                    "postdrop",
		"myhostname":                      "mta.test",
		"mydomain":                        "mta.test",
		"myorigin":                        "mta.test",
		"mydestination":                   "",
		"local_recipient_maps":            "",
		"alias_maps":                      "",
		"alias_database":                  "",
		"relay_domains":                   "",
		"inet_interfaces":                 "127.0.0.1",
		"inet_protocols":                  "ipv4",
		"mynetworks":                      "127.0.0.0/8",
		"virtual_mailbox_domains":         strings.Join(domains, " "),
		"virtual_transport":               opt.Transport,
		"transport_maps":                  "inline:{" + discard + "=discard:}",
		"smtpd_reject_unlisted_recipient": "no",
		"maillog_file":                    p.logFile,
		"maillog_file_prefixes":           p.dir,
		"biff":                            "no",
	}
	for k, v := range Defaults {
		set[k] = v
	}
	for k, v := range opt.Settings {
		set[k] = v
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var mc strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&mc, "%s = %s\n", k, set[k])
	}
	if err := os.WriteFile(filepath.Join(p.conf, "main.cf"), []byte(mc.String()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(p.conf, "master.cf"), []byte(masterCf(p.smtpAddr)), 0o644)
}

// masterCf is the services a delivering instance needs, none chrooted.
func masterCf(smtpAddr string) string {
	return smtpAddr + ` inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
smtp      unix  -       -       n       -       -       smtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`
}

func (p *Postfix) start(ctx context.Context) error {
	out, err := os.OpenFile(filepath.Join(p.dir, "postfix.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(CommandDir, "postfix"), "-c", p.conf, "start-fg")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("postfixlab: %w", err)
	}
	p.cmd, p.out, p.done = cmd, out, make(chan struct{})
	go func() { cmd.Wait(); close(p.done) }()
	for {
		if greets(p.smtpAddr) {
			return nil
		}
		select {
		case <-p.done:
			p.Stop()
			return fmt.Errorf("postfixlab: postfix exited at start:\n%s\n%s", p.output(), p.tail(4096))
		case <-ctx.Done():
			p.Stop()
			return fmt.Errorf("postfixlab: smtpd never greeted on %s: %w\n%s", p.smtpAddr, ctx.Err(), p.tail(4096))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func greets(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "220")
}

// MasterPID is the PID of Postfix's master, from its pid file.
func (p *Postfix) MasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(p.queue, "pid", "master.pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Stop ends the instance: SIGTERM to its master by PID, then, if anything
// of it is left after stopGrace, SIGKILL to the process group this
// instance started. Safe to call twice.
func (p *Postfix) Stop() error {
	if p.cmd == nil {
		return nil
	}
	defer p.out.Close()
	pgid := p.cmd.Process.Pid
	p.cmd = nil
	select {
	case <-p.done:
	default:
		if pid, err := p.MasterPID(); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		} else {
			_ = syscall.Kill(pgid, syscall.SIGTERM)
		}
		select {
		case <-p.done:
		case <-time.After(stopGrace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
	}
	// Postfix's daemons leave when their master is gone; give them the
	// grace too. A process group with no member left answers ESRCH.
	deadline := time.Now().Add(stopGrace)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			return fmt.Errorf("postfixlab: processes of group %d outlived the master; killed", pgid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func (p *Postfix) output() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "postfix.out"))
	return string(b)
}

// tail returns up to n bytes from the end of the instance's log.
func (p *Postfix) tail(n int) string {
	b, _ := os.ReadFile(p.logFile)
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// Log returns the instance's maillog_file as it is now.
func (p *Postfix) Log() (string, error) {
	b, err := os.ReadFile(p.logFile)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	return string(b), err
}

// Events parses the log as it is now.
func (p *Postfix) Events() ([]Event, error) {
	s, err := p.Log()
	if err != nil {
		return nil, err
	}
	return ParseLog(strings.NewReader(s)), nil
}

var queuedAs = regexp.MustCompile(`queued as ([0-9A-Za-z]+)`)

// Submit hands one message to the instance's smtpd and returns the queue
// ID Postfix gave it. msg is the message as the test wants it stored
// (headers, blank line, body; CRLF line ends).
func (p *Postfix) Submit(ctx context.Context, from string, rcpts []string, msg []byte) (string, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", p.smtpAddr)
	if err != nil {
		return "", err
	}
	// A bound against a hang only.
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("inject.test"); err != nil {
		return "", fmt.Errorf("postfixlab: EHLO: %w", err)
	}
	if err := c.Mail(from, nil); err != nil {
		return "", fmt.Errorf("postfixlab: MAIL: %w", err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return "", fmt.Errorf("postfixlab: RCPT %s: %w", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", fmt.Errorf("postfixlab: DATA: %w", err)
	}
	if _, err := w.Write(msg); err != nil {
		return "", fmt.Errorf("postfixlab: DATA: %w", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", fmt.Errorf("postfixlab: end of DATA: %w", err)
	}
	m := queuedAs.FindStringSubmatch(resp.StatusText)
	if m == nil {
		return "", fmt.Errorf("postfixlab: no queue ID in %q", resp.StatusText)
	}
	_ = c.Quit()
	return m[1], nil
}

// Flush asks Postfix to retry every deferred message now (postqueue -f),
// including destinations it marked as dead.
func (p *Postfix) Flush(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, filepath.Join(CommandDir, "postqueue"), "-c", p.conf, "-f").CombinedOutput()
	if err != nil {
		return fmt.Errorf("postfixlab: postqueue -f: %v: %s", err, out)
	}
	return nil
}

// Queued returns the queue IDs of the messages still in the queue.
func (p *Postfix) Queued(ctx context.Context) ([]string, error) {
	out, err := exec.CommandContext(ctx, filepath.Join(CommandDir, "postqueue"), "-c", p.conf, "-j").Output()
	if err != nil {
		return nil, fmt.Errorf("postfixlab: postqueue -j: %w", err)
	}
	var ids []string
	for _, ln := range strings.Split(string(out), "\n") {
		// One JSON object a line; only the queue ID is needed here.
		if _, v, ok := strings.Cut(ln, `"queue_id": "`); ok {
			if id, _, ok := strings.Cut(v, `"`); ok {
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}
