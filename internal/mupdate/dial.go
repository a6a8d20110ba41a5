package mupdate

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
)

// Endpoint says where a MUPDATE server is and how to log in to it. Client
// builds one from its Config; a package that keeps a connection of its
// own (the master replica's UPDATE stream) passes one to Dial. An
// Endpoint has no defaults: every field means what its comment says.
type Endpoint struct {
	Address  string // host:port
	AuthName string // SASL authentication id; "" logs in as nobody
	AuthzID  string // optional SASL authorization id
	Password string
	// TLS is "none" or "" (plain TCP), "starttls" (STARTTLS before
	// authenticating; an error if the server does not offer it) or "tls"
	// (TLS from the first byte).
	TLS string
	// TLSConfig is used for either TLS mode; nil means the system roots,
	// and an empty ServerName is taken from Address.
	TLSConfig *tls.Config
	// DialTimeout bounds the TCP connect, and the TLS handshake in mode
	// "tls"; 0 leaves them bounded by the context alone.
	DialTimeout time.Duration
	// HandshakeTimeout bounds reading the greeting, STARTTLS and
	// AUTHENTICATE; 0 leaves them bounded by the context alone.
	HandshakeTimeout time.Duration
	// MaxLiteral bounds each line and literal of the greeting and the
	// answers read during the handshake, as for ReadResponse (<= 0 means
	// DefaultMaxLiteral).
	MaxLiteral int
}

// Greeting is what a server's banner offered (cyrus-interop §10.2).
type Greeting struct {
	Mechanisms    []string // SASL mechanisms, upper case
	StartTLS      bool
	Compress      bool // COMPRESS "DEFLATE"
	PartialUpdate bool // UPDATE with a server list
	// Banner holds the arguments of the final "* OK" line: "MUPDATE",
	// the server name, "Cyrus IMAP", the version, and "(master)" for a
	// master or "mupdate://<master>" for a replica.
	Banner []string
}

// Conn is an open MUPDATE connection that has read the greeting, done
// STARTTLS if asked and authenticated. Its deadlines are cleared.
type Conn struct {
	NetConn  net.Conn // the TLS connection in either TLS mode
	Reader   *bufio.Reader
	Greeting Greeting
}

// Close closes the connection without LOGOUT.
func (c *Conn) Close() error { return c.NetConn.Close() }

// Dial connects to the server in ep and logs in. The context bounds all
// of it; ep's timeouts bound the phases. A failure the caller caused by
// cancelling wraps errCancelled, which Client uses to keep its breaker
// closed: it says nothing about the server. A caller's deadline that
// passed while the server did not greet does say something, and is
// reported as context.DeadlineExceeded.
func Dial(ctx context.Context, ep Endpoint) (*Conn, error) {
	switch ep.TLS {
	case "", "none", "starttls", "tls":
	default:
		return nil, fmt.Errorf("unknown TLS mode %q (want none, starttls or tls)", ep.TLS)
	}
	dctx := ctx
	if ep.DialTimeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, ep.DialTimeout)
		defer cancel()
	}
	var d net.Dialer
	raw, err := d.DialContext(dctx, "tcp", ep.Address)
	if err != nil {
		return nil, err
	}
	c := &Conn{NetConn: raw, Reader: bufio.NewReader(raw)}

	deadline, callerBound := time.Time{}, false
	if ep.HandshakeTimeout > 0 {
		deadline = time.Now().Add(ep.HandshakeTimeout)
	}
	if dl, ok := ctx.Deadline(); ok && (deadline.IsZero() || dl.Before(deadline)) {
		deadline, callerBound = dl, true
	}
	if err := raw.SetDeadline(deadline); err != nil {
		raw.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	err = c.handshake(dctx, ep)
	stop()
	if err == nil {
		err = raw.SetDeadline(time.Time{})
	}
	if err != nil {
		c.NetConn.Close()
		switch {
		case errors.Is(ctx.Err(), context.Canceled):
			err = fmt.Errorf("%w: %w (%w)", errCancelled, ctx.Err(), err)
		case ctx.Err() != nil || (callerBound && !time.Now().Before(deadline)):
			// The socket deadline can fire a moment before the context
			// notices its own; it was the caller's deadline all the
			// same, and the server did not greet within it.
			err = fmt.Errorf("no greeting within the caller's time: %w (%w)", context.DeadlineExceeded, err)
		}
		return nil, err
	}
	return c, nil
}

