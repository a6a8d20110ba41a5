package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// RequestSink and Probe measure a TCP path itself, without LMTP: how long a
// round trip takes, how long a request of some size and its one-byte reply
// take, and how fast bytes flow. Run once straight to the sink and once
// through a DelayRelay, they show what the relay adds.
//
// The protocol is a length-prefixed request (8 bytes big-endian n, then n
// bytes) answered by the single byte 'k', repeated on one connection.

// RequestSink serves the probe protocol, discarding what it reads.
type RequestSink struct {
	// Bytes counts request payload bytes read.
	Bytes atomic.Int64

	l  net.Listener
	wg sync.WaitGroup
	mu sync.Mutex
	cs map[net.Conn]struct{}
}

// StartRequestSink listens on listen ("127.0.0.1:0") and serves until
// Close.
func StartRequestSink(ctx context.Context, listen string) (*RequestSink, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return nil, err
	}
	s := &RequestSink{l: l, cs: map[net.Conn]struct{}{}}
	s.wg.Go(s.serve)
	return s, nil
}

// Addr is the sink's listening address.
func (s *RequestSink) Addr() string { return s.l.Addr().String() }

// Close stops the sink and closes its connections.
func (s *RequestSink) Close() error {
	err := s.l.Close()
	s.mu.Lock()
	for c := range s.cs {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *RequestSink) serve() {
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.cs[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			s.handle(c)
			s.mu.Lock()
			delete(s.cs, c)
			s.mu.Unlock()
			c.Close()
		})
	}
}

func (s *RequestSink) handle(c net.Conn) {
	br := bufio.NewReaderSize(c, 256<<10)
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		n, err := io.CopyN(io.Discard, br, int64(binary.BigEndian.Uint64(hdr[:])))
		s.Bytes.Add(n)
		if err != nil {
			return
		}
		if _, err := c.Write([]byte{'k'}); err != nil {
			return
		}
	}
}

// Probe is one connection speaking the probe protocol.
type Probe struct {
	c   net.Conn
	buf []byte
}

// DialProbe connects to a RequestSink at addr (or to a relay in front of
// one). timeout bounds every request, against hangs.
func DialProbe(ctx context.Context, addr string, timeout time.Duration) (*Probe, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &Probe{c: c, buf: make([]byte, 256<<10)}, nil
}

// Close closes the connection.
func (p *Probe) Close() error { return p.c.Close() }

// Request sends n bytes and waits for the reply, and returns the time from
// the first byte written to the reply read.
func (p *Probe) Request(n int64, timeout time.Duration) (time.Duration, error) {
	p.c.SetDeadline(time.Now().Add(timeout))
	t0 := time.Now()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := p.c.Write(hdr[:]); err != nil {
		return 0, err
	}
	// The payload is p.buf's zeros, written again and again.
	for left := n; left > 0; {
		k := min(left, int64(len(p.buf)))
		if _, err := p.c.Write(p.buf[:k]); err != nil {
			return 0, err
		}
		left -= k
	}
	var reply [1]byte
	if _, err := io.ReadFull(p.c, reply[:]); err != nil {
		return 0, err
	}
	if reply[0] != 'k' {
		return 0, fmt.Errorf("probe: reply %q", reply[:])
	}
	return time.Since(t0), nil
}

// Requests runs count requests of size bytes one after another and
// returns their times.
func (p *Probe) Requests(size int64, count int, timeout time.Duration) ([]time.Duration, error) {
	if count < 1 {
		return nil, errors.New("probe: count must be at least 1")
	}
	out := make([]time.Duration, 0, count)
	for range count {
		d, err := p.Request(size, timeout)
		if err != nil {
			return out, err
		}
		out = append(out, d)
	}
	return out, nil
}
