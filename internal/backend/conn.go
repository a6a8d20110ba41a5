package backend

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// deadlineConn puts our deadline on every Read and Write and ignores the
// deadlines go-smtp sets. go-smtp resets the deadline to zero after each
// command and sets none while the DATA body is written, so a backend that
// stops reading mid-body would otherwise block us forever.
//
// The deadline is min(now+idle, hard) when idle > 0, else hard: commands run
// with a fixed deadline, while the body and the final replies (which may
// take long for a big message or many recipients) must only keep making
// progress, within the transaction deadline.
type deadlineConn struct {
	net.Conn
	mu   sync.Mutex
	hard time.Time
	idle time.Duration
}

func (d *deadlineConn) setPhase(hard time.Time, idle time.Duration) {
	d.mu.Lock()
	d.hard, d.idle = hard, idle
	d.mu.Unlock()
}

func (d *deadlineConn) deadline() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.idle > 0 {
		t := time.Now().Add(d.idle)
		if d.hard.IsZero() || t.Before(d.hard) {
			return t
		}
	}
	return d.hard
}

func (d *deadlineConn) Read(b []byte) (int, error) {
	if err := d.Conn.SetReadDeadline(d.deadline()); err != nil {
		return 0, err
	}
	return d.Conn.Read(b)
}

func (d *deadlineConn) Write(b []byte) (int, error) {
	if err := d.Conn.SetWriteDeadline(d.deadline()); err != nil {
		return 0, err
	}
	return d.Conn.Write(b)
}

func (d *deadlineConn) SetDeadline(time.Time) error      { return nil }
func (d *deadlineConn) SetReadDeadline(time.Time) error  { return nil }
func (d *deadlineConn) SetWriteDeadline(time.Time) error { return nil }

// greetedConn replays a synthetic 220 greeting before the real stream. After
// we negotiated STARTTLS ourselves (go-smtp v0.25 offers STARTTLS only for
// SMTP clients, not LMTP ones), the go-smtp client still expects to read a
// greeting; RFC 3207 §4.2 says the server sends none after the handshake.
type greetedConn struct {
	net.Conn
	pending []byte
}

func (g *greetedConn) Read(b []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(b, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(b)
}

// bconn is one backend connection, fresh or pooled.
type bconn struct {
	target   Target
	dc       *deadlineConn
	c        *smtp.Client
	lastUsed time.Time
}

func (b *bconn) close() {
	b.c.Close()
}

// quit sends QUIT (cyrus-interop §8.4: Cyrus does so on shutdown) and closes.
func (b *bconn) quit(d time.Duration) {
	b.dc.setPhase(time.Now().Add(d), 0)
	if err := b.c.Quit(); err != nil {
		b.c.Close()
	}
}

// stageError is a failure while setting up a connection: which stage, and
// either the backend's reply or a transport error.
type stageError struct {
	stage Stage
	reply *smtp.SMTPError
	err   error
}

func (e *stageError) Error() string {
	if e.reply != nil {
		return fmt.Sprintf("%s: backend replied %d %s", e.stage, e.reply.Code, e.reply.Message)
	}
	return fmt.Sprintf("%s: %v", e.stage, e.err)
}

// dial opens and prepares a connection: greeting, LHLO, STARTTLS for /tls
// targets, AUTH PLAIN (cyrus-interop §8.1, §8.2). The whole setup shares
// ConnectTimeout, like Cyrus's client_timeout.
func (p *Pool) dial(ctx context.Context, t Target) (*bconn, *stageError) {
	cfg := &p.cfg
	end := time.Now().Add(cfg.ConnectTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(end) {
		end = d
	}
	dctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	var nd net.Dialer
	raw, err := nd.DialContext(dctx, t.Network, t.Address)
	if err != nil {
		return nil, &stageError{stage: StageConnect, err: err}
	}
	dc := &deadlineConn{Conn: raw}
	dc.setPhase(end, 0)
	// Closing the socket is the only way to interrupt a blocked read or a
	// TLS handshake when ctx is cancelled.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	fail := func(se *stageError) (*bconn, *stageError) {
		raw.Close()
		if ctx.Err() != nil && se.err != nil {
			se.err = errors.Join(ctx.Err(), se.err)
		}
		return nil, se
	}

	var conn net.Conn = dc
	if t.TLS {
		tconn, err := startTLS(dctx, dc, t, cfg)
		if err != nil {
			return fail(&stageError{stage: StageConnect, err: err})
		}
		conn = &greetedConn{Conn: tconn, pending: []byte("220 TLS established\r\n")}
	}
	c := smtp.NewClientLMTP(conn)
	if err := c.Hello(cfg.HeloName); err != nil {
		return fail(&stageError{stage: StageConnect, err: err})
	}
	if !t.NoAuth && cfg.AuthName != "" {
		if !c.SupportsAuth(sasl.Plain) {
			return fail(&stageError{stage: StageAuth, err: errors.New("backend does not offer AUTH PLAIN (allowplaintext off? use a /tls server string)")})
		}
		// Empty authzid: the frontend proxies as itself, and lmtpd accepts
		// only admins (cyrus-interop §8.2).
		if err := c.Auth(sasl.NewPlainClient("", cfg.AuthName, cfg.Password)); err != nil {
			var se *smtp.SMTPError
			if errors.As(err, &se) && validReply(se.Code) {
				return fail(&stageError{stage: StageAuth, reply: se})
			}
			return fail(&stageError{stage: StageAuth, err: err})
		}
	}
	if !stop() {
		return fail(&stageError{stage: StageConnect, err: ctx.Err()})
	}
	return &bconn{target: t, dc: dc, c: c}, nil
}

// startTLS runs greeting, LHLO and STARTTLS by hand on the plain connection
// and returns the TLS connection after the handshake.
func startTLS(ctx context.Context, dc *deadlineConn, t Target, cfg *Config) (*tls.Conn, error) {
	// An unbuffered-enough reader: the server sends nothing after its 220
	// to STARTTLS until our ClientHello, so nothing TLS can be swallowed.
	tp := textproto.NewConn(struct {
		io.Reader
		io.Writer
		io.Closer
	}{bufio.NewReader(dc), dc, dc})
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if err := tp.PrintfLine("LHLO %s", cfg.HeloName); err != nil {
		return nil, err
	}
	_, msg, err := tp.ReadResponse(250)
	if err != nil {
		return nil, fmt.Errorf("LHLO: %w", err)
	}
	offered := false
	for _, line := range strings.Split(msg, "\n")[1:] {
		if strings.EqualFold(strings.TrimSpace(line), "STARTTLS") {
			offered = true
		}
	}
	if !offered {
		return nil, errors.New("backend does not offer STARTTLS")
	}
	if err := tp.PrintfLine("STARTTLS"); err != nil {
		return nil, err
	}
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, fmt.Errorf("STARTTLS: %w", err)
	}
	tc := cfg.TLSConfig
	if tc == nil {
		tc = &tls.Config{}
	}
	if tc.ServerName == "" {
		tc = tc.Clone()
		tc.ServerName = t.host()
	}
	conn := tls.Client(dc, tc)
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return conn, nil
}

// validReply reports whether code is a final negative reply a backend may
// legitimately give (4xx/5xx). Anything else where a refusal was expected
// means we and the backend disagree on the protocol state.
func validReply(code int) bool {
	return code >= 400 && code <= 599
}
