// Package testbin builds the lmtpgate binary once per test process and
// runs it as a daemon for black-box tests: the integration suite against a
// real Cyrus murder, the systemd-behaviour suite and the package test all
// exercise the same binary an operator installs.
package testbin

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

var (
	once    sync.Once
	binPath string
	binErr  error
)

// Build compiles ./cmd/lmtpgate (once per test process) and returns the
// binary's path.
func Build(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		dir, err := os.MkdirTemp("", "lmtpgate-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "lmtpgate")
		cmd := exec.Command("go", "build", "-o", binPath, "-ldflags", "-X main.version=test", "./cmd/lmtpgate")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// Daemon is a running `lmtpgate serve`.
type Daemon struct {
	Cmd     *exec.Cmd
	Dir     string
	Config  string // config file path
	LMTP    string // TCP address it listens on
	Unix    string // unix socket it listens on too, or ""
	Control string // control socket path
	out     *testkit.SyncBuffer
	env     []string
	done    chan struct{}
	err     error
}

// FreePort returns a free TCP address on host.
func FreePort(t testing.TB, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Start writes config (YAML, without listen/control_socket/state_dir, which
// Start fills in) into a temp dir and runs `lmtpgate serve` on a free
// loopback port. It waits until the LMTP port answers. The daemon is
// stopped with SIGTERM when the test ends.
func Start(t testing.TB, config string, env ...string) *Daemon {
	t.Helper()
	return StartOpts(t, Options{Config: config, Env: env})
}

// Options are what StartOpts takes.
type Options struct {
	// Config is YAML without listen, control_socket and state_dir.
	Config string
	// Env is added to the daemon's environment.
	Env []string
	// Unix, when set, is the path of a unix socket the daemon listens on
	// besides its TCP port (Daemon.Unix). The caller chooses it because a
	// socket path must be short (sun_path) and reachable by the client.
	Unix string
}

// StartOpts is Start with a unix listener or an environment.
func StartOpts(t testing.TB, o Options) *Daemon {
	t.Helper()
	bin := Build(t)
	dir := t.TempDir()
	d := &Daemon{Dir: dir, LMTP: FreePort(t, "127.0.0.1"), Unix: o.Unix, Control: filepath.Join(dir, "control.sock"), out: &testkit.SyncBuffer{}, env: o.Env}
	d.Config = filepath.Join(dir, "lmtpgate.yaml")
	listen := fmt.Sprintf("%q", "tcp:"+d.LMTP)
	if o.Unix != "" {
		listen += fmt.Sprintf(", %q", "unix:"+o.Unix)
	}
	full := fmt.Sprintf("listen: [%s]\ncontrol_socket: %s\nstate_dir: %s\n%s", listen, d.Control, dir, o.Config)
	if err := os.WriteFile(d.Config, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Stop(t)
		if t.Failed() {
			t.Logf("lmtpgate output:\n%s", d.Output())
		}
	})
	d.run(t, bin)
	return d
}

// run starts the daemon process and waits until it listens.
func (d *Daemon) run(t testing.TB, bin string) {
	t.Helper()
	d.Cmd = exec.Command(bin, "serve", "-c", d.Config)
	d.Cmd.Env = append(os.Environ(), d.env...)
	d.Cmd.Stdout, d.Cmd.Stderr = d.out, d.out
	d.done = make(chan struct{})
	if err := d.Cmd.Start(); err != nil {
		d.Cmd = nil
		t.Fatal(err)
	}
	cmd, done := d.Cmd, d.done
	go func() { d.err = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", d.LMTP, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			t.Fatalf("lmtpgate exited at start: %v\n%s", d.err, d.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("lmtpgate did not listen on %s:\n%s", d.LMTP, d.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The control socket comes up right after the listeners.
	for time.Now().Before(deadline) {
		if _, err := os.Stat(d.Control); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Kill ends the daemon with SIGKILL, as a crash or the OOM killer would,
// and waits until it is gone.
func (d *Daemon) Kill() {
	d.Cmd.Process.Kill()
	<-d.done
}

// Restart starts the daemon again with the same configuration, addresses
// and state directory after it has exited (Kill, a crash); its output
// continues in the same buffer.
func (d *Daemon) Restart(t testing.TB) {
	t.Helper()
	select {
	case <-d.done:
	default:
		t.Fatal("testbin: Restart of a daemon that is still running")
	}
	d.run(t, Build(t))
}

// Output returns everything the daemon logged so far.
func (d *Daemon) Output() string { return d.out.String() }

// WaitLog waits until the daemon's log contains substr.
func (d *Daemon) WaitLog(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(d.Output(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("daemon never logged %q:\n%s", substr, d.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Run runs `lmtpgate ARGS... -c <config>` and returns its combined output
// and exit code.
func (d *Daemon) Run(t testing.TB, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := append([]string{args[0], "-c", d.Config}, args[1:]...)
	cmd := exec.CommandContext(ctx, Build(t), full...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// Signal sends sig to the daemon.
func (d *Daemon) Signal(sig syscall.Signal) error { return d.Cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits for the daemon to exit (SIGKILL after 60 s).
func (d *Daemon) Stop(t testing.TB) error {
	if d.Cmd == nil || d.Cmd.Process == nil {
		return nil
	}
	select {
	case <-d.done:
		return d.err
	default:
	}
	d.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(60 * time.Second):
		d.Cmd.Process.Kill()
		<-d.done
		t.Errorf("lmtpgate did not stop on SIGTERM")
	}
	return d.err
}

// Done is closed when the daemon has exited.
func (d *Daemon) Done() <-chan struct{} { return d.done }
