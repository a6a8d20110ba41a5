// Package fakelmtp is a scripted LMTP backend for tests: a real go-smtp
// LMTP server on a loopback port that behaves like a Cyrus backend lmtpd
// where it matters to a frontend proxy, and whose replies a test can script
// per recipient.
//
// Like Cyrus lmtpd on TCP (imap/lmtpd.c admits only admins) it requires AUTH PLAIN from
// an admin identity before MAIL and answers "430 Authentication required"
// otherwise; the default credentials are User/Password. It records every
// transaction it saw (envelope, body, which recipients it accepted) and can
// be stopped and restarted on the same address, made to drop the connection
// during DATA, or made to stall without answering, so that delivery code can
// be tested against the failures that matter for not losing mail.
//
// Typical use:
//
//	srv := fakelmtp.New(t)
//	srv.SetRcptReply("nobody@example.org", fakelmtp.UserUnknown)
//	... deliver to srv.Addr() as fakelmtp.User / fakelmtp.Password ...
//	msgs := srv.Messages()
package fakelmtp

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Default credentials the server requires, matching a Cyrus murder's
// proxy_authname "proxy" listed in the backend's lmtp_admins.
const (
	User     = "proxy"
	Password = "secret"
)

// Replies a Cyrus 3.6 backend gives, for scripting (texts as Cyrus sends them).
var (
	// UserUnknown is lmtpd's RCPT reply for a mailbox that does not exist.
	UserUnknown = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
	// OverQuotaTemp is the default over-quota reply (lmtp_over_quota_perm_failure: no).
	OverQuotaTemp = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Over quota"}
	// OverQuotaPerm is the over-quota reply with lmtp_over_quota_perm_failure: yes.
	OverQuotaPerm = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "Over quota"}
	// AuthRequired is lmtpd's reply to MAIL before AUTH (soft_noauth: on).
	AuthRequired = &smtp.SMTPError{Code: 430, Message: "Authentication required"}
)

// Message is one transaction the server saw, from MAIL to the end of DATA.
type Message struct {
	// From is the reverse-path, "" for <>.
	From string
	// Auth is the MAIL AUTH= parameter: nil when absent, "" for AUTH=<>.
	Auth *string
	// AuthUser is the SASL identity the session authenticated as, if any.
	AuthUser string
	// Rcpts are the recipients accepted at RCPT, in order (as the client sent them).
	Rcpts []string
	// Delivered are the recipients that got a 2xx reply after DATA.
	Delivered []string
	// Body is the message as received (dot-unstuffed, CRLF line ends).
	Body []byte
	// TLS is true when the session had negotiated STARTTLS.
	TLS bool
	// Dropped is true when the server closed the connection or stalled
	// instead of giving the final replies (DropDuringData, StallData).
	Dropped bool
}

// DeliveredTo reports whether addr got a 2xx reply after DATA.
func (m Message) DeliveredTo(addr string) bool {
	for _, a := range m.Delivered {
		if a == addr {
			return true
		}
	}
	return false
}

type config struct {
	user, pass string
	noAuth     bool
	tlsConfig  *tls.Config
}

// Option changes how New sets up the server.
type Option func(*config)

// WithoutAuth makes the server accept MAIL without authentication and not
// advertise AUTH, like lmtpd on a UNIX socket or started with -a.
func WithoutAuth() Option {
	return func(c *config) { c.noAuth = true }
}

// WithTLS makes the server offer STARTTLS with this configuration.
func WithTLS(cfg *tls.Config) Option {
	return func(c *config) { c.tlsConfig = cfg }
}

// Server is a running fake backend. All methods are safe for concurrent use.
type Server struct {
	t    testing.TB
	cfg  config
	addr string

	mu           sync.Mutex
	srv          *smtp.Server
	ln           net.Listener
	stopped      chan struct{} // closed by Stop, releases stalled handlers
	stall        chan struct{} // non-nil while stalled; closed on Stall(false)
	drop         bool
	stallData    bool
	mailReply    *smtp.SMTPError
	rcptReplies  map[string]*smtp.SMTPError
	dataReplies  map[string]*smtp.SMTPError
	messages     []Message
	connections  int
	transactions int
	wg           sync.WaitGroup
}

