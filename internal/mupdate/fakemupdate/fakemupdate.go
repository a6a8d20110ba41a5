// Package fakemupdate is a scripted MUPDATE server on loopback for tests.
// It answers the way Cyrus 3.6's "mupdate -m" does on the wire (recorded
// transcripts: every string a non-synchronising literal, the same greeting
// and completion texts), and can be told to misbehave: answer with garbage,
// stall, or go away and come back on the same address.
//
//	srv := fakemupdate.New(t)
//	srv.Set("user.alice", "backend1!default", "alice\tlrswipkxtecdan\t")
//	c := mupdate.New("master-mupdate", mupdate.Config{Address: srv.Addr(),
//		AuthName: fakemupdate.DefaultUser, Password: fakemupdate.DefaultPassword}, nil)
package fakemupdate

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/mupdate"
)

// The credentials the server accepts unless SetCredentials changes them.
const (
	DefaultUser     = "mupdate"
	DefaultPassword = "mupdatepw"
)

type entry struct {
	location, acl string
	reserved      bool
}

// Server is a fake MUPDATE master. All methods are safe for concurrent use.
type Server struct {
	t testing.TB

	mu          sync.Mutex
	addr        string
	ln          net.Listener
	conns       map[net.Conn]struct{}
	boxes       map[string]entry
	user, pass  string
	garbage     bool
	stall       bool
	connections int
	finds       int
	noops       int
	findsFor    map[string]int
	tlsConfig   *tls.Config
	tlsMode     string
	wg          sync.WaitGroup
}

// SetTLS makes new connections use TLS: mode "tls" from the first byte,
// or "starttls" (advertised in the banner, as Cyrus does when it has a
// certificate, and entered with the STARTTLS command).
func (s *Server) SetTLS(cfg *tls.Config, mode string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tlsConfig, s.tlsMode = cfg, mode
}

// New starts a server on 127.0.0.1 with a free port. With a non-nil t the
// server is stopped when the test ends and a failure to listen fails the
// test; with nil t such a failure panics.
func New(t testing.TB) *Server {
	s := &Server{
		t:        t,
		addr:     "127.0.0.1:0",
		conns:    map[net.Conn]struct{}{},
		boxes:    map[string]entry{},
		findsFor: map[string]int{},
		user:     DefaultUser,
		pass:     DefaultPassword,
	}
	if err := s.Start(); err != nil {
		if t != nil {
			t.Helper()
			t.Fatalf("fakemupdate: %v", err)
		}
		panic(err)
	}
	if t != nil {
		t.Cleanup(s.Stop)
	}
	return s
}

// Addr returns "127.0.0.1:port"; it stays the same across Stop and Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Start listens again on the same address after Stop. It is a no-op if
// the server is running.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.ln = ln
	s.addr = ln.Addr().String()
	s.wg.Add(1)
	go s.accept(ln)
	return nil
}

// Stop closes the listener and every connection, as a dying master does.
func (s *Server) Stop() {
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Set makes name an active mailbox at location ("server!partition") with
// the ACL string acl ("id\trights\t...").
func (s *Server) Set(name, location, acl string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.boxes[name] = entry{location: location, acl: acl}
}

// Reserve makes name a reserved mailbox (being created or moved).
func (s *Server) Reserve(name, location string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.boxes[name] = entry{location: location, reserved: true}
}

// Delete removes name.
func (s *Server) Delete(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.boxes, name)
}

// SetCredentials sets the only user and password AUTHENTICATE accepts.
func (s *Server) SetCredentials(user, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.user, s.pass = user, password
}

// SetGarbage makes FIND answers unparsable junk.
func (s *Server) SetGarbage(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.garbage = on
}

// SetStall makes the server accept connections and read commands but
// never answer (no greeting for new connections either).
func (s *Server) SetStall(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stall = on
}

// Connections returns how many connections were accepted.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connections
}

// Finds returns how many FIND commands were received.
func (s *Server) Finds() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finds
}

// FindsFor returns how many FIND commands asked for name.
func (s *Server) FindsFor(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.findsFor[name]
}

// Noops returns how many NOOP commands were received.
func (s *Server) Noops() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.noops
}

func (s *Server) accept(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.ln != ln { // stopped meanwhile
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.connections++
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(c)
	}
}

func (s *Server) stalled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stall
}

// lit encodes a string as Cyrus does: a non-synchronising literal.
func lit(v string) string {
	return fmt.Sprintf("{%d+}\r\n%s", len(v), v)
}

const greeting = "* AUTH \"PLAIN\" \"LOGIN\"\r\n" +
	"* COMPRESS \"DEFLATE\"\r\n" +
	"* PARTIAL-UPDATE\r\n" +
	"* OK MUPDATE \"127.0.0.1\" \"Cyrus IMAP\" \"3.6.1-Debian-3.6.1-4+deb12u5\" \"(master)\"\r\n"

