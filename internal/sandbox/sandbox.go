// Package sandbox runs a test binary in Linux namespaces of its own: a
// private network (its own loopback, so fixed addresses and ports never
// collide with another suite), a private mount table (its own /proc and a
// /dev whose /dev/log is the test's, so Cyrus's syslog can be read without
// a system syslog daemon) and a private PID namespace.
//
// The PID namespace is what makes cleanup certain: everything the tests
// start (Cyrus, Postfix, lmtpgate, and whatever those fork) lives in it,
// and when its first process exits the kernel kills every other one. An
// interrupted run, a test timeout or a SIGKILL of `go test` therefore
// leaves nothing running.
//
// A test package calls Main from TestMain. The binary then plays three
// roles, chosen by an environment variable: the outer process re-executes
// itself into new namespaces and waits; the first process inside (PID 1)
// sets up the mounts and the loopback, starts the tests as its child,
// reaps orphans as an init must, and exits with the tests' status; the
// tests run in that child. Orphans must be reaped because Postfix and
// Cyrus daemonise and their children outlive their parents: without a
// reaping PID 1 they would stay zombies, and a zombie still answers
// kill(pid, 0).
//
// It needs root (CAP_SYS_ADMIN) and Linux.
package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// envRole tells a re-executed test binary which role it plays.
const envRole = "LMTPGATE_SANDBOX"

const (
	roleInit  = "init"
	roleTests = "tests"
)

// Inside reports whether this process runs the tests inside the sandbox.
func Inside() bool { return os.Getenv(envRole) == roleTests }

// Available reports why the sandbox cannot be set up here, or nil.
func Available() error {
	if runtime.GOOS != "linux" {
		return errors.New("sandbox: needs Linux namespaces")
	}
	if os.Geteuid() != 0 {
		return errors.New("sandbox: needs root")
	}
	return nil
}

// Main runs the tests (run, which calls m.Run and returns its code)
// inside the sandbox and returns the exit code for os.Exit. When use is
// false (the caller decided the suite will skip, e.g. under -short or
// without the software it needs) or the sandbox is not available, run is
// called in place: the tests then skip or fail through their own checks.
// Flags must have been parsed (flag.Parse) when use is computed from them.
func Main(use bool, run func() int) int {
	switch os.Getenv(envRole) {
	case roleTests:
		return run()
	case roleInit:
		return runInit()
	}
	if !use || Available() != nil {
		return run()
	}
	return runOuter()
}

// runOuter re-executes the test binary as PID 1 of new network, mount and
// PID namespaces, passes signals on and returns its exit code.
func runOuter() int {
	// Pdeathsig belongs to the thread that forks: keep this goroutine on
	// one thread until the child is gone, so that the child is killed
	// only if this process dies.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		return 1
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), envRole+"="+roleInit)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
		Pdeathsig:  syscall.SIGKILL,
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox: start the namespaced test binary:", err)
		return 1
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		return 1
	}
	return 0
}

// runInit is PID 1 of the sandbox.
func runInit() int {
	if err := setup(); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox: set up namespaces:", err)
		return 1
	}
	// The kernel delivers to a namespace's PID 1 only signals it has a
	// handler for; pass the ones that end a test run on to the tests.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		return 1
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), envRole+"="+roleTests)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox: start the tests:", err)
		return 1
	}
	tests := cmd.Process.Pid
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	// Reap every child, ours and the orphans; the tests' own exit ends
	// the sandbox (and with it every process still in it).
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "sandbox: wait:", err)
			return 1
		}
		if pid != tests {
			continue
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ws.ExitStatus()
	}
}

// setup makes the mount table private, mounts a /proc of the new PID
// namespace (tools that find processes by reading /proc must see the PIDs
// this namespace uses), gives the sandbox its own /dev and brings the
// loopback up.
func setup() error {
	// Without this, mounts below would propagate to the host's table
	// (systemd makes / shared).
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if err := privateDev(); err != nil {
		return err
	}
	return loopbackUp()
}

// privateDev replaces /dev by a tmpfs that holds the same entries as the
// host's /dev (device nodes and sub-mounts bound back in, symlinks copied),
// so that a socket created at /dev/log exists only in this sandbox.
func privateDev() error {
	old, err := os.MkdirTemp("", "sandbox-dev-")
	if err != nil {
		return err
	}
	defer os.Remove(old)
	if err := unix.Mount("/dev", old, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind /dev: %w", err)
	}
	defer unix.Unmount(old, unix.MNT_DETACH)
	if err := unix.Mount("tmpfs", "/dev", "tmpfs", unix.MS_NOSUID, "mode=0755"); err != nil {
		return fmt.Errorf("mount a tmpfs on /dev: %w", err)
	}
	ents, err := os.ReadDir(old)
	if err != nil {
		return err
	}
	for _, e := range ents {
		src, dst := filepath.Join(old, e.Name()), filepath.Join("/dev", e.Name())
		if e.Name() == "log" {
			// The host's syslog socket, if any, is exactly what the
			// sandbox replaces.
			continue
		}
		switch t := e.Type(); {
		case t&os.ModeSymlink != 0:
			target, err := os.Readlink(src)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
			continue
		case t.IsDir():
			if err := os.Mkdir(dst, 0o755); err != nil {
				return err
			}
		default:
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			f.Close()
		}
		if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", e.Name(), err)
		}
	}
	return nil
}

// loopbackUp sets IFF_UP on lo; a new network namespace starts with it
// down. Linux routes all of 127.0.0.0/8 to it.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	return nil
}
