package systemdtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// activationShim sets LISTEN_PID to the shell's own pid and then execs the
// real binary. exec(2) keeps the pid, so the binary sees LISTEN_PID equal to
// getpid(), which sd_listen_fds(3) (and go-systemd's activation package)
// insists on before trusting LISTEN_FDS. os/exec cannot do this itself: the
// child's pid is only known after fork, and the environment is fixed before.
// POSIX sh keeps descriptors 3 and up open across exec, so ExtraFiles reach
// the binary at the same numbers.
const activationShim = `LISTEN_PID=$$ exec "$0" "$@"`

// StartActivated starts cmd the way systemd starts a socket-activated
// service: files become descriptors 3, 4, … in order, LISTEN_FDS is their
// count, LISTEN_FDNAMES their names joined by ':' (systemd's default name
// "unknown" is used for all if names is empty) and LISTEN_PID the pid of the
// started binary. Any LISTEN_* already in cmd.Env (or, if it is nil, in this
// process's environment) is replaced.
//
// cmd must not have been started and must not use ExtraFiles. It is run
// through /bin/sh (see activationShim), so cmd.Path and cmd.Args stay what
// the binary sees except argv[0], which becomes cmd.Path. The caller should
// Wait for cmd; if the process is still running when the test ends it is
// killed. The caller may close its copies of files once StartActivated
// returns.
func StartActivated(t testing.TB, cmd *exec.Cmd, files []*os.File, names []string) error {
	t.Helper()
	if cmd.Err != nil {
		return cmd.Err
	}
	if cmd.Process != nil {
		return errors.New("systemdtest: StartActivated: command already started")
	}
	if len(cmd.ExtraFiles) > 0 {
		return errors.New("systemdtest: StartActivated: cmd.ExtraFiles would shift the activated descriptors")
	}
	if len(files) == 0 {
		return errors.New("systemdtest: StartActivated: no files to pass")
	}
	if len(names) == 0 {
		names = make([]string, len(files))
		for i := range names {
			names[i] = "unknown"
		}
	}
	if len(names) != len(files) {
		return fmt.Errorf("systemdtest: StartActivated: %d names for %d files", len(names), len(files))
	}
	for _, n := range names {
		// systemd refuses names that would break the ':' list (fdname_is_valid).
		if n == "" || len(n) > 255 || strings.ContainsAny(n, ":\n\r") {
			return fmt.Errorf("systemdtest: StartActivated: invalid fd name %q", n)
		}
	}

	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	clean := make([]string, 0, len(env)+2)
	for _, kv := range env {
		if strings.HasPrefix(kv, "LISTEN_PID=") || strings.HasPrefix(kv, "LISTEN_FDS=") ||
			strings.HasPrefix(kv, "LISTEN_FDNAMES=") {
			continue
		}
		clean = append(clean, kv)
	}
	clean = append(clean,
		"LISTEN_FDS="+strconv.Itoa(len(files)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"))
	cmd.Env = clean

	args := []string{"/bin/sh", "-c", activationShim, cmd.Path}
	if len(cmd.Args) > 1 {
		args = append(args, cmd.Args[1:]...)
	}
	cmd.Path = "/bin/sh"
	cmd.Args = args
	cmd.ExtraFiles = files

	if err := cmd.Start(); err != nil {
		return fmt.Errorf("systemdtest: StartActivated: %w", err)
	}
	proc := cmd.Process
	t.Cleanup(func() {
		// Kill is safe after the caller's Wait: os.Process then knows the
		// process is gone and signals nothing.
		_ = proc.Kill()
	})
	return nil
}
