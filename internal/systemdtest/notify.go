package systemdtest

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
)

// NotifyListener receives sd_notify(3) datagrams, as the service manager's
// notification socket does.
type NotifyListener struct {
	conn *net.UnixConn
	path string
	q    *queue[string]
}

// ListenNotify binds a datagram socket in dir (or a shorter directory if the
// path would not fit in sun_path) and collects every message sent to it
// until the test ends. Pass Path() to the daemon as NOTIFY_SOCKET.
func ListenNotify(t testing.TB, dir string) *NotifyListener {
	t.Helper()
	conn := bindUnixgram(t, dir, "notify.sock")
	l := &NotifyListener{conn: conn, path: conn.LocalAddr().String(), q: newQueue[string]()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// sd_notify messages are small; systemd itself reads them into a
		// buffer of NOTIFY_BUFFER_MAX (4 KiB in 252). A larger buffer here
		// lets a test see an oversized message instead of a truncated one.
		buf := make([]byte, 64<<10)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					err = errClosed
				}
				l.q.stop(err)
				return
			}
			l.q.push(string(buf[:n]))
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return l
}

// Path returns the socket path, the value for NOTIFY_SOCKET.
func (l *NotifyListener) Path() string { return l.path }

// Next returns the next datagram not yet returned by Next or WaitFor, parsed
// into its KEY=value assignments, and its raw text. It waits until one
// arrives or ctx is done.
func (l *NotifyListener) Next(ctx context.Context) (map[string]string, string, error) {
	raw, err := l.q.pop(ctx)
	if err != nil {
		return nil, "", err
	}
	return ParseNotify(raw), raw, nil
}

// WaitFor reads messages (as Next) until one assigns key=value, and returns
// it; value "" matches any value of key. Messages skipped on the way are
// consumed but remain in All.
func (l *NotifyListener) WaitFor(ctx context.Context, key, value string) (map[string]string, error) {
	for {
		m, _, err := l.Next(ctx)
		if err != nil {
			return nil, err
		}
		if v, ok := m[key]; ok && (value == "" || v == value) {
			return m, nil
		}
	}
}

// All returns every raw datagram received so far, in order.
func (l *NotifyListener) All() []string { return l.q.all() }

// ParseNotify splits a notification into its assignments, as the service
// manager does: one KEY=value per line, lines without '=' ignored; a later
// assignment of the same key wins.
func ParseNotify(raw string) map[string]string {
	m := make(map[string]string)
	for line := range strings.SplitSeq(raw, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			continue
		}
		m[k] = v
	}
	return m
}
