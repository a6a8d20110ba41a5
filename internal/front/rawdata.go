package front

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/wire"
)

// rawData reads a message sent with DATA straight from the connection,
// past go-smtp's DATA reader, which costs a call per octet (it was two
// thirds of lmtpgate's CPU for a large message). It is used only when
// go-smtp's buffer holds nothing of the message (mtaConn.dataNext), and it
// cuts the message where go-smtp's reader would (wire.Decoder). At the end
// it hands the end-of-data line, and anything the MTA pipelined after it,
// back to go-smtp through the connection (mtaConn.inject): go-smtp's own
// reader, which drains the message after LMTPData, then reads just that
// line and ends, and the next command is where go-smtp expects it.
//
// Like go-smtp's reader it stops at the message size limit
// (smtp.ErrDataTooLarge), but only after reading the message to its end,
// so that go-smtp never starts its reader in the middle of a line. Unlike
// it, the read timeout bounds each read (an idle MTA), not the whole
// message.
type rawData struct {
	c       *mtaConn
	dec     wire.Decoder
	buf     *[]byte
	raw     []byte // read from the client, not yet decoded
	limit   int64  // 0: none
	n       int64  // decoded octets so far
	timeout time.Duration
	done    bool
	err     error
}

var rawBufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// rawData returns a reader for the message that follows a DATA command,
// or nil when go-smtp's own reader must be used.
func (c *mtaConn) rawData(limit int64, timeout time.Duration) *rawData {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dataNext || c.closing || c.draining {
		return nil
	}
	c.dataNext = false
	// One per connection, as messages on it come one after another.
	r := &c.rd
	*r = rawData{c: c, buf: rawBufPool.Get().(*[]byte), limit: limit, timeout: timeout}
	// What the MTA sent after the DATA line was held back from go-smtp:
	// it is the message's beginning.
	r.raw = (*r.buf)[:copy(*r.buf, c.inject)]
	if len(r.raw) < len(c.inject) {
		// More than a buffer's worth before the 354: the client did not
		// wait for it. Rare; go-smtp's reader takes it all.
		c.dataNext = false
		rawBufPool.Put(r.buf)
		return nil
	}
	c.inject = c.inject[:0]
	return r
}

func (r *rawData) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for len(p) > 0 {
		if len(r.raw) == 0 {
			n, err := r.c.readRaw(*r.buf, r.timeout)
			if err != nil {
				return 0, r.fail(err)
			}
			r.raw = (*r.buf)[:n]
		}
		chunk := r.raw[:min(len(r.raw), len(p))]
		out, used, end := r.dec.Decode(p[:0], chunk)
		r.raw = r.raw[used:]
		r.n += int64(len(out))
		if end {
			r.finish()
			if r.limit > 0 && r.n > r.limit {
				return 0, r.setErr(smtp.ErrDataTooLarge)
			}
			r.err = io.EOF
			return len(out), nil
		}
		if r.limit > 0 && r.n > r.limit {
			return 0, r.drain()
		}
		if len(out) > 0 {
			return len(out), nil
		}
	}
	return 0, nil
}

// drain reads the rest of an oversized message, discarding it.
func (r *rawData) drain() error {
	var sink [4 << 10]byte
	for {
		if len(r.raw) == 0 {
			n, err := r.c.readRaw(*r.buf, r.timeout)
			if err != nil {
				return r.fail(err)
			}
			r.raw = (*r.buf)[:n]
		}
		chunk := r.raw[:min(len(r.raw), len(sink))]
		_, used, end := r.dec.Decode(sink[:0], chunk)
		r.raw = r.raw[used:]
		if end {
			r.finish()
			return r.setErr(smtp.ErrDataTooLarge)
		}
	}
}

// finish hands the end-of-data line and what followed it back to go-smtp.
func (r *rawData) finish() {
	r.c.giveBack(r.raw)
	r.raw = nil
	r.release()
}

// fail ends the message on a read error: go-smtp's reader meets the same
// error (or the closed connection) next, so nothing is given back.
func (r *rawData) fail(err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	r.release()
	return r.setErr(err)
}

func (r *rawData) setErr(err error) error {
	r.err = err
	return err
}

func (r *rawData) release() {
	if r.buf != nil {
		rawBufPool.Put(r.buf)
		r.buf = nil
	}
}

// readRaw reads from the client for rawData, under the same rules as
// Read: it counts as reading for a stop's 421, and it remembers the
// client's side ending.
func (c *mtaConn) readRaw(p []byte, timeout time.Duration) (int, error) {
	c.mu.Lock()
	if err := c.readable(); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	if err := c.pendingErr; err != nil {
		// The read that filled the held-back octets ended so.
		c.pendingErr = nil
		c.mu.Unlock()
		return 0, err
	}
	c.reading = true
	c.mu.Unlock()
	if timeout > 0 {
		c.Conn.SetReadDeadline(time.Now().Add(timeout))
	}
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reading = false
	if c.closing {
		return 0, net.ErrClosed
	}
	if err != nil && n == 0 {
		if c.ended == nil {
			c.ended = err
		}
		c.pendingErr = err
		return 0, err
	}
	return n, nil
}

// giveBack queues the end-of-data line and rest for go-smtp's next reads.
func (c *mtaConn) giveBack(rest []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inject = append(append(c.inject[:0], ".\r\n"...), rest...)
	c.dotFirst = true
}
