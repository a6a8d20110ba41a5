package postfix

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
	"github.com/lmtpgate/lmtpgate/internal/postfixlab"
	"github.com/lmtpgate/lmtpgate/internal/sandbox"
	"github.com/lmtpgate/lmtpgate/internal/testbin"
)

// One murder serves the whole package: it takes about 12 seconds to start,
// and every test leaves it as it found it (thawed, every instance up).
var shared struct {
	once   sync.Once
	lab    *murderlab.Lab
	syslog *sandbox.Syslog
	dir    string
	err    error
	// uniqueIDs maps each mailbox of mailboxes to its Cyrus uniqueid,
	// the name Cyrus's duplicate suppression logs it under.
	uniqueIDs map[string]string
}

// The mailboxes every test may deliver to, and where they live.
var mailboxes = map[string]struct {
	backend int
	mailbox string
}{
	"alice@example.org": {1, "user/alice"},
	"bob@example.org":   {1, "user/bob"},
	"carol@example.org": {2, "user/carol"},
	"dave@example.org":  {2, "user/dave"},
}

// nosuch has no mailbox anywhere: lmtpgate must refuse it with 550 5.1.1.
const nosuch = "nosuch@example.org"

// lab returns the package's murder, starting it (and the /dev/log
// receiver that collects Cyrus's syslog) on first use.
func lab(t *testing.T) (*murderlab.Lab, *sandbox.Syslog) {
	t.Helper()
	require(t)
	shared.once.Do(func() {
		shared.syslog, shared.err = sandbox.ListenSyslog()
		if shared.err != nil {
			return
		}
		shared.dir, shared.err = os.MkdirTemp("", "lmtpgate-postfix-murder-")
		if shared.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		shared.lab, shared.err = murderlab.Start(ctx, murderlab.Options{Dir: shared.dir})
		if shared.err != nil {
			return
		}
		for _, mb := range []struct {
			backend int
			name    string
		}{{1, "user/alice"}, {1, "user/bob"}, {2, "user/carol"}, {2, "user/dave"}} {
			if shared.err = shared.lab.CreateMailbox(ctx, mb.backend, mb.name, nil); shared.err != nil {
				return
			}
		}
		for _, n := range []string{"user.alice", "user.bob", "user.carol", "user.dave"} {
			if shared.err = shared.lab.WaitFrontend(ctx, n, true); shared.err != nil {
				return
			}
		}
		shared.uniqueIDs, shared.err = uniqueIDs(ctx, shared.lab)
	})
	if shared.err != nil {
		t.Fatalf("murder: %v", shared.err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for name, s := range shared.lab.LogTail() {
				if s != "" {
					t.Logf("murderlab %s output:\n%s", name, s)
				}
			}
		}
	})
	return shared.lab, shared.syslog
}

// uniqueIDs reads each backend's mailboxes.db (ctl_mboxlist -d, JSON) for
// the uniqueid of the mailboxes the tests use.
func uniqueIDs(ctx context.Context, l *murderlab.Lab) (map[string]string, error) {
	out := map[string]string{}
	for i := 1; i <= l.Backends(); i++ {
		b, err := exec.CommandContext(ctx, filepath.Join(murderlab.CyrusBin, "ctl_mboxlist"), "-d", "-C", l.BackendImapdConf(i)).Output()
		if err != nil {
			return nil, fmt.Errorf("ctl_mboxlist -d on backend %d: %w", i, err)
		}
		var m map[string]struct {
			UniqueID string `json:"uniqueid"`
		}
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("ctl_mboxlist -d on backend %d: %w", i, err)
		}
		for _, mb := range mailboxes {
			if mb.backend != i {
				continue
			}
			intname := strings.ReplaceAll(mb.mailbox, "/", ".")
			if e, ok := m[intname]; ok && e.UniqueID != "" {
				out[mb.mailbox] = e.UniqueID
			}
		}
	}
	if len(out) != len(mailboxes) {
		return nil, fmt.Errorf("uniqueids found for %d of %d mailboxes: %v", len(out), len(mailboxes), out)
	}
	return out, nil
}

func closeShared() {
	if shared.lab != nil {
		if err := shared.lab.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "murderlab close:", err)
		}
	}
	if shared.syslog != nil {
		shared.syslog.Close()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}

// gateConf is lmtpgate's configuration for one test, on top of what
// every test shares (the lab's sources and backend credentials, short
// backoffs). Each slice holds lines under that section.
type gateConf struct {
	Order    string // lookup.order; "" means all three sources
	Lookup   []string
	Backends []string
	LMTP     []string
}

// Timeouts every test's lmtpgate uses unless it overrides them: short,
// so that a fault costs seconds, not minutes.
const (
	connectTimeout = 3 * time.Second
	commandTimeout = 5 * time.Second
)

