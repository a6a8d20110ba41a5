package backend

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/emersion/go-smtp"
	"golang.org/x/sys/unix"
)

// conn is one backend connection, set up (greeted, LHLO done, TLS and AUTH
// as configured) and between transactions.
//
// It speaks LMTP itself rather than through go-smtp's client, because
// go-smtp's client sends one command per round trip (no RFC 2920
// pipelining) and walks every byte of the body through its dot-writer; the
// body here arrives already in wire form (package wire).
type conn struct {
	target   Target
	raw      net.Conn // the TCP or unix connection, or the TLS one over it
	r        *bufio.Reader
	w        *bufio.Writer
	tls      bool
	auth     bool // the backend advertised AUTH, so MAIL carries AUTH=
	lastUsed time.Time

	// For clean, made once per connection so that the check between
	// transactions allocates nothing.
	rc     syscall.RawConn
	peek   func(fd uintptr) bool
	idle   bool
	peekB  [1]byte
	peeked bool // rc was looked up
}

// setupError is a failure while setting up a connection: its stage and
// either the backend's refusal or a transport error.
type setupError struct {
	stage Stage
	reply *smtp.SMTPError
	err   error
}

func (e *setupError) Error() string {
	if e.reply != nil {
		return fmt.Sprintf("%s: backend replied %s", e.stage, FormatReply(e.reply))
	}
	return fmt.Sprintf("%s: %v", e.stage, e.err)
}

func (e *setupError) Unwrap() error { return e.err }

// ErrNotAllowed is returned for a server string whose host is not in
// Config.AllowedHosts.
var ErrNotAllowed = errors.New("host not in backends.allowed_hosts")

// dial opens and prepares a connection: greeting, LHLO, STARTTLS (for /tls
// targets, or every target with RequireTLS), LHLO again, AUTH PLAIN as the
// proxy identity with an empty authzid (Cyrus imap/backend.c
// backend_connect and imap/lmtpd.c: lmtpd admits only admins). The whole
// setup shares ConnectTimeout, like Cyrus's client_timeout.
func (p *Pool) dial(ctx context.Context, t Target) (*conn, *setupError) {
	cfg := &p.cfg
	if !cfg.allowed(t) {
		return nil, &setupError{stage: StageConnect, err: fmt.Errorf("%w: %s", ErrNotAllowed, t.host())}
	}
	end := time.Now().Add(cfg.ConnectTimeout)
	dctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	var nd net.Dialer
	raw, err := nd.DialContext(dctx, t.Network, t.Address)
	if err != nil {
		return nil, &setupError{stage: StageConnect, err: err}
	}
	// Closing the socket is the only way to interrupt a blocked read or a
	// TLS handshake when ctx is cancelled.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	raw.SetDeadline(end)
	c := &conn{target: t, raw: raw, r: bufio.NewReaderSize(raw, 4096), w: bufio.NewWriterSize(raw, 32<<10)}
	fail := func(se *setupError) (*conn, *setupError) {
		raw.Close()
		if ctx.Err() != nil && se.err != nil {
			se.err = errors.Join(ctx.Err(), se.err)
		}
		return nil, se
	}
	if rep, err := readReply(c.r); err != nil {
		return fail(&setupError{stage: StageConnect, err: fmt.Errorf("greeting: %w", err)})
	} else if rep.Code != 220 {
		return fail(&setupError{stage: StageConnect, reply: rep})
	}
	caps, se := c.lhlo(cfg.HeloName)
	if se != nil {
		return fail(se)
	}
	if t.TLS || cfg.RequireTLS {
		if _, ok := caps["STARTTLS"]; !ok {
			return fail(&setupError{stage: StageConnect, err: errors.New("backend does not offer STARTTLS")})
		}
		if err := c.startTLS(dctx, t, cfg); err != nil {
			return fail(&setupError{stage: StageConnect, err: err})
		}
		// RFC 3207 §4.2: forget what was learnt before TLS and ask again.
		if caps, se = c.lhlo(cfg.HeloName); se != nil {
			return fail(se)
		}
	}
	_, c.auth = caps["AUTH"]
	if !t.NoAuth && cfg.AuthName != "" {
		if se := c.authenticate(caps, cfg); se != nil {
			return fail(se)
		}
	}
	if !stop() {
		return fail(&setupError{stage: StageConnect, err: ctx.Err()})
	}
	raw.SetDeadline(time.Time{})
	return c, nil
}

// lhlo sends LHLO and returns the capabilities (keyword -> rest of line).
func (c *conn) lhlo(name string) (map[string]string, *setupError) {
	c.w.WriteString("LHLO " + name + "\r\n")
	if err := c.w.Flush(); err != nil {
		return nil, &setupError{stage: StageConnect, err: err}
	}
	rep, err := readReply(c.r)
	if err != nil {
		return nil, &setupError{stage: StageConnect, err: fmt.Errorf("LHLO: %w", err)}
	}
	if rep.Code != 250 {
		return nil, &setupError{stage: StageConnect, reply: rep}
	}
	caps := map[string]string{}
	for i, line := range strings.Split(rep.Message, "\n") {
		if i == 0 {
			continue // the server's name
		}
		k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
		caps[strings.ToUpper(k)] = v
	}
	return caps, nil
}

