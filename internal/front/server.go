// Package front is lmtpgate's LMTP server: the side the MTA talks to. It
// accepts a transaction, resolves each recipient through the lookup chain at
// RCPT time, spools the message, delivers it to every backend involved in
// parallel, and answers each recipient in RCPT order with the backend's
// verdict (RFC 2033 §4.2). It never answers 250 for a recipient its backend
// did not accept.
package front

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// Options are the listener-level settings. They are fixed for the life of
// the server (go-smtp reads them on every connection), so a reload does not
// change them; the service says so when they differ.
type Options struct {
	Hostname        string
	MaxMessageBytes int64
	MaxRecipients   int
	MaxLineLength   int // 0: 64 KiB
	ReadTimeout     time.Duration
	WriteTimeout    time.Duration
	Log             *slog.Logger
}

// Stats are counters since start, for STATUS and `lmtpgate status`.
type Stats struct {
	Sessions     uint64 // LMTP sessions opened
	Active       int    // sessions open now
	Transactions uint64 // messages received (DATA completed)
	Delivered    uint64 // recipients answered 250
	TempFailed   uint64 // recipients answered 4xx (at RCPT or after DATA)
	PermFailed   uint64 // recipients answered 5xx
}

// Server is the LMTP front end.
type Server struct {
	opts   Options
	log    *slog.Logger
	holder *Holder
	smtp   *smtp.Server

	// deliverCtx is cancelled when a graceful stop runs out of time, so
	// that deliveries still in flight end with a 4xx for their recipients.
	deliverCtx    context.Context
	cancelDeliver context.CancelFunc

	draining atomic.Bool
	mu       sync.Mutex
	sessions map[*session]struct{}
	// conns are all accepted connections, with or without a session: a
	// stop that runs out of time must be able to cut off every one
	// (go-smtp's Close does nothing once Shutdown has begun).
	connMu sync.Mutex
	conns  map[net.Conn]struct{}

	nsessions, ntxn, ndelivered, ntemp, nperm atomic.Uint64
	idPrefix                                  string
	idSeq                                     atomic.Uint64
}

// New returns a server taking its rules from holder.
func New(opts Options, holder *Holder) *Server {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Server{opts: opts, log: opts.Log, holder: holder, sessions: map[*session]struct{}{}, conns: map[net.Conn]struct{}{}}
	s.deliverCtx, s.cancelDeliver = context.WithCancel(context.Background())
	var b [4]byte
	rand.Read(b[:])
	s.idPrefix = hex.EncodeToString(b[:])

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.LMTP = true
	srv.Domain = opts.Hostname
	srv.MaxMessageBytes = opts.MaxMessageBytes
	srv.MaxRecipients = opts.MaxRecipients
	// RFC 5321 allows 1000 octets a line, but MTAs pass longer lines on
	// and Cyrus stores them; refuse only the absurd.
	srv.MaxLineLength = opts.MaxLineLength
	if srv.MaxLineLength == 0 {
		srv.MaxLineLength = 64 << 10
	}
	srv.ReadTimeout = opts.ReadTimeout
	srv.WriteTimeout = opts.WriteTimeout
	srv.ErrorLog = slogLogger{opts.Log}
	s.smtp = srv
	return s
}

// Serve accepts LMTP connections on l until the server stops.
func (s *Server) Serve(l net.Listener) error {
	err := s.smtp.Serve(trackingListener{l, s})
	if err == smtp.ErrServerClosed {
		return nil
	}
	return err
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	active := len(s.sessions)
	s.mu.Unlock()
	return Stats{
		Sessions:     s.nsessions.Load(),
		Active:       active,
		Transactions: s.ntxn.Load(),
		Delivered:    s.ndelivered.Load(),
		TempFailed:   s.ntemp.Load(),
		PermFailed:   s.nperm.Load(),
	}
}

// Shutdown stops gracefully: it stops accepting, closes connections that are
// between transactions, and lets transactions in progress finish until ctx
// ends. Then deliveries still running are cancelled (their recipients get a
// 4xx, which is written before the connection closes, within grace), and
// every remaining connection is closed. An MTA whose connection closes
// without a reply retries; nothing is ever acknowledged that was not
// delivered.
func (s *Server) Shutdown(ctx context.Context, grace time.Duration) {
	s.draining.Store(true)
	done := make(chan struct{})
	go func() {
		s.smtp.Shutdown(context.Background())
		close(done)
	}()
	defer func() {
		// Whatever is left — a transaction that outlived the grace, a
		// client that never said LHLO — is cut off; the MTA retries what
		// it got no answer for.
		s.closeConns()
		<-done
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	if s.drain(ctx, tick.C, done) {
		return
	}
	s.cancelDeliver()
	gctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	s.drain(gctx, tick.C, done)
}

// drain closes sessions as they go idle until none is in a transaction
// (true) or ctx ends (false).
func (s *Server) drain(ctx context.Context, tick <-chan time.Time, done <-chan struct{}) bool {
	for s.closeIdle() > 0 {
		select {
		case <-ctx.Done():
			return false
		case <-done:
			return true
		case <-tick:
		}
	}
	return true
}

// closeIdle closes every session that is between transactions and returns
// how many are still in one.
func (s *Server) closeIdle() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	busy := 0
	for sess := range s.sessions {
		if sess.busy.Load() {
			busy++
			continue
		}
		sess.conn.Conn().Close()
	}
	return busy
}

// closeConns closes every connection still open.
func (s *Server) closeConns() {
	s.connMu.Lock()
	open := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		open = append(open, c)
	}
	s.connMu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

// trackingListener records every accepted connection in the server.
type trackingListener struct {
	net.Listener
	s *Server
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, s: l.s}
	l.s.connMu.Lock()
	l.s.conns[tc] = struct{}{}
	l.s.connMu.Unlock()
	return tc, nil
}

type trackedConn struct {
	net.Conn
	s *Server
}

func (c *trackedConn) Close() error {
	c.s.connMu.Lock()
	delete(c.s.conns, c)
	c.s.connMu.Unlock()
	return c.Conn.Close()
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	if s.draining.Load() {
		return nil, replyShutdown
	}
	sess := &session{
		srv:    s,
		conn:   c,
		id:     s.idPrefix + "-" + itoa(s.idSeq.Add(1)),
		helo:   c.Hostname(),
		remote: c.Conn().RemoteAddr().String(),
	}
	s.nsessions.Add(1)
	s.mu.Lock()
	s.sessions[sess] = struct{}{}
	s.mu.Unlock()
	return sess, nil
}

func (s *Server) endSession(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}

func itoa(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// slogLogger routes go-smtp's own error log to slog. go-smtp reports every
// connection an MTA (or a health check) drops as an error; only panics are
// worth an operator's attention, the rest is DEBUG.
type slogLogger struct{ l *slog.Logger }

func (l slogLogger) Printf(format string, v ...any) { l.log(fmt.Sprintf(format, v...)) }

func (l slogLogger) Println(v ...any) { l.log(fmt.Sprint(v...)) }

func (l slogLogger) log(msg string) {
	if strings.Contains(msg, "panic") {
		l.l.Error("lmtp server", "err", msg)
		return
	}
	l.l.Debug("lmtp server", "err", msg)
}
