// Package murderlab stands up a real Cyrus IMAP 3.6 murder on loopback for
// lmtpgate's integration tests, `make demo` and `make bench`: a MUPDATE
// master, N backends (imapd, lmtpd requiring AUTH) and a frontend (mupdate
// replica, imapd proxy and optionally Cyrus's own LMTP proxy, lmtpd -a).
//
// Each lab gets a loopback /24 of its own, 127.A.B.0/24 with A and B random,
// so several labs (one per test package under `go test ./...`) run at once:
//
//	127.A.B.1:3905   master mupdate -m             servername 127.A.B.1
//	127.A.B.(1+i)    backend i: imapd :143, lmtpd :2003 (AUTH required)
//	127.A.B.1:13905  frontend mupdate replica      servername 127.A.B.1
//	127.A.B.1:10143  frontend imapd (IMAP proxy)
//	127.A.B.1:10024  frontend lmtpd -a (only with Options.CyrusProxy)
//
// The servername of each instance is its IP address, so the server strings
// in mailboxes.db are "127.A.B.2" and so on. Cyrus's frontend resolves the
// service name "lmtp" to find a backend's LMTP port, and Debian's
// /etc/services has no such entry: Start appends "lmtp 2003/tcp" to
// /etc/services when no lmtp line is there (once, idempotent).
//
// All state lives under Options.Dir: one directory per instance (imapd.conf,
// cyrus.conf, conf/ = configdirectory, spool/, run/ with sockets, pidfile,
// and master.log holding the Cyrus master's stdout/stderr) and one shared
// sasldb. Cyrus master runs as user cyrus (group mail), so Start makes the
// instance directories cyrus-owned and adds the search (x) permission for
// others to Options.Dir and to those of its ancestors that lack it; this
// needs root. Cyrus logs to syslog only: with no syslog daemon its messages
// are lost, and LogTail returns only what master wrote to stdout/stderr.
// To see Cyrus's syslog, run a datagram receiver on /dev/log yourself; each
// instance logs under its own name ("backend2/lmtp[PID]").
//
// Every Cyrus master is a child process of the test in a process group of
// its own; Close stops each group (SIGTERM, SIGKILL after a grace period)
// and never signals anything it did not start.
package murderlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

// Options configure a lab.
type Options struct {
	// Dir is required; the instances live under it. It must not hold an
	// earlier lab. The caller owns it (t.TempDir() or a demo directory);
	// Close removes nothing.
	Dir string
	// Backends is the number of backends; 0 means 2.
	Backends int
	// CyrusProxy also runs Cyrus's own LMTP proxy (lmtpd -a) on the
	// frontend at :10024, for comparison with lmtpgate.
	CyrusProxy bool
	// Log receives progress lines; nil discards them.
	Log io.Writer

	// BackendServername, if not nil, is called for each backend while
	// the lab is built, before anything starts, with the backend's
	// number (1-based) and its own address ("127.A.B.2", where its imapd
	// and lmtpd listen). It returns the servername the backend gets in
	// place of that address: the name its mailboxes.db entries, MUPDATE
	// and the frontend's serverlist show, its SASL realm, and so the host
	// Cyrus's frontend connects to on the imap and lmtp ports (143, and
	// 2003 from /etc/services). The caller makes that name reach the
	// backend, e.g. with relays on NAME:143 and NAME:2003 to the
	// backend's address; that is how lmtpbench puts the backends across
	// an emulated network. Each name must differ from the others.
	BackendServername func(i int, addr string) (string, error)
	// FrontendMupdate, if not nil, is called once while the lab is built
	// with the master's MUPDATE address ("127.A.B.1:3905") and returns
	// the address the frontend (its mupdate replica, and so its
	// mailboxes.db, and Cyrus's LMTP proxy) uses for the master instead,
	// such as a relay to it. The backends still reach the master
	// directly.
	FrontendMupdate func(addr string) (string, error)
}

// Creds are the lab's SASL identities. All exist in every instance's realm.
type Creds struct {
	// Admin is in admins on every instance: creates mailboxes on the
	// backends and may authenticate to both MUPDATE servers.
	Admin, AdminPassword string
	// Proxy is the frontend's LMTP/IMAP identity toward backends, in the
	// backends' lmtp_admins and proxyservers.
	Proxy, ProxyPassword string
	// Mupdate is the identity backends and frontend use toward the master;
	// it is an admin on the master and on the frontend (so it may also
	// authenticate to the replica), not on the backends.
	Mupdate, MupdatePassword string
}