// startTLS runs STARTTLS and the handshake.
func (c *conn) startTLS(ctx context.Context, t Target, cfg *Config) error {
	c.w.WriteString("STARTTLS\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	rep, err := readReply(c.r)
	if err != nil {
		return fmt.Errorf("STARTTLS: %w", err)
	}
	if rep.Code != 220 {
		return fmt.Errorf("STARTTLS refused: %s", FormatReply(rep))
	}
	// Anything the server sent after its 220 arrived in clear text and
	// would be read as if it had come over TLS (the STARTTLS command
	// injection of CVE-2011-0411): refuse it.
	if c.r.Buffered() > 0 {
		return fmt.Errorf("%w: data after the STARTTLS reply", ErrProtocol)
	}
	tc, err := cfg.TLSConfig()
	if err != nil {
		return err
	}
	tc.ServerName = t.host()
	tlsConn := tls.Client(c.raw, tc)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.raw, c.tls = tlsConn, true
	c.r.Reset(tlsConn)
	c.w.Reset(tlsConn)
	return nil
}

// authenticate logs in with SASL PLAIN and an initial response (RFC 4954),
// which is what Cyrus's backends offer with allowplaintext or over TLS.
func (c *conn) authenticate(caps map[string]string, cfg *Config) *setupError {
	mechs, ok := caps["AUTH"]
	if !ok || !containsWord(mechs, "PLAIN") {
		return &setupError{stage: StageAuth, err: errors.New("backend does not offer AUTH PLAIN (allowplaintext off? use a /tls server string or backends.require_tls)")}
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + cfg.AuthName + "\x00" + cfg.Password))
	c.w.WriteString("AUTH PLAIN " + ir + "\r\n")
	if err := c.w.Flush(); err != nil {
		return &setupError{stage: StageAuth, err: err}
	}
	rep, err := readReply(c.r)
	if err != nil {
		return &setupError{stage: StageAuth, err: fmt.Errorf("AUTH: %w", err)}
	}
	if rep.Code == 334 {
		// A server that wants more than the initial response: cancel.
		c.w.WriteString("*\r\n")
		c.w.Flush()
		readReply(c.r)
		return &setupError{stage: StageAuth, err: errors.New("backend asked for a second SASL round")}
	}
	if rep.Code != 235 {
		return &setupError{stage: StageAuth, reply: rep}
	}
	return nil
}

func containsWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if strings.EqualFold(f, w) {
			return true
		}
	}
	return false
}

// clean reports whether nothing unread is waiting on the connection: no
// byte buffered and none readable on the socket, and the peer has not
// closed it. A connection with a reply we did not ask for must never serve
// another transaction, where that reply would be taken for the answer to a
// later command. The socket is looked at without blocking and without
// touching deadlines (MSG_PEEK|MSG_DONTWAIT).
func (c *conn) clean() bool {
	if c.r.Buffered() > 0 {
		return false
	}
	if !c.peeked {
		c.peeked = true
		nc := c.raw
		if tc, ok := nc.(*tls.Conn); ok {
			nc = tc.NetConn()
		}
		if sc, ok := nc.(syscall.Conn); ok {
			if rc, err := sc.SyscallConn(); err == nil {
				c.rc = rc
				c.peek = func(fd uintptr) bool {
					// recvfrom(2) with MSG_PEEK|MSG_DONTWAIT, called
					// directly: x/sys/unix.Recvfrom allocates for the
					// peer address nobody asked for.
					n, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.peekB[0])), 1,
						unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
					// EAGAIN: nothing there. n == 0: the peer closed.
					// Anything else read, or an error, is not clean.
					c.idle = e == unix.EAGAIN || (e == unix.EWOULDBLOCK && int(n) <= 0)
					return true
				}
			}
		}
	}
	if c.rc == nil {
		return false
	}
	c.idle = false
	err := c.rc.Read(c.peek)
	return err == nil && c.idle
}

// noop checks a connection that sat idle.
func (c *conn) noop(d time.Duration) error {
	c.raw.SetDeadline(time.Now().Add(d))
	defer c.raw.SetDeadline(time.Time{})
	c.w.WriteString("NOOP\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	rep, err := readReply(c.r)
	if err != nil {
		return err
	}
	if rep.Code != 250 {
		return fmt.Errorf("NOOP: %s", FormatReply(rep))
	}
	return nil
}

// quit sends QUIT (Cyrus does so on shutdown) and closes.
func (c *conn) quit(d time.Duration) {
	c.raw.SetDeadline(time.Now().Add(d))
	c.w.WriteString("QUIT\r\n")
	if c.w.Flush() == nil {
		readReply(c.r)
	}
	c.raw.Close()
}

func (c *conn) close() { c.raw.Close() }