func (s *Server) serve(raw net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, raw)
		s.mu.Unlock()
		raw.Close()
	}()
	c := raw
	s.mu.Lock()
	tlsConfig, tlsMode := s.tlsConfig, s.tlsMode
	s.mu.Unlock()
	if tlsMode == "tls" {
		c = tls.Server(c, tlsConfig)
	}
	br := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	send := func(str string) bool {
		w.WriteString(str)
		return w.Flush() == nil
	}
	banner := greeting
	if tlsMode == "starttls" {
		// Cyrus lists STARTTLS before the OK line while TLS is not
		// active (Cyrus imap/mupdate.c).
		i := strings.Index(greeting, "* OK")
		banner = greeting[:i] + "* STARTTLS\r\n" + greeting[i:]
	}
	if !s.stalled() && !send(banner) {
		return
	}
	authed := false
	for {
		cmd, err := mupdate.ReadResponse(br, 0)
		if err != nil {
			if errors.Is(err, mupdate.ErrProtocol) && !s.stalled() {
				send("* BAD \"Need command\"\r\n")
			}
			return
		}
		tag, args := cmd.Tag, cmd.Args
		if cmd.Kind == "FIND" || cmd.Kind == "NOOP" {
			s.mu.Lock()
			if cmd.Kind == "NOOP" {
				s.noops++
			} else {
				s.finds++
				if len(args) > 0 {
					s.findsFor[args[0]]++
				}
			}
			s.mu.Unlock()
		}
		if s.stalled() {
			continue
		}
		var out string
		switch cmd.Kind {
		case "LOGOUT":
			send(tag + " OK \"bye-bye\"\r\n")
			return
		case "AUTHENTICATE":
			out = s.authenticate(tag, args, authed)
			authed = authed || strings.HasPrefix(out, tag+" OK")
		case "NOOP":
			if !authed {
				out = tag + " BAD \"Please login first\"\r\n"
			} else {
				out = tag + " OK \"Noop done\"\r\n"
			}
		case "FIND":
			out = s.find(tag, args, authed)
		case "STARTTLS":
			if tlsMode != "starttls" || authed {
				out = tag + " BAD \"Unrecognized command\"\r\n"
				break
			}
			if !send(tag + " OK \"Begin TLS negotiation now\"\r\n") {
				return
			}
			// The banner is sent again over TLS, without STARTTLS.
			c = tls.Server(c, tlsConfig)
			br, w = bufio.NewReader(c), bufio.NewWriter(c)
			tlsMode = "active"
			out = greeting
		default:
			out = tag + " BAD \"Unrecognized command\"\r\n"
		}
		if !send(out) {
			return
		}
	}
}

func (s *Server) authenticate(tag string, args []string, authed bool) string {
	if authed {
		return tag + " BAD \"already authenticated\"\r\n"
	}
	if len(args) != 2 || !strings.EqualFold(args[0], "PLAIN") {
		return tag + " NO \"unsupported mechanism or missing initial response\"\r\n"
	}
	raw, err := base64.StdEncoding.DecodeString(args[1])
	if err != nil {
		return tag + " NO \"invalid base64\"\r\n"
	}
	parts := strings.Split(string(raw), "\x00")
	s.mu.Lock()
	user, pass := s.user, s.pass
	s.mu.Unlock()
	if len(parts) != 3 || (parts[0] != "" && parts[0] != parts[1]) || parts[1] != user || parts[2] != pass {
		// What Cyrus answered in the recorded transcript for an identity
		// it does not accept.
		return tag + " NO \"undefined error!\"\r\n"
	}
	return tag + " OK \"Authenticated\"\r\n"
}

func (s *Server) find(tag string, args []string, authed bool) string {
	if !authed {
		return tag + " BAD \"Please login first\"\r\n"
	}
	if len(args) != 1 {
		return tag + " BAD \"Missing arguments\"\r\n"
	}
	s.mu.Lock()
	e, ok := s.boxes[args[0]]
	garbage := s.garbage
	s.mu.Unlock()
	if garbage {
		return tag + " MAILBOX \x00\x01junk {not-a-literal} \"unterminated\r\n"
	}
	var b strings.Builder
	if ok {
		if e.reserved {
			fmt.Fprintf(&b, "%s RESERVE %s %s\r\n", tag, lit(args[0]), lit(e.location))
		} else {
			fmt.Fprintf(&b, "%s MAILBOX %s %s %s\r\n", tag, lit(args[0]), lit(e.location), lit(e.acl))
		}
	}
	b.WriteString(tag + " OK \"Search completed\"\r\n")
	return b.String()
}