// Lab is a running murder. Its methods are safe for concurrent use, except
// that Stop*/Start* of one instance must not race each other.
type Lab struct {
	opt      Options
	net      [2]int // A, B of 127.A.B.0/24
	sasldb   string
	master   *instance
	backends []*instance
	frontend *instance

	closeOnce sync.Once
	closeErr  error
	startDur  time.Duration
}

// Available reports whether the Cyrus binaries and saslpasswd2 the lab needs
// are installed, and whether we run as root (Cyrus master must start as root
// to switch to user cyrus). The error names everything missing.
func Available() error {
	var missing []string
	for _, b := range []string{"master", "mupdate", "imapd", "lmtpd", "ctl_mboxlist", "cyr_dbtool"} {
		if st, err := os.Stat(filepath.Join(CyrusBin, b)); err != nil || st.Mode()&0o111 == 0 {
			missing = append(missing, filepath.Join(CyrusBin, b))
		}
	}
	if _, err := saslpasswd2(); err != nil {
		missing = append(missing, "saslpasswd2 (package sasl2-bin)")
	}
	if _, err := user.Lookup("cyrus"); err != nil {
		missing = append(missing, "user cyrus")
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root privileges")
	}
	if len(missing) > 0 {
		return fmt.Errorf("murderlab: Cyrus lab unavailable, missing: %s", strings.Join(missing, ", "))
	}
	return nil
}

