// Package sdnotify tells the service manager about the daemon's lifecycle
// through the sd_notify protocol (sd_notify(3)): one datagram per state
// change, sent to the unix socket named by $NOTIFY_SOCKET, made of
// newline-separated KEY=value assignments.
//
// lmtpgate ships as Type=notify because the target systemd (252, Debian 12
// and RHEL 9) predates Type=notify-reload (253). Reloading still sends
// RELOADING=1 with MONOTONIC_USEC so that a unit switched to notify-reload on a
// newer host works unchanged; systemd 252 accepts and ignores the extra keys.
//
// Every method is a no-op returning nil when the process was not started by a
// service manager (NOTIFY_SOCKET unset), so callers never need to check.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// sendTimeout bounds one notification. The manager reads its notify socket
// from its event loop; if it is wedged, a full socket buffer must not stall
// the daemon's main loop (which also feeds the watchdog) forever.
const sendTimeout = 5 * time.Second

// Notifier sends sd_notify messages to the socket captured at construction.
// It is safe for concurrent use: each message is sent on its own short-lived
// socket, as libsystemd's sd_notify does.
type Notifier struct {
	socket   string        // $NOTIFY_SOCKET; "" disables everything
	watchdog time.Duration // $WATCHDOG_USEC if it is meant for this process, else 0
}

// New reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from the
// environment. As sd_watchdog_enabled(3) documents, the watchdog settings are
// honoured only if WATCHDOG_PID is unset or names this process: a child that
// inherited the variables of a supervised parent must not ping on its behalf.
//
// New does not unset the variables; lmtpgate starts no child processes that
// could misuse them.
func New() *Notifier {
	return newFromEnv(os.Getenv, os.Getpid())
}

func newFromEnv(getenv func(string) string, pid int) *Notifier {
	n := &Notifier{socket: getenv("NOTIFY_SOCKET")}
	usec, err := strconv.ParseUint(getenv("WATCHDOG_USEC"), 10, 63)
	if err != nil || usec == 0 {
		return n
	}
	if p := getenv("WATCHDOG_PID"); p != "" {
		wp, err := strconv.Atoi(p)
		if err != nil || wp != pid {
			return n
		}
	}
	// Cap to what time.Duration can hold; any real timeout is far below.
	if usec > uint64(1<<63-1)/1000 {
		usec = uint64(1<<63-1) / 1000
	}
	n.watchdog = time.Duration(usec) * time.Microsecond
	return n
}

// Enabled reports whether a service manager listens (NOTIFY_SOCKET was set).
func (n *Notifier) Enabled() bool { return n != nil && n.socket != "" }

// Ready reports that start-up or a reload finished and the daemon serves.
func (n *Notifier) Ready(status string) error {
	return n.Send(withStatus("READY=1", status))
}

// Reloading reports that a configuration reload began. MONOTONIC_USEC is
// CLOCK_MONOTONIC in microseconds: Type=notify-reload (systemd ≥253) uses it
// to tell this reload from an earlier one, and rejects wall-clock values.
// The caller must send Ready when the reload ends, whether it succeeded or
// the old configuration was kept.
func (n *Notifier) Reloading(status string) error {
	if !n.Enabled() {
		return nil
	}
	usec, err := monotonicUsec()
	if err != nil {
		return fmt.Errorf("sdnotify: reading CLOCK_MONOTONIC: %w", err)
	}
	return n.Send(withStatus("RELOADING=1\nMONOTONIC_USEC="+strconv.FormatUint(usec, 10), status))
}

// Status sets the free-form status line shown by systemctl status.
func (n *Notifier) Status(status string) error {
	return n.Send("STATUS=" + oneLine(status))
}

// Stopping reports that shutdown began, so the manager does not mistake the
// drain period for a hang.
func (n *Notifier) Stopping(status string) error {
	return n.Send(withStatus("STOPPING=1", status))
}

// Watchdog feeds the service watchdog. It does nothing when no watchdog is
// configured for this process (WatchdogInterval returns 0), so a main loop
// may call it unconditionally.
func (n *Notifier) Watchdog() error {
	if n.WatchdogInterval() == 0 {
		return nil
	}
	return n.Send("WATCHDOG=1")
}

// WatchdogInterval returns how often to call Watchdog: half of WATCHDOG_USEC,
// as sd_watchdog_enabled(3) recommends, so that one late tick does not trip
// the timeout. It is 0 when no watchdog is configured for this process.
func (n *Notifier) WatchdogInterval() time.Duration {
	if n == nil {
		return 0
	}
	return n.watchdog / 2
}

// WatchdogTimeout returns WATCHDOG_USEC itself (0 if no watchdog applies).
func (n *Notifier) WatchdogTimeout() time.Duration {
	if n == nil {
		return 0
	}
	return n.watchdog
}

// Send sends state, newline-separated KEY=value assignments, as one datagram.
// It returns nil without sending when NOTIFY_SOCKET is unset.
func (n *Notifier) Send(state string) error {
	if !n.Enabled() {
		return nil
	}
	// Go's net package maps a leading '@' to the abstract namespace (a
	// leading NUL byte in sun_path), which is what sd_notify(3) specifies.
	addr := &net.UnixAddr{Name: n.socket, Net: "unixgram"}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer conn.Close()
	if err := conn.SetWriteDeadline(time.Now().Add(sendTimeout)); err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	nw, err := conn.Write([]byte(state))
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	if nw != len(state) {
		return errors.New("sdnotify: short write")
	}
	return nil
}

func withStatus(state, status string) string {
	if status == "" {
		return state
	}
	return state + "\nSTATUS=" + oneLine(status)
}

// oneLine keeps a status from injecting further assignments: the manager
// parses the datagram line by line, so a newline in a status string built
// from outside input (an error text, a host name) would start a new key.
func oneLine(s string) string {
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
}

func monotonicUsec() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, err
	}
	return uint64(ts.Sec)*1_000_000 + uint64(ts.Nsec)/1_000, nil
}
