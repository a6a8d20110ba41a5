package murderlab

import (
	"fmt"
	"syscall"
)

// Instances that Freeze and Thaw accept: "master", "frontend" (the replica,
// the IMAP proxy and Cyrus's LMTP proxy), or "backend1", "backend2", ...

// Freeze stops every process of the named instance with SIGSTOP: its
// listening sockets stay open, so the kernel still completes TCP
// handshakes, but nothing greets or answers. This is how a hung server
// looks from outside (a full disk, a deadlock, a paused VM), as opposed to
// one that is down and refuses connections.
func (l *Lab) Freeze(name string) error { return l.signalGroup(name, syscall.SIGSTOP) }

// Thaw resumes an instance stopped by Freeze.
func (l *Lab) Thaw(name string) error { return l.signalGroup(name, syscall.SIGCONT) }

func (l *Lab) signalGroup(name string, sig syscall.Signal) error {
	for _, in := range l.all() {
		if in.name != name {
			continue
		}
		pid := in.pid()
		if pid == 0 || in.exited() {
			return fmt.Errorf("murderlab: %s is not running", name)
		}
		// The master is the leader of a process group of its own that
		// holds every service it forked; nothing else is in it.
		if err := syscall.Kill(-pid, sig); err != nil {
			return fmt.Errorf("murderlab: signal %s: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("murderlab: no instance %q", name)
}
