package murderlab

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// CyrusBin is where Debian installs the Cyrus server binaries.
const CyrusBin = "/usr/lib/cyrus/bin"

// stopGrace is how long an instance gets to exit after SIGTERM before its
// whole process group is killed.
const stopGrace = 5 * time.Second

// instance is one Cyrus master process and the services it forks.
type instance struct {
	name       string // "master", "backend1", "frontend"
	role       role
	ip         string // where its services listen
	servername string // its imapd.conf servername: ip, or Options.BackendServername's
	dir        string
	conf       string // imapd.conf path
	ports      []int  // TCP ports that answer once the instance is ready

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has been waited for
	waitErr error
	logf    *os.File

	watchdog *exec.Cmd
	wdPipe   io.WriteCloser // held open for the watchdog's lifetime
}

// watchdogScript waits for EOF on stdin, which comes when the process that
// started the lab dies without Close (SIGKILL, a test timeout), and then
// stops the Cyrus process group given as $1. Pdeathsig cannot do this: the
// kernel clears it when Cyrus master switches to user cyrus.
const watchdogScript = `read _ || true
kill -TERM "-$1" 2>/dev/null || exit 0
i=0
while [ $i -lt 50 ]; do kill -0 "-$1" 2>/dev/null || exit 0; sleep 0.1; i=$((i+1)); done
kill -KILL "-$1" 2>/dev/null
exit 0`

// startWatchdog starts a shell in a process group of its own whose stdin is
// a pipe only this process holds. Normal stops kill the watchdog first. A
// failure to start it is not fatal: the lab works, only without the safety
// net.
func startWatchdog(pgid int) (*exec.Cmd, io.WriteCloser) {
	w := exec.Command("/bin/sh", "-c", watchdogScript, "murderlab-watchdog", strconv.Itoa(pgid))
	w.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pipe, err := w.StdinPipe()
	if err != nil {
		return nil, nil
	}
	if err := w.Start(); err != nil {
		return nil, nil
	}
	return w, pipe
}

func (in *instance) logPath() string { return filepath.Join(in.dir, "master.log") }

// start runs Cyrus master in the foreground (-D keeps its stdout/stderr, which
// go to master.log) in a process group of its own, so that stop can signal
// the master and every service it forked at once.
func (in *instance) start(ctx context.Context) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cmd != nil {
		return fmt.Errorf("murderlab: %s already running", in.name)
	}
	lf, err := os.OpenFile(in.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	// A stale pidfile would not stop master, but remove it so that what
	// is there always belongs to the current run.
	_ = os.Remove(filepath.Join(in.dir, "run", "master.pid"))
	cmd := exec.Command(filepath.Join(CyrusBin, "master"),
		"-C", in.conf,
		"-M", filepath.Join(in.dir, "cyrus.conf"),
		"-p", filepath.Join(in.dir, "run", "master.pid"),
		"-D")
	cmd.Dir = in.dir
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.Env = append(os.Environ(), "CYRUS_VERBOSE=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("murderlab: start %s: %w", in.name, err)
	}
	in.cmd, in.logf = cmd, lf
	in.watchdog, in.wdPipe = startWatchdog(cmd.Process.Pid)
	in.done = make(chan struct{})
	go func(done chan struct{}) {
		err := cmd.Wait()
		in.mu.Lock()
		in.waitErr = err
		in.mu.Unlock()
		close(done)
	}(in.done)
	return nil
}

// pid returns the PID of the running Cyrus master (also its process group
// id), or 0.
func (in *instance) pid() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cmd == nil || in.cmd.Process == nil {
		return 0
	}
	return in.cmd.Process.Pid
}

// exited reports whether the master process has ended.
func (in *instance) exited() bool {
	in.mu.Lock()
	done := in.done
	in.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// waitReady polls the instance's TCP ports until all of them accept a
// connection, the master process dies, or ctx ends.
func (in *instance) waitReady(ctx context.Context) error {
	for {
		ok := true
		for _, p := range in.ports {
			if !probeGreeting(ctx, net.JoinHostPort(in.ip, strconv.Itoa(p))) {
				ok = false
				break
			}
		}
		if ok {
			return nil
		}
		if in.exited() {
			return fmt.Errorf("murderlab: %s: Cyrus master exited during startup\n%s", in.name, in.logTail(4096))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("murderlab: %s not ready: %w\n%s", in.name, ctx.Err(), in.logTail(4096))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// probeGreeting reports whether a server at addr sends a greeting line.
// Accepting the connection is not enough: Cyrus master binds and listens
// itself and hands the socket to a service later, and a mupdate replica
// greets only after its first full sync with the master.
func probeGreeting(ctx context.Context, addr string) bool {
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && len(line) > 2
}

// stop sends SIGTERM to the instance's process group (Cyrus master
// terminates its children on SIGTERM; signalling the group also reaches a
// child master has lost track of), waits, and SIGKILLs the group after
// stopGrace. Only the group of the process this instance started is
// signalled. Stopping a stopped instance is a no-op.
func (in *instance) stop() error {
	in.mu.Lock()
	cmd, done, lf, wd, wdp := in.cmd, in.done, in.logf, in.watchdog, in.wdPipe
	in.watchdog, in.wdPipe = nil, nil
	in.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if wd != nil {
		// Only the watchdog this instance started, by its PID.
		_ = wd.Process.Kill()
		_ = wd.Wait()
		wdp.Close()
	}
	pgid := cmd.Process.Pid
	select {
	case <-done:
	default:
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		// A frozen instance (Freeze) would hold SIGTERM until resumed.
		_ = syscall.Kill(-pgid, syscall.SIGCONT)
		select {
		case <-done:
		case <-time.After(stopGrace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
		}
	}
	// Services forked by master are in its group and may outlive it for a
	// moment (or, after SIGKILL of master, forever): wait for the group to
	// be empty, killing what is left.
	err := waitGroupGone(pgid, stopGrace)
	in.mu.Lock()
	in.cmd, in.done, in.logf = nil, nil, nil
	in.mu.Unlock()
	if lf != nil {
		lf.Close()
	}
	return err
}

// waitGroupGone waits until no live process is in group pgid, sending
// SIGKILL to the group once grace has passed. Zombies do not count: an
// orphaned service is reaped by init, which may take its time or, in some
// containers, never happen.
func waitGroupGone(pgid int, grace time.Duration) error {
	deadline := time.Now().Add(grace)
	killed := false
	for {
		if len(GroupProcesses(pgid)) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			if killed {
				return fmt.Errorf("murderlab: process group %d survives SIGKILL", pgid)
			}
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			killed = true
			deadline = time.Now().Add(grace)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// GroupProcesses returns the PIDs of the live (not zombie) processes whose
// process group is pgid, read from /proc.
func GroupProcesses(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The comm field is parenthesised and may hold spaces: the
		// fields after it start after the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		// f[0] state, f[1] ppid, f[2] pgrp.
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, err := strconv.Atoi(f[2]); err == nil && g == pgid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// logTail returns up to n bytes from the end of the instance's captured
// stdout/stderr.
func (in *instance) logTail(n int) string {
	b, err := os.ReadFile(in.logPath())
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}
