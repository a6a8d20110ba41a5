package journal

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Probe holds what ShouldUse looks at, so that the decision can be tested
// without systemd. Nil functions use the real environment.
type Probe struct {
	Getenv func(string) string
	// StderrID returns stderr's device and inode numbers.
	StderrID func() (dev, ino uint64, err error)
	// StderrIsTerminal reports whether stderr is a terminal.
	StderrIsTerminal func() bool
	// SocketExists reports whether journald's socket exists at path.
	SocketExists func(path string) bool
	// Socket is the journald socket path; default DefaultSocket.
	Socket string
}

// ShouldUse reports whether this process runs under systemd with journald,
// so logging in the native protocol is preferable to text on stderr.
func ShouldUse() bool { return Probe{}.ShouldUse() }

// ShouldUse decides as systemd.io/JOURNAL_NATIVE_PROTOCOL ("automatic
// protocol upgrading") describes:
//
//   - If JOURNAL_STREAM is set, systemd connected stderr to the journal; it
//     is used only if stderr's device:inode still matches, because a
//     mismatch means the operator redirected stderr (lmtpgate 2>file, a
//     wrapper script) and wants the output there.
//   - Otherwise (no JOURNAL_STREAM, e.g. StandardError=null or a
//     non-systemd supervisor on a systemd host) it is used if journald's
//     socket exists and stderr is not a terminal: someone running lmtpgate
//     by hand should see its log.
func (p Probe) ShouldUse() bool {
	if p.getenv("JOURNAL_STREAM") != "" {
		return p.StderrIsStream()
	}
	socket := p.Socket
	if socket == "" {
		socket = DefaultSocket
	}
	exists := p.SocketExists
	if exists == nil {
		exists = realSocketExists
	}
	isTerm := p.StderrIsTerminal
	if isTerm == nil {
		isTerm = realStderrIsTerminal
	}
	return exists(socket) && !isTerm()
}

// StderrIsStream reports whether stderr is the journal stream systemd
// connected it to: JOURNAL_STREAM is set and names stderr's device and
// inode. Only then does journald read a "<N>" prefix on a line as its
// priority (sd-daemon(3)).
func StderrIsStream() bool { return Probe{}.StderrIsStream() }

// StderrIsStream is the JOURNAL_STREAM half of ShouldUse; see there.
func (p Probe) StderrIsStream() bool {
	var dev, ino uint64
	if _, err := fmt.Sscanf(p.getenv("JOURNAL_STREAM"), "%d:%d", &dev, &ino); err != nil {
		return false
	}
	stderrID := p.StderrID
	if stderrID == nil {
		stderrID = realStderrID
	}
	d, i, err := stderrID()
	return err == nil && d == dev && i == ino
}

func (p Probe) getenv(key string) string {
	if p.Getenv == nil {
		return os.Getenv(key)
	}
	return p.Getenv(key)
}

func realStderrID() (uint64, uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(2, &st); err != nil {
		return 0, 0, err
	}
	return st.Dev, st.Ino, nil
}

func realStderrIsTerminal() bool {
	_, err := unix.IoctlGetTermios(2, unix.TCGETS)
	return err == nil
}

func realSocketExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}
