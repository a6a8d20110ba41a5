package bench

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// CountingRelay is a TCP relay that counts the MUPDATE FIND commands
// (RFC 3656 §3.4) a client sends through it. Put between lmtpgate and the
// murder master, it shows how many questions reach the master, and so
// whether lmtpgate's answer cache does its job.
type CountingRelay struct {
	// Finds counts client lines containing " FIND " (a tag, FIND, and a
	// mailbox name: "A12 FIND MAILBOX user.alice").
	Finds atomic.Int64
	// Conns counts connections relayed.
	Conns atomic.Int64

	l      net.Listener
	target string
	mu     sync.Mutex
	names  map[string]int
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// NewCountingRelay listens on listen ("127.0.0.1:0") and relays every
// connection to target.
func NewCountingRelay(ctx context.Context, listen, target string) (*CountingRelay, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return nil, err
	}
	r := &CountingRelay{l: l, target: target, names: map[string]int{}, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

// Addr is the relay's listening address.
func (r *CountingRelay) Addr() string { return r.l.Addr().String() }

// Names returns how often each mailbox name was asked for.
func (r *CountingRelay) Names() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.names))
	for k, v := range r.names {
		out[k] = v
	}
	return out
}

// Reset zeroes the counters.
func (r *CountingRelay) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Finds.Store(0)
	r.names = map[string]int{}
}

// Close stops listening and closes every relayed connection.
func (r *CountingRelay) Close() error {
	err := r.l.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return err
}

func (r *CountingRelay) track(c net.Conn, add bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if add {
		r.conns[c] = struct{}{}
	} else {
		delete(r.conns, c)
	}
}

func (r *CountingRelay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.l.Accept()
		if err != nil {
			return
		}
		r.Conns.Add(1)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.relay(c)
		}()
	}
}

func (r *CountingRelay) relay(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer up.Close()
	r.track(c, true)
	r.track(up, true)
	defer r.track(c, false)
	defer r.track(up, false)
	done := make(chan struct{})
	go func() {
		io.Copy(c, up)
		c.Close()
		close(done)
	}()
	// Client to server, line by line, so commands can be counted. A
	// literal's bytes are passed through as lines too; they never hold
	// " FIND " in the commands lmtpgate sends.
	br := bufio.NewReader(c)
	literal := false
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			literal = r.count(line, literal)
			if _, werr := up.Write(line); werr != nil {
				break
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			break
		}
	}
	up.Close()
	<-done
}

// count looks at one client line. If the previous line was a FIND whose
// mailbox name follows as a literal ("A1 FIND {10+}"), this line is that
// name. It reports whether the next line is such a literal.
func (r *CountingRelay) count(line []byte, literal bool) bool {
	if literal {
		r.name(bytes.TrimRight(line, "\r\n"))
		return false
	}
	i := bytes.Index(line, []byte(" FIND "))
	if i < 0 {
		return false
	}
	r.Finds.Add(1)
	// "tag FIND name", "tag FIND MAILBOX name" (RFC 3656 §3.4), the name
	// an atom, a quoted string or a literal.
	f := bytes.Fields(line[i+len(" FIND "):])
	if len(f) >= 2 && bytes.EqualFold(f[0], []byte("MAILBOX")) {
		f = f[1:]
	}
	if len(f) == 0 {
		return false
	}
	if bytes.HasPrefix(f[0], []byte("{")) && bytes.HasSuffix(f[0], []byte("}")) {
		return true
	}
	r.name(bytes.Trim(f[0], `"`))
	return false
}

func (r *CountingRelay) name(n []byte) {
	r.mu.Lock()
	r.names[string(n)]++
	r.mu.Unlock()
}