// New starts a server on 127.0.0.1 with a kernel-chosen port. It is stopped
// when the test ends.
func New(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{
		t:           t,
		cfg:         config{user: User, pass: Password},
		rcptReplies: map[string]*smtp.SMTPError{},
		dataReplies: map[string]*smtp.SMTPError{},
	}
	for _, o := range opts {
		o(&s.cfg)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fakelmtp: listen: %v", err)
	}
	s.addr = l.Addr().String()
	s.serve(l)
	t.Cleanup(s.Stop)
	return s
}

// Addr is the "host:port" the server listens on; it stays the same across
// Stop and Start.
func (s *Server) Addr() string { return s.addr }

// Start listens again on the same address after Stop. It fails the test if
// the address cannot be reused.
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	running := s.srv != nil
	s.mu.Unlock()
	if running {
		return
	}
	l, err := net.Listen("tcp", s.addr)
	if err != nil {
		s.t.Fatalf("fakelmtp: listen again on %s: %v", s.addr, err)
	}
	s.serve(l)
}

// Stop closes the listener and every open connection, as a crashed or
// restarted backend would. Recorded messages and scripted replies survive.
func (s *Server) Stop() {
	s.mu.Lock()
	srv, ln := s.srv, s.ln
	s.srv, s.ln = nil, nil
	if srv != nil {
		close(s.stopped)
	}
	s.mu.Unlock()
	if srv != nil {
		// Close the listener ourselves too: go-smtp registers it only
		// once Serve runs, which may be after a quick Close.
		ln.Close()
		srv.Close()
	}
	s.wg.Wait()
}

func (s *Server) serve(l net.Listener) {
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.LMTP = true
	srv.Domain = "fakelmtp"
	srv.AllowInsecureAuth = true
	srv.TLSConfig = s.cfg.tlsConfig
	srv.ErrorLog = discardLogger{}
	s.mu.Lock()
	cl := &countingListener{Listener: l, s: s}
	s.srv, s.ln = srv, cl
	s.stopped = make(chan struct{})
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		srv.Serve(cl)
	}()
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...interface{}) {}
func (discardLogger) Println(...interface{})        {}

type countingListener struct {
	net.Listener
	s *Server
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.mu.Lock()
		l.s.connections++
		l.s.mu.Unlock()
	}
	return c, err
}

// SetMailReply makes MAIL fail with reply (nil restores acceptance).
func (s *Server) SetMailReply(reply *smtp.SMTPError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mailReply = reply
}

// SetRcptReply makes RCPT TO:<addr> fail with reply (nil restores acceptance).
func (s *Server) SetRcptReply(addr string, reply *smtp.SMTPError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reply == nil {
		delete(s.rcptReplies, addr)
	} else {
		s.rcptReplies[addr] = reply
	}
}

// SetDataReply makes the post-DATA reply for addr be reply (nil restores 250).
func (s *Server) SetDataReply(addr string, reply *smtp.SMTPError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reply == nil {
		delete(s.dataReplies, addr)
	} else {
		s.dataReplies[addr] = reply
	}
}

// DropDuringData makes the server read the whole message after DATA and
// then close the connection without giving any final reply.
func (s *Server) DropDuringData(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop = on
}

// StallData makes the server read the whole message after DATA and then
// never give the final replies for transactions already in DATA (they are
// released only by Stop); StallData(false) affects later ones. A backend
// hung in delivery.
func (s *Server) StallData(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stallData = on
}

// Stall makes the server stop answering: LHLO on new connections, and
// RSET, MAIL, RCPT, AUTH and DATA on existing ones, block until Stall(false)
// or Stop. (NOOP is answered by go-smtp itself and cannot be stalled.)
func (s *Server) Stall(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case on && s.stall == nil:
		s.stall = make(chan struct{})
	case !on && s.stall != nil:
		close(s.stall)
		s.stall = nil
	}
}