func (g gateConf) yaml(l *murderlab.Lab) string {
	c := l.Creds()
	order := g.Order
	if order == "" {
		order = "[mailboxes-db, local-mupdate, master-mupdate]"
	}
	ind := func(lines []string) string {
		var b strings.Builder
		for _, ln := range lines {
			b.WriteString("  " + ln + "\n")
		}
		return b.String()
	}
	backends := []string{
		"authname: " + c.Proxy,
		"password: " + c.ProxyPassword,
	}
	has := func(lines []string, key string) bool {
		for _, ln := range lines {
			if strings.HasPrefix(ln, key+":") {
				return true
			}
		}
		return false
	}
	for _, kv := range [][2]string{{"connect_timeout", connectTimeout.String()}, {"command_timeout", commandTimeout.String()}, {"txn_timeout", "30s"}} {
		if !has(g.Backends, kv[0]) {
			backends = append(backends, kv[0]+": "+kv[1])
		}
	}
	backends = append(backends, g.Backends...)
	lookup := []string{
		"order: " + order,
		fmt.Sprintf("local_mupdate: {address: %q, authname: %s, password: %s, backoff_min: 200ms, backoff_max: 1s}", l.ReplicaMupdateAddr(), c.Mupdate, c.MupdatePassword),
		fmt.Sprintf("master_mupdate: {address: %q, authname: %s, password: %s, backoff_min: 200ms, backoff_max: 1s}", l.MasterMupdateAddr(), c.Mupdate, c.MupdatePassword),
		"cache: {positive_ttl: 2s, negative_ttl: 200ms}",
	}
	lookup = append(lookup, g.Lookup...)
	out := fmt.Sprintf("hostname: lmtpgate.test\nimapd_conf: %s\nlookup:\n%sbackends:\n%s", l.FrontendImapdConf(), ind(lookup), ind(backends))
	if len(g.LMTP) > 0 {
		out += "lmtp:\n" + ind(g.LMTP)
	}
	return out
}

// gate is one test's lmtpgate, listening on TCP and on a unix socket that
// Postfix's LMTP client (user postfix) may connect to.
type gate struct {
	*testbin.Daemon
	conf gateConf
}

func startGate(t *testing.T, l *murderlab.Lab, conf gateConf) *gate {
	t.Helper()
	// sun_path holds 108 bytes: keep the socket out of the long
	// t.TempDir() names.
	dir, err := os.MkdirTemp("", "lg-pf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The daemon would only exit; `lmtpgate check` names the key it
	// refuses, for the test's log and the fault matrix.
	check := filepath.Join(dir, "check.yaml")
	if err := os.WriteFile(check, []byte(conf.yaml(l)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(testbin.Build(t), "check", "-c", check).CombinedOutput(); err != nil {
		fatalf(t, "lmtpgate check refuses the test's configuration (%v): %s", err, strings.TrimSpace(string(out)))
	}
	g := &gate{conf: conf}
	g.Daemon = testbin.StartOpts(t, testbin.Options{Config: conf.yaml(l), Unix: filepath.Join(dir, "lmtp.sock")})
	g.socketForPostfix(t)
	return g
}

// socketForPostfix gives the unix socket to group postfix. lmtpgate makes
// it 0660 for its own user and group (root here); in production the
// service's group (mail) is one Postfix's LMTP client is a member of.
func (g *gate) socketForPostfix(t *testing.T) {
	t.Helper()
	grp, err := user.LookupGroup("postfix")
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(grp.Gid)
	if err := os.Chown(g.Unix, 0, gid); err != nil {
		t.Fatal(err)
	}
}

// restart starts lmtpgate again after Kill, on the same addresses.
func (g *gate) restart(t *testing.T) {
	t.Helper()
	g.Restart(t)
	g.socketForPostfix(t)
}

// reconfigure rewrites lmtpgate's configuration file (the listen and
// state lines testbin wrote stay) without reloading.
func (g *gate) reconfigure(t *testing.T, l *murderlab.Lab, conf gateConf) {
	t.Helper()
	b, err := os.ReadFile(g.Config)
	if err != nil {
		t.Fatal(err)
	}
	head, _, ok := strings.Cut(string(b), "hostname: ")
	if !ok {
		t.Fatalf("no hostname line in %s", g.Config)
	}
	tmp := g.Config + ".tmp"
	if err := os.WriteFile(tmp, []byte(head+conf.yaml(l)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, g.Config); err != nil {
		t.Fatal(err)
	}
	g.conf = conf
}

// transport is how Postfix reaches lmtpgate.
type transport string

const (
	overTCP  transport = "inet"
	overUnix transport = "unix"
)

func (g *gate) transport(tr transport) string {
	if tr == overUnix {
		return "lmtp:unix:" + g.Unix
	}
	return "lmtp:inet:" + g.LMTP
}

// startPostfix runs a private Postfix that delivers example.org through
// lmtpgate over tr.
func startPostfix(t *testing.T, g *gate, tr transport, settings map[string]string) *postfixlab.Postfix {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A moderate concurrency, so that no test but the one about it
	// depends on how many transactions lmtpgate lets a backend have at
	// once by default.
	set := map[string]string{"lmtp_destination_concurrency_limit": "5"}
	for k, v := range settings {
		set[k] = v
	}
	p, err := postfixlab.Start(ctx, postfixlab.Options{Dir: t.TempDir(), Transport: g.transport(tr), Settings: set})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if s, _ := p.Log(); s != "" {
				if len(s) > 16<<10 {
					s = "…" + s[len(s)-16<<10:]
				}
				t.Logf("postfix log:\n%s", s)
			}
		}
		if err := p.Stop(); err != nil {
			t.Errorf("postfix stop: %v", err)
		}
	})
	return p
}

// ctxT is a context bounded generously against hangs, never part of an
// assertion.
func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