func (c *Conn) handshake(dctx context.Context, ep Endpoint) error {
	if ep.TLS == "tls" {
		if err := c.startTLS(dctx, ep); err != nil {
			return err
		}
	}
	g, err := c.readGreeting(ep.MaxLiteral)
	if err != nil {
		return err
	}
	if ep.TLS == "starttls" {
		if !g.StartTLS {
			return errors.New("server does not offer STARTTLS")
		}
		if err := c.write("S01 STARTTLS\r\n"); err != nil {
			return err
		}
		if err := c.awaitOK("S01", "STARTTLS", ep.MaxLiteral); err != nil {
			return err
		}
		if err := c.startTLS(dctx, ep); err != nil {
			return err
		}
		// RFC 3656 §5.1: the server sends its greeting again over TLS,
		// with the mechanisms now allowed.
		if g, err = c.readGreeting(ep.MaxLiteral); err != nil {
			return err
		}
	}
	c.Greeting = g
	return c.authenticate(ep)
}

func (c *Conn) write(s string) error {
	_, err := io.WriteString(c.NetConn, s)
	return err
}

func (c *Conn) startTLS(ctx context.Context, ep Endpoint) error {
	cfg := ep.TLSConfig
	if cfg == nil {
		cfg = &tls.Config{}
	} else {
		cfg = cfg.Clone()
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(ep.Address)
		if err != nil {
			host = ep.Address
		}
		cfg.ServerName = host
	}
	tc := tls.Client(c.NetConn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.NetConn = tc
	c.Reader = bufio.NewReader(tc)
	return nil
}

// readGreeting reads the untagged capability lines up to "* OK MUPDATE"
// (cyrus-interop §10.2).
func (c *Conn) readGreeting(max int) (Greeting, error) {
	var g Greeting
	for i := 0; ; i++ {
		if i > 100 {
			return g, protoErr("greeting too long")
		}
		r, err := ReadResponse(c.Reader, max)
		if err != nil {
			return g, fmt.Errorf("reading greeting: %w", err)
		}
		if r.Tag != "*" {
			return g, protoErr("tagged response %q in greeting", r.Tag)
		}
		switch r.Kind {
		case "AUTH":
			for _, m := range r.Args {
				g.Mechanisms = append(g.Mechanisms, strings.ToUpper(m))
			}
		case "STARTTLS":
			g.StartTLS = true
		case "COMPRESS":
			for _, a := range r.Args {
				g.Compress = g.Compress || strings.EqualFold(a, "DEFLATE")
			}
		case "PARTIAL-UPDATE":
			g.PartialUpdate = true
		case "OK":
			if len(r.Args) == 0 || !strings.EqualFold(r.Args[0], "MUPDATE") {
				return g, protoErr("greeting is not MUPDATE: %q", r.Args)
			}
			g.Banner = r.Args
			return g, nil
		case "BYE", "NO", "BAD":
			return g, fmt.Errorf("server refused connection: %s %q", r.Kind, strings.Join(r.Args, " "))
		default:
			// Anything newer: not used.
		}
	}
}

// awaitOK reads responses until the one tagged tag, which must be OK.
// Untagged data is passed over; BYE is an error.
func (c *Conn) awaitOK(tag, what string, max int) error {
	for {
		r, err := ReadResponse(c.Reader, max)
		if err != nil {
			return err
		}
		if r.Tag == "*" {
			if r.Kind == "BYE" {
				return fmt.Errorf("server said BYE %q", strings.Join(r.Args, " "))
			}
			continue
		}
		if r.Tag != tag {
			return protoErr("response tagged %q to command %q", r.Tag, tag)
		}
		switch r.Kind {
		case "OK":
			return nil
		case "NO", "BAD":
			return fmt.Errorf("%s refused: %s %q", what, r.Kind, strings.Join(r.Args, " "))
		}
		return protoErr("unexpected %s response to %s", r.Kind, what)
	}
}

// authenticate logs in with SASL PLAIN and an initial response, in the
// form Cyrus's own client sends: the mechanism quoted and the response as
// a non-synchronising literal (cyrus-interop §10.6). Cyrus's server reads
// further challenges as bare lines, so only a one-round mechanism is safe.
// Nothing may be sent after AUTHENTICATE before its answer: Cyrus 3.6
// discards what a client pipelined behind it.
func (c *Conn) authenticate(ep Endpoint) error {
	if ep.AuthName == "" {
		return nil
	}
	plain := false
	for _, m := range c.Greeting.Mechanisms {
		plain = plain || m == "PLAIN"
	}
	if !plain {
		return fmt.Errorf("server does not offer SASL PLAIN (offers %q); it may need allowplaintext or TLS", c.Greeting.Mechanisms)
	}
	_, ir, err := sasl.NewPlainClient(ep.AuthzID, ep.AuthName, ep.Password).Start()
	if err != nil {
		return err
	}
	b64 := base64.StdEncoding.EncodeToString(ir)
	if err := c.write(fmt.Sprintf("A01 AUTHENTICATE \"PLAIN\" {%d+}\r\n%s\r\n", len(b64), b64)); err != nil {
		return err
	}
	if err := c.awaitOK("A01", "AUTHENTICATE", ep.MaxLiteral); err != nil {
		return fmt.Errorf("authentication as %q failed: %w", ep.AuthName, err)
	}
	return nil
}
