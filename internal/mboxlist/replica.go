package mboxlist

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Cyrus's own frontend lmtpd, before it declares a mailbox unknown, "kicks"
// its local mupdate replica through the UNIX socket
// <configdirectory>/socket/mupdate.target: the replica sends a NOOP to the
// master, which flushes every pending update into mailboxes.db, and then
// writes "ok" and closes (Cyrus imap/mupdate-slave.c and the kick in imap/lmtpd.c). A mailbox created a moment
// ago is therefore found, not bounced. lmtpgate does the same on a miss,
// with a timeout (Cyrus has none), and then re-reads the file if it changed.
//
// A replica that is not running or not synced refuses the connection; the
// miss then stands, as in Cyrus.

// pokes coalesces concurrent pokes: every miss that arrives while one is in
// flight waits for that one instead of starting another. A replica that
// accepts the poke and never answers (it waits for a master that hangs) is
// not poked again for a while, so that every unknown recipient does not
// cost the poke's whole timeout during an outage.
type pokes struct {
	mu      sync.Mutex
	running chan struct{}
	err     error
	until   time.Time // no poke before this, after a poke timed out
}

// pokeBackoff is how long a replica that let a poke time out is left alone.
const pokeBackoff = 30 * time.Second

// errPokeSkipped is returned while a replica that did not answer is left
// alone.
var errPokeSkipped = errors.New("the replica did not answer the last poke; not poking it for a while")

// pokeReplica asks the replica to sync with the master and waits for its
// answer.
func (d *DB) pokeReplica(ctx context.Context) error {
	d.pokes.mu.Lock()
	if time.Now().Before(d.pokes.until) {
		d.pokes.mu.Unlock()
		return errPokeSkipped
	}
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
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			d.pokes.until = time.Now().Add(pokeBackoff)
			d.log.Warn("the local mupdate replica does not answer pokes; misses are answered from mailboxes.db as it is", "socket", d.cfg.ReplicaSocket, "retry_in", pokeBackoff.String())
		}
	}
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
