// Package front is lmtpgate's LMTP server: the side the MTA talks to. It
// resolves each recipient through the lookup chain at RCPT time and opens
// the backend's transaction right then; it streams the message to every
// backend involved while the MTA is still sending it (keeping one copy in a
// spool, so a slow backend holds up no one); and it answers each recipient
// in RCPT order with the backend's verdict (RFC 2033 §4.2). It never answers
// 250 for a recipient its backend did not accept after the whole message.
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

// Config holds the LMTP-side settings (the lmtp.* keys). Every field means
// what its comment says, zero included; the defaults are DefaultConfig's.
type Config struct {
	// MaxMessageSize is the largest message accepted, in bytes, advertised
	// with SIZE (RFC 1870); 0 means no limit.
	MaxMessageSize int64
	// MaxRecipients bounds the recipients of one transaction (RFC 5321
	// §4.5.3.1.8); at least 1.
	MaxRecipients int
	// MaxConnections bounds the MTA connections open at once; beyond it a
	// connection gets 421 4.3.2 at once. 0 means no limit.
	MaxConnections int
	// ReadTimeout is the idle time allowed to the MTA; WriteTimeout the
	// time to write one reply. Both must be positive.
	ReadTimeout, WriteTimeout time.Duration
	// SpoolDir is where messages larger than SpoolMemoryLimit are
	// spooled; "" means $TMPDIR.
	SpoolDir string
	// SpoolMemoryLimit is how many bytes of one message stay in memory;
	// 0 spools every message to a file.
	SpoolMemoryLimit int64
	// TrustAuth lists the listeners on which MAIL's AUTH= parameter is
	// believed, for the 'p' right on shared folders: "unix" (every unix
	// socket), "tcp" (every TCP socket), "all", a systemd socket's
	// FileDescriptorName, or a listen address as written in listen
	// ("unix:/run/lmtpgate/lmtp.sock"). Elsewhere AUTH= is ignored and the
	// poster is anonymous. Empty: nowhere.
	TrustAuth []string
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{
		MaxRecipients:    1000,
		MaxConnections:   1000,
		ReadTimeout:      6 * time.Minute,
		WriteTimeout:     time.Minute,
		SpoolMemoryLimit: 1 << 20,
		// The unix socket is reachable only by the MTA's group; a TCP
		// listener may be reachable by anyone on the host.
		TrustAuth: []string{"unix"},
	}
}

// Trusts reports whether a listener, named name (its systemd
// FileDescriptorName, or "" ) with address addr ("unix:/path" or
// "tcp:host:port"), is trusted with AUTH=.
func (c *Config) Trusts(name, addr string) bool {
	kind, _, _ := strings.Cut(addr, ":")
	for _, t := range c.TrustAuth {
		switch {
		case t == "all", t == kind, name != "" && t == name, t == addr:
			return true
		case t == "tcp" && strings.HasPrefix(kind, "tcp"):
			return true
		}
	}
	return false
}

// Options are the listener-level settings, fixed for the life of the
// server (go-smtp reads them on every connection); a reload does not change
// them, and the service says so when they differ.
type Options struct {
	Hostname string
	Config   Config
	Log      *slog.Logger
}

// Stats are counters since start, for STATUS, `lmtpgate status` and
// metrics.
type Stats struct {
	Sessions     uint64 `json:"sessions"`     // LMTP sessions opened
	Active       int    `json:"active"`       // sessions open now
	Refused      uint64 `json:"refused"`      // connections refused over lmtp.max_connections
	Transactions uint64 `json:"transactions"` // messages received (DATA or BDAT completed)
	Bytes        uint64 `json:"bytes"`        // message bytes received
	Delivered    uint64 `json:"delivered"`    // recipients answered 250
	Deferred     uint64 `json:"deferred"`     // recipients answered 4xx (at RCPT or after DATA)
	Rejected     uint64 `json:"rejected"`     // recipients answered 5xx
}

// Server is the LMTP front end.
type Server struct {
	opts   Options
	log    *slog.Logger
	holder *Holder
	smtp   *smtp.Server
	hooks  atomic.Pointer[Hooks]

	// deliverCtx is cancelled when a graceful stop runs out of time, so
	// that deliveries still in flight end with a 4xx for their recipients.
	deliverCtx    context.Context
	cancelDeliver context.CancelFunc

	draining atomic.Bool
	connMu   sync.Mutex
	conns    map[*mtaConn]struct{}
	sessMu   sync.Mutex
	sessions map[*session]struct{}

	nsessions, nrefused, ntxn, nbytes, ndelivered, ndeferred, nrejected atomic.Uint64
	// nraw counts the messages read past go-smtp's DATA reader (rawData),
	// for the tests that prove the fast path is taken.
	nraw     atomic.Uint64
	idPrefix string
	idSeq    atomic.Uint64
}

