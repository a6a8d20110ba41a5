// Package spool holds one incoming message while it is delivered to one or
// more backends, and lets each backend read it while it is still arriving.
//
// The front end writes the message (already in wire form, see package wire)
// as the MTA sends it; every backend transaction has its own Reader, which
// blocks at the end of what has arrived, so a backend receives the message
// while the MTA is still sending it (cut-through), and a slow backend never
// slows the MTA or another backend: what it has not read yet waits here.
// A Reader ends with io.EOF only once the writer called Finish, i.e. once the
// whole message has arrived and was valid; if the writer calls Fail instead,
// every Reader returns that error and the backend must abort its DATA
// without the final dot, so nothing is stored.
//
// Small messages stay in memory; one that grows beyond the memory limit moves
// to an unlinked temporary file, so a 5 MiB message is held once whatever
// the number of backends, and nothing is left on disk if the daemon dies.
package spool

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
)

// ErrClosed is returned by a Reader of a spool that was closed.
var ErrClosed = errors.New("spool: closed")

// Spool is one message. Its methods are safe for concurrent use; there is
// one writer.
type Spool struct {
	memLimit int64
	dir      string

	mu     sync.Mutex
	mem    []byte
	file   *os.File
	size   int64
	done   bool  // Finish or Fail was called
	err    error // set by Fail
	closed bool
	// more is closed and replaced when size, done or closed change and
	// a reader waits for it (waiters > 0).
	more    chan struct{}
	waiters int

	// first is the first Reader's storage: most messages go to one
	// backend, and need no allocation for it.
	first     Reader
	firstUsed bool
	memp      *[]byte // mem's holder from memPool
}

// memPool recycles the in-memory buffers of small messages: most mail is
// a few KiB, and a busy frontend would otherwise allocate one per message.
var memPool = sync.Pool{New: func() any { b := make([]byte, 0, memStart); return &b }}

// memStart is the in-memory buffer's first size; buffers that grew past
// memKeep are left to the garbage collector rather than kept in memPool.
const (
	memStart = 4 << 10
	memKeep  = 64 << 10
)

// New returns an empty spool that keeps up to memLimit bytes in memory and
// spools larger messages to a temporary file in dir ("" means
// os.TempDir()). A memLimit of 0 sends every message to a file.
func New(memLimit int64, dir string) *Spool {
	return &Spool{memLimit: memLimit, dir: dir}
}

// Write appends p. It fails only if the temporary file cannot be written.
func (s *Spool) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	if s.done || s.closed {
		s.mu.Unlock()
		return 0, errors.New("spool: write after the end")
	}
	if s.file == nil && s.size+int64(len(p)) <= s.memLimit {
		if s.mem == nil {
			// Most mail is a few KiB: start small and let append
			// grow the buffer for larger messages.
			s.memp = memPool.Get().(*[]byte)
			s.mem = (*s.memp)[:0]
		}
		s.mem = append(s.mem, p...)
		s.size += int64(len(p))
		s.wake()
		s.mu.Unlock()
		return len(p), nil
	}
	if s.file == nil {
		if err := s.toFile(); err != nil {
			s.mu.Unlock()
			return 0, err
		}
	}
	f, off := s.file, s.size
	s.mu.Unlock()
	// Readers only read below s.size, so the file is written outside the
	// lock; the single writer keeps the offsets in order.
	n, err := f.WriteAt(p, off)
	s.mu.Lock()
	s.size += int64(n)
	s.wake()
	s.mu.Unlock()
	return n, err
}

// toFile moves what is in memory to a new unlinked temporary file. s.mu is
// held.
func (s *Spool) toFile() error {
	f, err := os.CreateTemp(s.dir, "lmtpgate-spool-*")
	if err != nil {
		return err
	}
	os.Remove(f.Name())
	if _, err := f.WriteAt(s.mem, 0); err != nil {
		f.Close()
		return err
	}
	s.file = f
	s.putMem()
	return nil
}

// Finish marks the message complete and valid: Readers end with io.EOF.
func (s *Spool) Finish() { s.end(nil) }

// Fail marks the message incomplete or invalid: Readers end with err.
func (s *Spool) Fail(err error) {
	if err == nil {
		err = errors.New("spool: message failed")
	}
	s.end(err)
}

func (s *Spool) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	s.done, s.err = true, err
	s.wake()
}

// wake tells waiting Readers that something changed. s.mu is held.
func (s *Spool) wake() {
	if s.waiters == 0 {
		return
	}
	close(s.more)
	s.more = nil
	s.waiters = 0
}

// Size returns the bytes written so far.
func (s *Spool) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size
}

// InFile reports whether the message moved to a temporary file.
func (s *Spool) InFile() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.file != nil
}

// Close releases the message and its temporary file. Readers still reading
// get ErrClosed. Close marks an unfinished message failed.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	if !s.done {
		s.done, s.err = true, ErrClosed
	}
	s.closed = true
	s.putMem()
	s.wake()
	if s.file != nil {
		err := s.file.Close()
		s.file = nil
		return err
	}
	return nil
}

// Reader returns a reader over the whole message from its first byte. Read
// blocks until more has arrived, the message ended, or ctx is done (its
// error is then returned).
func (s *Spool) Reader(ctx context.Context) *Reader {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.firstUsed {
		s.firstUsed = true
		s.first = Reader{s: s, ctx: ctx}
		return &s.first
	}
	return &Reader{s: s, ctx: ctx}
}

// putMem gives the in-memory buffer back to memPool. s.mu is held, and
// no reader can reach the buffer any more (the spool is closed or the
// message went to a file).
func (s *Spool) putMem() {
	if s.memp != nil && cap(s.mem) <= memKeep {
		*s.memp = s.mem[:0]
		memPool.Put(s.memp)
	}
	s.mem, s.memp = nil, nil
}

// Reader reads a Spool from the start; see Spool.Reader.
type Reader struct {
	s   *Spool
	ctx context.Context
	off int64
}

// Ready reports whether Read would return at once: more has arrived, or the
// message ended.
func (r *Reader) Ready() bool {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	return r.off < r.s.size || r.s.done || r.s.closed
}

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s := r.s
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return 0, ErrClosed
		}
		if r.off < s.size {
			n := int(min(int64(len(p)), s.size-r.off))
			if s.file == nil {
				copy(p, s.mem[r.off:r.off+int64(n)])
				s.mu.Unlock()
				r.off += int64(n)
				return n, nil
			}
			f := s.file
			s.mu.Unlock()
			m, err := f.ReadAt(p[:n], r.off)
			r.off += int64(m)
			if m > 0 {
				return m, nil
			}
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if s.done {
			err := s.err
			s.mu.Unlock()
			if err == nil {
				return 0, io.EOF
			}
			return 0, err
		}
		if s.more == nil {
			s.more = make(chan struct{})
		}
		more := s.more
		s.waiters++
		s.mu.Unlock()
		select {
		case <-more:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}