func saslpasswd2() (string, error) {
	for _, p := range []string{"/usr/sbin/saslpasswd2", "/usr/bin/saslpasswd2"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath("saslpasswd2")
}

func (l *Lab) logf(format string, args ...any) {
	if l.opt.Log != nil {
		fmt.Fprintf(l.opt.Log, "murderlab: "+format+"\n", args...)
	}
}

func (l *Lab) ip(host int) string { return fmt.Sprintf("127.%d.%d.%d", l.net[0], l.net[1], host) }

// Start builds and starts a lab: master, then the backends (whose START
// pushes their mailbox list to the master, so the master must be up), then
// the frontend, whose replica serves only after its first full sync from the
// master. It returns when every instance answers on its ports. On error
// everything started is stopped again.
func Start(ctx context.Context, opt Options) (*Lab, error) {
	t0 := time.Now()
	if opt.Dir == "" {
		return nil, errors.New("murderlab: Options.Dir is required")
	}
	if opt.Backends == 0 {
		opt.Backends = 2
	}
	if opt.Backends < 1 || opt.Backends > 200 {
		return nil, fmt.Errorf("murderlab: Backends = %d out of range 1..200", opt.Backends)
	}
	dir, err := filepath.Abs(opt.Dir)
	if err != nil {
		return nil, err
	}
	opt.Dir = dir
	// Reusing a lab directory would mix a new random net with mailboxes.db
	// entries naming the old one's servers.
	if _, err := os.Stat(filepath.Join(dir, "master", "imapd.conf")); err == nil {
		return nil, fmt.Errorf("murderlab: %s already holds a lab; use an empty directory", dir)
	}
	if err := Available(); err != nil {
		return nil, err
	}
	if err := ensureServicesLMTP(); err != nil {
		return nil, err
	}
	l := &Lab{opt: opt}
	if l.net, err = reserveNet(opt.Backends); err != nil {
		return nil, err
	}
	if err := l.build(); err != nil {
		releaseNet(l.net)
		return nil, err
	}
	l.logf("net 127.%d.%d.0/24 in %s", l.net[0], l.net[1], dir)
	if err := l.startAll(ctx); err != nil {
		l.Close()
		return nil, err
	}
	l.startDur = time.Since(t0)
	l.logf("murder up in %s", l.startDur.Round(time.Millisecond))
	return l, nil
}

// StartupDuration is how long Start took.
func (l *Lab) StartupDuration() time.Duration { return l.startDur }

func (l *Lab) startAll(ctx context.Context) error {
	if err := l.startInstance(ctx, l.master); err != nil {
		return err
	}
	// Backends are independent of each other: start them together.
	errs := make([]error, len(l.backends))
	var wg sync.WaitGroup
	for i, b := range l.backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.startInstance(ctx, b)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return l.startInstance(ctx, l.frontend)
}

func (l *Lab) startInstance(ctx context.Context, in *instance) error {
	t := time.Now()
	if err := in.start(ctx); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := in.waitReady(wctx); err != nil {
		_ = in.stop()
		return err
	}
	l.logf("%s ready (pid %d) in %s", in.name, in.pid(), time.Since(t).Round(time.Millisecond))
	return nil
}

// build writes the configuration of every instance and the sasldb.
func (l *Lab) build() error {
	cy, err := user.Lookup("cyrus")
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(cy.Uid)
	gid, _ := strconv.Atoi(cy.Gid)
	if err := os.MkdirAll(l.opt.Dir, 0o755); err != nil {
		return err
	}
	if err := testkit.MakeSearchable(l.opt.Dir, "cyrus"); err != nil {
		return err
	}
	l.sasldb = filepath.Join(l.opt.Dir, "sasldb2")
	masterAddr := net.JoinHostPort(l.ip(1), strconv.Itoa(portMasterMupdate))
	frontendMaster := masterAddr
	if l.opt.FrontendMupdate != nil {
		if frontendMaster, err = l.opt.FrontendMupdate(masterAddr); err != nil {
			return fmt.Errorf("murderlab: FrontendMupdate: %w", err)
		}
	}
	// The backends' servernames: their addresses unless the caller names
	// them otherwise.
	serverlist := make([]string, l.opt.Backends)
	seen := map[string]bool{l.ip(1): true}
	for i := 1; i <= l.opt.Backends; i++ {
		serverlist[i-1] = l.ip(1 + i)
		if l.opt.BackendServername != nil {
			if serverlist[i-1], err = l.opt.BackendServername(i, l.ip(1+i)); err != nil {
				return fmt.Errorf("murderlab: BackendServername(%d): %w", i, err)
			}
		}
		if seen[serverlist[i-1]] || strings.ContainsAny(serverlist[i-1], " \t!:/") || serverlist[i-1] == "" {
			return fmt.Errorf("murderlab: backend %d: servername %q is empty, taken or not a host name", i, serverlist[i-1])
		}
		seen[serverlist[i-1]] = true
	}

	mk := func(name string, r role, ip, servername string, ports []int) (*instance, error) {
		in := &instance{name: name, role: r, ip: ip, servername: servername, dir: filepath.Join(l.opt.Dir, name), ports: ports}
		in.conf = filepath.Join(in.dir, "imapd.conf")
		// The configdirectory layout Debian's mkimap makes: Cyrus creates
		// few of these itself (mupdate dies binding socket/mupdate.target
		// when socket/ is missing).
		for _, sub := range []string{"", "conf", "conf/db", "conf/socket", "conf/proc", "conf/log",
			"conf/msg", "conf/user", "conf/quota", "conf/ptclient", "conf/sync", "conf/lock",
			"spool", "run", "sieve"} {
			p := filepath.Join(in.dir, sub)
			if err := os.MkdirAll(p, 0o750); err != nil {
				return nil, err
			}
			if err := os.Chown(p, uid, gid); err != nil {
				return nil, err
			}
		}
		master := masterAddr
		if r == roleFrontend {
			master = frontendMaster
		}
		files := map[string]string{
			"imapd.conf": imapdConf(r, in.dir, servername, l.sasldb, master, serverlist),
			"cyrus.conf": cyrusConf(r, ip, in.conf, l.opt.CyrusProxy),
		}
		for n, body := range files {
			p := filepath.Join(in.dir, n)
			if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
				return nil, err
			}
		}
		return in, nil
	}
	if l.master, err = mk("master", roleMaster, l.ip(1), l.ip(1), []int{portMasterMupdate}); err != nil {
		return err
	}
	for i := 1; i <= l.opt.Backends; i++ {
		b, err := mk(fmt.Sprintf("backend%d", i), roleBackend, l.ip(1+i), serverlist[i-1], []int{portBackendIMAP, portBackendLMTP})
		if err != nil {
			return err
		}
		l.backends = append(l.backends, b)
	}
	fports := []int{portReplicaMupdate, portFrontendIMAP}
	if l.opt.CyrusProxy {
		fports = append(fports, portCyrusProxyLMTP)
	}
	if l.frontend, err = mk("frontend", roleFrontend, l.ip(1), l.ip(1), fports); err != nil {
		return err
	}

	// One sasldb for all; each user once per realm (the servername).
	realms := append([]string{l.ip(1)}, serverlist...)
	users := map[string]string{adminUser: adminPass, proxyUser: proxyPass, mupdateUser: mupdatePass}
	for _, u := range TestUsers {
		users[u] = userPassword
	}
	sp, err := saslpasswd2()
	if err != nil {
		return err
	}
	for _, realm := range realms {
		for u, pw := range users {
			cmd := exec.Command(sp, "-p", "-c", "-f", l.sasldb, "-u", realm, u)
			cmd.Stdin = strings.NewReader(pw)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("murderlab: saslpasswd2 %s@%s: %v: %s", u, realm, err, out)
			}
		}
	}
	if err := os.Chown(l.sasldb, 0, gid); err != nil {
		return err
	}
	return os.Chmod(l.sasldb, 0o640)
}