// New returns a server taking its rules from holder.
func New(opts Options, holder *Holder) *Server {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Server{opts: opts, log: opts.Log, holder: holder, conns: map[*mtaConn]struct{}{}, sessions: map[*session]struct{}{}}
	s.hooks.Store(&Hooks{})
	s.deliverCtx, s.cancelDeliver = context.WithCancel(context.Background())
	var b [4]byte
	rand.Read(b[:])
	s.idPrefix = hex.EncodeToString(b[:])

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.LMTP = true
	srv.Domain = opts.Hostname
	srv.MaxMessageBytes = opts.Config.MaxMessageSize
	srv.MaxRecipients = opts.Config.MaxRecipients
	// Lines are bounded by mtaConn, which reads an overlong line to its
	// end before refusing it; go-smtp's own bound resets the connection.
	srv.MaxLineLength = 0
	srv.ReadTimeout = opts.Config.ReadTimeout
	srv.WriteTimeout = opts.Config.WriteTimeout
	srv.ErrorLog = slogLogger{opts.Log}
	s.smtp = srv
	return s
}

// Hooks are optional callbacks for instrumentation (metrics). They must
// not block.
type Hooks struct {
	// Recipient is called once per recipient outcome with the reply code
	// and enhanced code class, the backend ("" if none was chosen) and
	// how long the recipient took from its RCPT.
	Recipient func(code int, enhanced smtp.EnhancedCode, backend string, dur time.Duration)
}

// SetHooks installs instrumentation callbacks.
func (s *Server) SetHooks(h Hooks) { s.hooks.Store(&h) }

// Serve accepts LMTP connections on l until the server stops. trusted says
// whether MAIL's AUTH= is believed on this listener (Config.Trusts).
func (s *Server) Serve(l net.Listener, trusted bool) error {
	err := s.smtp.Serve(listener{Listener: l, srv: s, trusted: trusted})
	if err == smtp.ErrServerClosed {
		return nil
	}
	return err
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.sessMu.Lock()
	active := len(s.sessions)
	s.sessMu.Unlock()
	return Stats{
		Sessions:     s.nsessions.Load(),
		Active:       active,
		Refused:      s.nrefused.Load(),
		Transactions: s.ntxn.Load(),
		Bytes:        s.nbytes.Load(),
		Delivered:    s.ndelivered.Load(),
		Deferred:     s.ndeferred.Load(),
		Rejected:     s.nrejected.Load(),
	}
}

// track registers an accepted connection, unless that would exceed
// MaxConnections.
func (s *Server) track(c *mtaConn) bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if max := s.opts.Config.MaxConnections; max > 0 && len(s.conns) >= max {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *mtaConn) {
	s.connMu.Lock()
	delete(s.conns, c)
	s.connMu.Unlock()
}

func (s *Server) openConns() []*mtaConn {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	out := make([]*mtaConn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// Shutdown stops gracefully within ctx's deadline, which is the whole
// budget of the stop: it stops accepting; answers 421 to every client it is
// waiting on between transactions and closes it (RFC 5321 §3.8); lets
// transactions in progress run until a grace period before the deadline;
// then cancels the deliveries still running (their recipients get a 4xx,
// written during the grace period) and answers 421 to every client still
// waited on; and at the deadline closes whatever is left. An MTA whose
// connection closes without a reply retries; nothing is ever acknowledged
// that was not delivered.
func (s *Server) Shutdown(ctx context.Context) {
	s.draining.Store(true)
	done := make(chan struct{})
	go func() {
		s.smtp.Shutdown(context.Background())
		close(done)
	}()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Second)
	}
	grace := min(5*time.Second, time.Until(deadline)/4)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	phase := 0
	for {
		left := time.Until(deadline)
		if phase == 0 && left <= grace {
			phase = 1
			s.cancelDeliver()
		}
		for _, c := range s.openConns() {
			// Until the grace period, a client inside a transaction may
			// go on; after it, every client we wait on gets 421.
			if phase == 1 || !c.inTxn.Load() {
				c.shutdownIdle()
			}
		}
		select {
		case <-done:
			return
		default:
		}
		if left <= 0 {
			// What is left — a transaction that outlived the grace, a
			// client that stopped reading — is cut off, with a 421
			// where one can be said; the MTA retries what it got no
			// answer for.
			for _, c := range s.openConns() {
				c.cut()
			}
			<-done
			return
		}
		select {
		case <-done:
			return
		case <-tick.C:
		}
	}
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	if s.draining.Load() {
		return nil, replyShutdown
	}
	mc, _ := c.Conn().(*mtaConn)
	sess := &session{
		srv:    s,
		conn:   c,
		mc:     mc,
		id:     s.idPrefix + "-" + itoa(s.idSeq.Add(1)),
		helo:   c.Hostname(),
		remote: c.Conn().RemoteAddr().String(),
	}
	s.nsessions.Add(1)
	s.sessMu.Lock()
	s.sessions[sess] = struct{}{}
	s.sessMu.Unlock()
	return sess, nil
}

func (s *Server) endSession(sess *session) {
	s.sessMu.Lock()
	delete(s.sessions, sess)
	s.sessMu.Unlock()
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
