package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// NullBackend is an LMTP server (RFC 2033) that accepts every sender and
// recipient, reads each message to its end, discards it and answers 250 for
// every recipient. It stands in for Cyrus backends when measuring the
// ceiling of a proxy: whatever the proxy achieves against it is the proxy's
// own cost. AUTH PLAIN is accepted with any credentials, so a proxy
// configured to authenticate as Cyrus's frontend does can use it.
//
// One goroutine per connection with small buffers keeps 1,000+ idle or
// busy connections cheap.
type NullBackend struct {
	// IdleTimeout closes a connection that sends nothing for this long
	// (default 5 minutes, the RFC 5321 section 4.5.3.2.7 server timeout).
	IdleTimeout time.Duration
	// Log receives connection errors at DEBUG; nil means slog.Default().
	Log *slog.Logger

	// Counters, readable while serving.
	Conns      atomic.Int64 // connections accepted
	Active     atomic.Int64 // connections open now
	Messages   atomic.Int64 // messages whose data was read to the end
	Deliveries atomic.Int64 // 250 replies after DATA
	Bytes      atomic.Int64 // message bytes read (dot-stuffed wire form)

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
	closed    bool
}

// Listen opens a listener on addr ("host:port", "tcp:host:port" or
// "unix:/path") and serves it in the background until Close. It returns
// the bound address, useful with port 0.
func (s *NullBackend) Listen(ctx context.Context, addr string) (net.Addr, error) {
	network, a := SplitTarget(addr)
	if network == "unix" {
		os.Remove(a) // a stale socket from an earlier run
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, network, a)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil, errors.New("null backend closed")
	}
	s.listeners = append(s.listeners, l)
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.serve(l)
	return l.Addr(), nil
}

// Close stops all listeners and connections and waits for them.
func (s *NullBackend) Close() error {
	s.mu.Lock()
	s.closed = true
	for _, l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *NullBackend) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

func (s *NullBackend) serve(l net.Listener) {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log().Warn("null backend accept", "err", err)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.Conns.Add(1)
		s.Active.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.Active.Add(-1)
			err := s.handle(c)
			if err != nil {
				s.log().Debug("null backend connection", "err", err)
			}
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// maxCommandLine bounds a command line; RFC 5321 section 4.5.3.1.4 says
// 512 octets, AUTH initial responses can be longer.
const maxCommandLine = 8192

type nullSession struct {
	s     *NullBackend
	c     net.Conn
	r     *bufio.Reader
	w     *bufio.Writer
	mail  bool
	rcpts int
	line  []byte
}

func (s *NullBackend) handle(c net.Conn) error {
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = 5 * time.Minute
	}
	ss := &nullSession{s: s, c: c, r: bufio.NewReaderSize(c, 4096), w: bufio.NewWriterSize(c, 1024)}
	ss.w.WriteString("220 null-backend LMTP ready\r\n")
	if err := ss.w.Flush(); err != nil {
		return err
	}
	for {
		c.SetDeadline(time.Now().Add(idle))
		line, tooLong, err := ss.readLine(maxCommandLine)
		if err != nil {
			return err
		}
		if tooLong {
			ss.reply("500 5.5.2 Line too long")
		} else if quit := ss.command(line); quit {
			ss.w.Flush()
			return nil
		}
		// Flush only when the client has nothing more in flight, so a
		// pipelined batch (RFC 2920) gets its replies in one write.
		if ss.r.Buffered() == 0 {
			if err := ss.w.Flush(); err != nil {
				return err
			}
		}
	}
}

func (ss *nullSession) reply(s string) {
	ss.w.WriteString(s)
	ss.w.WriteString("\r\n")
}

// command handles one command line and reports whether to close.
func (ss *nullSession) command(line []byte) bool {
	line = bytes.TrimRight(line, "\r\n")
	verb, arg, _ := bytes.Cut(line, []byte(" "))
	switch strings.ToUpper(string(verb)) {
	case "LHLO", "EHLO", "HELO":
		ss.mail, ss.rcpts = false, 0
		ss.reply("250-null-backend\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-SIZE\r\n250 AUTH PLAIN")
	case "AUTH":
		ss.auth(arg)
	case "MAIL":
		if ss.mail {
			ss.reply("503 5.5.1 Nested MAIL command")
			return false
		}
		ss.mail, ss.rcpts = true, 0
		ss.reply("250 2.1.0 ok")
	case "RCPT":
		if !ss.mail {
			ss.reply("503 5.5.1 Need MAIL command")
			return false
		}
		ss.rcpts++
		ss.reply("250 2.1.5 ok")
	case "DATA":
		if !ss.mail || ss.rcpts == 0 {
			ss.reply("503 5.5.1 No valid recipients")
			return false
		}
		ss.reply("354 go ahead")
		if err := ss.w.Flush(); err != nil {
			return true
		}
		if err := ss.discardData(); err != nil {
			return true
		}
		ss.s.Messages.Add(1)
		ss.s.Deliveries.Add(int64(ss.rcpts))
		for range ss.rcpts {
			ss.reply("250 2.1.5 ok")
		}
		ss.mail, ss.rcpts = false, 0
	case "RSET":
		ss.mail, ss.rcpts = false, 0
		ss.reply("250 2.0.0 ok")
	case "NOOP":
		ss.reply("250 2.0.0 ok")
	case "VRFY":
		ss.reply("252 2.5.0 cannot verify")
	case "QUIT":
		ss.reply("221 2.0.0 bye")
		return true
	default:
		ss.reply("500 5.5.2 Unrecognized command")
	}
	return false
}

// auth accepts AUTH PLAIN with any credentials, with the initial response
// on the command line or after a "334 " continuation (RFC 4954 section 4).
func (ss *nullSession) auth(arg []byte) {
	mech, ir, _ := bytes.Cut(arg, []byte(" "))
	if !strings.EqualFold(string(mech), "PLAIN") {
		ss.reply("504 5.5.4 Unrecognized authentication type")
		return
	}
	if len(ir) == 0 {
		ss.reply("334 ")
		if ss.w.Flush() != nil {
			return
		}
		line, _, err := ss.readLine(maxCommandLine)
		if err != nil {
			return
		}
		if bytes.Equal(bytes.TrimRight(line, "\r\n"), []byte("*")) {
			ss.reply("501 5.0.0 AUTH aborted")
			return
		}
	}
	ss.reply("235 2.0.0 ok")
}

// discardData reads the message up to the line ".", whatever its line
// lengths (a line longer than the buffer is read in pieces).
func (ss *nullSession) discardData() error {
	bol := true // at the beginning of a line
	var n int64
	defer func() { ss.s.Bytes.Add(n) }()
	for {
		frag, err := ss.r.ReadSlice('\n')
		n += int64(len(frag))
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
		if bol && err == nil && (string(frag) == ".\r\n" || string(frag) == ".\n") {
			return nil
		}
		bol = err == nil
	}
}

// readLine reads one line; a line longer than limit is consumed and
// reported as tooLong instead of growing memory without bound.
func (ss *nullSession) readLine(limit int) (line []byte, tooLong bool, err error) {
	ss.line = ss.line[:0]
	for {
		frag, err := ss.r.ReadSlice('\n')
		if len(ss.line)+len(frag) <= limit {
			ss.line = append(ss.line, frag...)
		} else {
			tooLong = true
		}
		if err == nil {
			return ss.line, tooLong, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, false, err
		}
	}
}