// servicesMu serialises the /etc/services check within this process; an
// flock on the file serialises it between test binaries.
var servicesMu sync.Mutex

// ensureServicesLMTP appends "lmtp 2003/tcp" to /etc/services when no lmtp
// entry is there: Cyrus's frontend proxy looks up the "lmtp" service for the
// port of a backend whose server string has none, and Debian lists none.
func ensureServicesLMTP() error {
	servicesMu.Lock()
	defer servicesMu.Unlock()
	f, err := os.OpenFile("/etc/services", os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("murderlab: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	b, err := os.ReadFile("/etc/services")
	if err != nil {
		return err
	}
	if hasLMTPService(string(b)) {
		return nil
	}
	line := "lmtp\t\t2003/tcp\t\t\t# Cyrus LMTP (added for lmtpgate's murder lab)\n"
	if len(b) > 0 && b[len(b)-1] != '\n' {
		line = "\n" + line
	}
	_, err = f.WriteString(line)
	return err
}

// hasLMTPService reports whether an /etc/services text has a tcp entry for
// the name (or alias) lmtp.
func hasLMTPService(s string) bool {
	for _, ln := range strings.Split(s, "\n") {
		if i := strings.IndexByte(ln, '#'); i >= 0 {
			ln = ln[:i]
		}
		f := strings.Fields(ln)
		if len(f) < 2 || !strings.HasSuffix(f[1], "/tcp") {
			continue
		}
		for j, n := range f {
			if j != 1 && n == "lmtp" {
				return true
			}
		}
	}
	return false
}

var (
	netsMu   sync.Mutex
	netsUsed = map[[2]int]bool{}
)

// reserveNet picks a random 127.A.B.0/24 (never 127.0.x.x) whose addresses
// the lab will use are free to bind, and remembers it for this process so
// two labs of one test binary never share a net. Between processes, the
// bind probe and the 65 000 choices make a clash unlikely; a clash shows as
// a startup failure naming the address.
func reserveNet(backends int) ([2]int, error) {
	netsMu.Lock()
	defer netsMu.Unlock()
	for try := 0; try < 50; try++ {
		n := [2]int{1 + rand.IntN(254), rand.IntN(256)}
		if netsUsed[n] {
			continue
		}
		probe := []string{fmt.Sprintf("127.%d.%d.1:%d", n[0], n[1], portMasterMupdate),
			fmt.Sprintf("127.%d.%d.1:%d", n[0], n[1], portReplicaMupdate),
			fmt.Sprintf("127.%d.%d.%d:%d", n[0], n[1], 1+backends, portBackendLMTP)}
		free := true
		for _, a := range probe {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			netsUsed[n] = true
			return n, nil
		}
	}
	return [2]int{}, errors.New("murderlab: found no free loopback /24")
}

func releaseNet(n [2]int) {
	netsMu.Lock()
	delete(netsUsed, n)
	netsMu.Unlock()
}

// Close stops the frontend and the backends (in parallel), then the master,
// and waits until no process of theirs is left. It removes no file. Safe to
// call more than once and from t.Cleanup.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		var others []*instance
		if l.frontend != nil {
			others = append(others, l.frontend)
		}
		others = append(others, l.backends...)
		errs := make([]error, len(others)+1)
		var wg sync.WaitGroup
		for i, in := range others {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = in.stop()
			}()
		}
		wg.Wait()
		if l.master != nil {
			errs[len(others)] = l.master.stop()
		}
		releaseNet(l.net)
		l.closeErr = errors.Join(errs...)
	})
	return l.closeErr
}
