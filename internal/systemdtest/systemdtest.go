// Package systemdtest plays systemd's part in tests of lmtpgate, on machines
// where systemd is not PID 1 and journald is not running: it receives
// sd_notify(3) messages, stands in for journald's native socket, and starts a
// binary the way socket activation does (sd_listen_fds(3)).
//
// The helpers take a testing.TB and register their own cleanup, so they are
// regular (non-_test) code that any package's tests can import.
package systemdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// maxSunPath is the usable length of sun_path on Linux (108 bytes including
// the terminating NUL). t.TempDir() paths can exceed it for long test names.
const maxSunPath = 107

// bindUnixgram binds a datagram socket named name in dir, or in a short
// private directory under /tmp if the path would not fit in sun_path.
func bindUnixgram(t testing.TB, dir, name string) *net.UnixConn {
	t.Helper()
	path := filepath.Join(dir, name)
	if len(path) > maxSunPath {
		short, err := os.MkdirTemp("/tmp", "sdt")
		if err != nil {
			t.Fatalf("systemdtest: %v", err)
		}
		t.Cleanup(func() { os.RemoveAll(short) })
		path = filepath.Join(short, name)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("systemdtest: binding %s: %v", path, err)
	}
	return conn
}

// queue is an append-only list of received items with a read cursor and a
// way to wait for the next arrival.
type queue[T any] struct {
	mu     sync.Mutex
	items  []T
	next   int
	err    error         // set once the reader stops
	signal chan struct{} // closed and replaced on every change
}

func newQueue[T any]() *queue[T] { return &queue[T]{signal: make(chan struct{})} }

func (q *queue[T]) push(v T) {
	q.mu.Lock()
	q.items = append(q.items, v)
	close(q.signal)
	q.signal = make(chan struct{})
	q.mu.Unlock()
}

func (q *queue[T]) stop(err error) {
	q.mu.Lock()
	if q.err == nil {
		q.err = err
	}
	close(q.signal)
	q.signal = make(chan struct{})
	q.mu.Unlock()
}

// pop returns the next unread item, waiting for one until ctx is done or the
// reader stopped.
func (q *queue[T]) pop(ctx context.Context) (T, error) {
	for {
		q.mu.Lock()
		if q.next < len(q.items) {
			v := q.items[q.next]
			q.next++
			q.mu.Unlock()
			return v, nil
		}
		err, sig := q.err, q.signal
		q.mu.Unlock()
		var zero T
		if err != nil {
			return zero, err
		}
		select {
		case <-ctx.Done():
			return zero, ctx.Err()
		case <-sig:
		}
	}
}

func (q *queue[T]) all() []T {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]T(nil), q.items...)
}

// errClosed is what readers of a listener see after its test ended.
var errClosed = fmt.Errorf("systemdtest: listener closed")