func (s *Server) waitStall() {
	s.mu.Lock()
	ch, stopped := s.stall, s.stopped
	s.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-stopped:
	}
}

// Messages returns a copy of every transaction seen so far, in order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.messages))
	copy(out, s.messages)
	return out
}

// Connections counts accepted TCP connections.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connections
}

// Transactions counts MAIL commands the server accepted.
func (s *Server) Transactions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.transactions
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	s.waitStall()
	return &session{s: s, conn: c}, nil
}

type session struct {
	s        *Server
	conn     *smtp.Conn
	authUser string
	mail     bool
	from     string
	auth     *string
	rcpts    []string
}

var (
	_ smtp.LMTPSession = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

func (se *session) AuthMechanisms() []string {
	if se.s.cfg.noAuth {
		return nil
	}
	return []string{sasl.Plain}
}

func (se *session) Auth(mech string) (sasl.Server, error) {
	se.s.waitStall()
	if mech != sasl.Plain || se.s.cfg.noAuth {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		// Cyrus lmtpd only lets admins in, and the frontend proxies with
		// an empty authzid.
		if user != se.s.cfg.user || pass != se.s.cfg.pass || (identity != "" && identity != user) {
			return smtp.ErrAuthFailed
		}
		se.authUser = user
		return nil
	}), nil
}

func (se *session) Reset() {
	se.s.waitStall()
	se.mail, se.from, se.auth, se.rcpts = false, "", nil, nil
}

func (se *session) Logout() error { return nil }

func (se *session) Mail(from string, opts *smtp.MailOptions) error {
	se.s.waitStall()
	if !se.s.cfg.noAuth && se.authUser == "" {
		return AuthRequired
	}
	se.s.mu.Lock()
	reply := se.s.mailReply
	if reply == nil {
		se.s.transactions++
	}
	se.s.mu.Unlock()
	if reply != nil {
		return reply
	}
	se.mail, se.from, se.rcpts = true, from, nil
	se.auth = nil
	if opts != nil && opts.Auth != nil {
		a := *opts.Auth
		se.auth = &a
	}
	return nil
}

func (se *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	se.s.waitStall()
	se.s.mu.Lock()
	reply := se.s.rcptReplies[to]
	se.s.mu.Unlock()
	if reply != nil {
		return reply
	}
	se.rcpts = append(se.rcpts, to)
	return nil
}

func (se *session) Data(r io.Reader) error {
	return se.LMTPData(r, nopStatus{})
}

type nopStatus struct{}

func (nopStatus) SetStatus(string, error) {}

var errDropped = errors.New("fakelmtp: connection dropped during DATA")

func (se *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	se.s.waitStall()
	var body bytes.Buffer
	if _, err := io.Copy(&body, r); err != nil {
		return err
	}
	m := Message{
		From:     se.from,
		Auth:     se.auth,
		AuthUser: se.authUser,
		Rcpts:    append([]string(nil), se.rcpts...),
		Body:     body.Bytes(),
	}
	_, m.TLS = se.conn.TLSConnectionState()
	se.s.mu.Lock()
	drop, stall, stopped := se.s.drop, se.s.stallData, se.s.stopped
	replies := make([]*smtp.SMTPError, len(se.rcpts))
	for i, rc := range se.rcpts {
		replies[i] = se.s.dataReplies[rc]
	}
	se.s.mu.Unlock()
	if drop {
		m.Dropped = true
		se.s.record(m)
		se.conn.Conn().Close()
		return errDropped
	}
	if stall {
		m.Dropped = true
		se.s.record(m)
		<-stopped
		return errDropped
	}
	for i, rc := range se.rcpts {
		if replies[i] == nil {
			m.Delivered = append(m.Delivered, rc)
		}
	}
	// Recorded before any reply goes out: a client that got its 250 must
	// find the message here.
	se.s.record(m)
	for i, rc := range se.rcpts {
		if replies[i] != nil {
			status.SetStatus(rc, replies[i])
		} else {
			status.SetStatus(rc, nil)
		}
	}
	return nil
}

func (s *Server) record(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, m)
}
