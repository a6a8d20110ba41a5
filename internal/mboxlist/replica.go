package mboxlist

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// DefaultReplicaTimeout bounds one poke of the local mupdate replica.
const DefaultReplicaTimeout = 3 * time.Second

// Cyrus's own frontend lmtpd, before it declares a mailbox unknown, "kicks"
// its local mupdate replica through the UNIX socket
// <configdirectory>/socket/mupdate.target: the replica sends a NOOP to the
// master, which flushes every pending update into mailboxes.db, and then
// writes "ok" and closes (cyrus-interop §10.7). A mailbox created a moment
// ago is therefore found, not bounced. lmtpgate does the same on a miss,
// with a timeout (Cyrus has none), and then re-reads the file if it changed.
//
// A replica that is not running or not synced refuses the connection; the
// miss then stands, as in Cyrus.

// pokes coalesces concurrent pokes: every miss that arrives while one is in
// flight waits for that one instead of starting another.
type pokes struct {
	mu      sync.Mutex
	running chan struct{}
	err     error
}

// pokeReplica asks the replica to sync with the master and waits for its
// answer.
func (d *DB) pokeReplica(ctx context.Context) error {
	d.pokes.mu.Lock()
	if ch := d.pokes.running; ch != nil {
		d.pokes.mu.Unlock()
		select {
		case <-ch:
			d.pokes.mu.Lock()
			err := d.pokes.err
			d.pokes.mu.Unlock()
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ch := make(chan struct{})
	d.pokes.running = ch
	d.pokes.mu.Unlock()

	err := poke(ctx, d.cfg.ReplicaSocket, d.cfg.ReplicaTimeout)

	d.pokes.mu.Lock()
	d.pokes.running, d.pokes.err = nil, err
	d.pokes.mu.Unlock()
	close(ch)
	return err
}

func poke(ctx context.Context, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "unix", path)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	// The replica answers "ok" once its NOOP to the master came back, then
	// closes; either means the file now holds what the master knew.
	buf := make([]byte, 16)
	n, err := io.ReadAtLeast(c, buf, 2)
	if n >= 2 && string(buf[:2]) == "ok" {
		return nil
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil
	}
	return err
}
