// Package fakemupdate is a scripted MUPDATE server on loopback for tests.
// It answers the way Cyrus 3.6's "mupdate -m" does on the wire (recorded
// transcripts: every string a non-synchronising literal, the same greeting
// and completion texts), and can be told to misbehave: answer with garbage,
// stall, or go away and come back on the same address.
//
// It also streams like the master: UPDATE dumps every mailbox, answers
// OK "streaming starts" and then pushes each change (Set, Reserve,
// Delete) to the connection, as the current state of the mailbox at the
// time it is sent, once per change, as Cyrus does. With HoldPushes the
// changes wait, as they wait for Cyrus's update_wait, until a NOOP (whose
// answer comes only after them) or Flush. Anything but NOOP and LOGOUT on
// a streaming connection is BAD "not legal when streaming".
//
//	srv := fakemupdate.New(t)
//	srv.Set("user.alice", "backend1!default", "alice\tlrswipkxtecdan\t")
//	cfg := mupdate.DefaultConfig()
//	cfg.Address, cfg.AuthName, cfg.Password = srv.Addr(), fakemupdate.DefaultUser, fakemupdate.DefaultPassword
//	c := mupdate.New("master-mupdate", cfg, nil)
package fakemupdate

import (
	"bufio"
	"compress/flate"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
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
	conns       map[*conn]struct{}
	boxes       map[string]entry
	synthetic   int
	synthServer []string
	user, pass  string
	garbage     bool
	stall       bool
	hold        bool
	dumpStall   int // entries a dump sends before it stalls; < 0: never
	connections int
	finds       int
	noops       int
	updates     int
	compresses  int
	findsFor    map[string]int
	tlsConfig   *tls.Config
	tlsMode     string
	wg          sync.WaitGroup
}

// conn is one client connection. Its writer is shared by the goroutine
// that serves the connection and by the pushes of Set, Reserve and
// Delete, so it is guarded by mu.
type conn struct {
	raw    net.Conn
	closed chan struct{}
	once   sync.Once

	mu        sync.Mutex
	w         *bufio.Writer
	fw        *flate.Writer // after COMPRESS
	streaming string        // the UPDATE tag once streaming
	servers   []string      // PARTIAL-UPDATE's servers; none: all
	dumping   bool
	pending   []string // names changed since the last push, one per change
}

func (c *conn) close() {
	c.once.Do(func() {
		close(c.closed)
		c.raw.Close()
	})
}

// flushLocked sends what is buffered, through the compressor if any.
func (c *conn) flushLocked() error {
	if err := c.w.Flush(); err != nil {
		return err
	}
	if c.fw != nil {
		return c.fw.Flush()
	}
	return nil
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
		t:         t,
		addr:      "127.0.0.1:0",
		conns:     map[*conn]struct{}{},
		boxes:     map[string]entry{},
		findsFor:  map[string]int{},
		user:      DefaultUser,
		pass:      DefaultPassword,
		dumpStall: -1,
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
		c.close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// DropConnections closes every open connection but keeps listening, as a
// network failure between client and master looks.
func (s *Server) DropConnections() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.close()
	}
}

// Set makes name an active mailbox at location ("server!partition") with
// the ACL string acl ("id\trights\t...").
func (s *Server) Set(name, location, acl string) {
	s.change(name, func() { s.boxes[name] = entry{location: location, acl: acl} })
}

// Reserve makes name a reserved mailbox (being created or moved).
func (s *Server) Reserve(name, location string) {
	s.change(name, func() { s.boxes[name] = entry{location: location, reserved: true} })
}

// Delete removes name.
func (s *Server) Delete(name string) {
	s.change(name, func() { delete(s.boxes, name) })
}

// change applies f and queues name on every streaming connection. The
// server's lock is held across both, as Cyrus holds its mailboxes lock, so
// a dump either has the change or is followed by its push.
func (s *Server) change(name string, f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
	for c := range s.conns {
		c.mu.Lock()
		if c.streaming != "" || c.dumping {
			c.pending = append(c.pending, name)
			if !s.hold && !s.stall && !c.dumping {
				s.pushLocked(c)
				c.flushLocked()
			}
		}
		c.mu.Unlock()
	}
}

// SetSynthetic adds n generated mailboxes to every dump: "user.u0000000"
// and so on, active on servers[i%len(servers)] with partition "default"
// and the owner's full rights. They are never stored, so a test can
// stream a million mailboxes without the fake holding them; FIND and
// pushes do not know them.
func (s *Server) SetSynthetic(n int, servers ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.synthetic, s.synthServer = n, servers
}

// HoldPushes, while on, keeps changes for streaming connections queued
// until a NOOP arrives on the connection (they are sent before its
// answer) or Flush is called, as Cyrus queues them for update_wait
// (5 s). Off, the default, sends each change at once.
func (s *Server) HoldPushes(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold = on
}

// Flush sends the queued changes on every streaming connection now.
func (s *Server) Flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.mu.Lock()
		if c.streaming != "" {
			s.pushLocked(c)
			c.flushLocked()
		}
		c.mu.Unlock()
	}
}

// SetDumpStall makes every following dump send n entries and then
// nothing more, without closing the connection, as a master frozen in the
// middle of a dump looks; n < 0 (the default) turns it off. A stalled
// dump stays stalled until the connection is closed.
func (s *Server) SetDumpStall(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dumpStall = n
}

// SetGarbage makes FIND answers unparsable junk.
func (s *Server) SetGarbage(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.garbage = on
}

// SetStall makes the server accept connections and read commands but
// never answer (no greeting for new connections either); streaming
// connections get no pushes meanwhile. Turning it off sends what was
// queued.
func (s *Server) SetStall(on bool) {
	s.mu.Lock()
	s.stall = on
	s.mu.Unlock()
	if !on {
		s.Flush()
	}
}

// Connections returns how many connections were accepted.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connections
}

// OpenConnections returns how many connections are open now.
func (s *Server) OpenConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Streaming returns how many open connections are streaming (after
// OK "streaming starts").
func (s *Server) Streaming() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		c.mu.Lock()
		if c.streaming != "" && !c.dumping {
			n++
		}
		c.mu.Unlock()
	}
	return n
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

// Updates returns how many UPDATE commands were received.
func (s *Server) Updates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.updates
}

// Compressions returns how many connections turned on COMPRESS.
func (s *Server) Compressions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.compresses
}

func (s *Server) accept(ln net.Listener) {
	defer s.wg.Done()
	for {
		raw, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.ln != ln { // stopped meanwhile
			s.mu.Unlock()
			raw.Close()
			return
		}
		c := &conn{raw: raw, closed: make(chan struct{})}
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

func (s *Server) serve(c *conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.close()
	}()
	var nc net.Conn = c.raw
	s.mu.Lock()
	tlsConfig, tlsMode := s.tlsConfig, s.tlsMode
	s.mu.Unlock()
	if tlsMode == "tls" {
		nc = tls.Server(nc, tlsConfig)
	}
	br := bufio.NewReader(nc)
	c.mu.Lock()
	c.w = bufio.NewWriter(nc)
	c.mu.Unlock()
	send := func(str string) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.w.WriteString(str)
		return c.flushLocked() == nil
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
		s.count(cmd)
		if s.stalled() {
			continue
		}
		c.mu.Lock()
		streaming := c.streaming != ""
		c.mu.Unlock()
		var out string
		switch {
		case cmd.Kind == "LOGOUT":
			send(tag + " OK \"bye-bye\"\r\n")
			return
		case streaming && cmd.Kind == "NOOP":
			// A NOOP is a barrier: the queued changes go first.
			s.mu.Lock()
			c.mu.Lock()
			s.pushLocked(c)
			c.mu.Unlock()
			s.mu.Unlock()
			out = tag + " OK \"Noop done\"\r\n"
		case streaming:
			out = tag + " BAD \"not legal when streaming\"\r\n"
		case cmd.Kind == "AUTHENTICATE":
			out = s.authenticate(tag, args, authed)
			authed = authed || strings.HasPrefix(out, tag+" OK")
		case cmd.Kind == "NOOP":
			if !authed {
				out = tag + " BAD \"Please login first\"\r\n"
			} else {
				out = tag + " OK \"Noop done\"\r\n"
			}
		case cmd.Kind == "FIND":
			out = s.find(tag, args, authed)
		case cmd.Kind == "UPDATE":
			if !authed {
				out = tag + " BAD \"Please login first\"\r\n"
				break
			}
			if !s.update(c, br, tag, args) {
				return
			}
			continue
		case cmd.Kind == "COMPRESS":
			if len(args) != 1 || !strings.EqualFold(args[0], "DEFLATE") {
				out = tag + " NO Unknown COMPRESS algorithm\r\n"
				break
			}
			if !send(tag + " OK DEFLATE active\r\n") {
				return
			}
			// Raw deflate both ways, flushed with a sync flush after
			// each write, as Cyrus's prot layer does.
			br = bufio.NewReader(flate.NewReader(br))
			c.mu.Lock()
			c.fw, _ = flate.NewWriter(nc, flate.BestSpeed)
			c.w = bufio.NewWriter(c.fw)
			c.mu.Unlock()
			s.mu.Lock()
			s.compresses++
			s.mu.Unlock()
			continue
		case cmd.Kind == "STARTTLS":
			if tlsMode != "starttls" || authed {
				out = tag + " BAD \"Unrecognized command\"\r\n"
				break
			}
			if !send(tag + " OK \"Begin TLS negotiation now\"\r\n") {
				return
			}
			// The banner is sent again over TLS, without STARTTLS.
			nc = tls.Server(nc, tlsConfig)
			br = bufio.NewReader(nc)
			c.mu.Lock()
			c.w = bufio.NewWriter(nc)
			c.mu.Unlock()
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

func (s *Server) count(cmd mupdate.Response) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch cmd.Kind {
	case "NOOP":
		s.noops++
	case "UPDATE":
		s.updates++
	case "FIND":
		s.finds++
		if len(cmd.Args) > 0 {
			s.findsFor[cmd.Args[0]]++
		}
	}
}

// update dumps every mailbox (those on the servers in args only, if any:
// PARTIAL-UPDATE) and makes the connection a streaming one. It reports
// whether the connection is still usable.
func (s *Server) update(c *conn, br io.Reader, tag string, servers []string) bool {
	// Take a copy of the list and register for changes in one step, as
	// Cyrus dumps under its mailboxes lock: nothing falls in between.
	s.mu.Lock()
	names := make([]string, 0, len(s.boxes))
	for name := range s.boxes {
		names = append(names, name)
	}
	slices.Sort(names)
	boxes := make([]entry, len(names))
	for i, name := range names {
		boxes[i] = s.boxes[name]
	}
	synthetic, synthServers, stallAfter := s.synthetic, s.synthServer, s.dumpStall
	c.mu.Lock()
	c.streaming, c.servers, c.dumping = tag, servers, true
	c.mu.Unlock()
	s.mu.Unlock()

	// While the dump runs only this goroutine writes to c.w: pushes
	// wait in c.pending until dumping is over.
	sent := 0
	write := func(name string, e entry) bool {
		if !c.wants(e.location) {
			return true
		}
		if stallAfter >= 0 && sent >= stallAfter {
			return false
		}
		sent++
		writeEntry(c.w, tag, name, e)
		return true
	}
	ok := true
	for i, name := range names {
		if ok = write(name, boxes[i]); !ok {
			break
		}
	}
	for i := 0; ok && i < synthetic; i++ {
		name := fmt.Sprintf("user.u%07d", i)
		server := "backend1"
		if len(synthServers) > 0 {
			server = synthServers[i%len(synthServers)]
		}
		ok = write(name, entry{location: server + "!default", acl: fmt.Sprintf("u%07d\tlrswipkxtecdan\t", i)})
	}
	c.mu.Lock()
	if !ok {
		// Frozen mid-dump: what was written goes out, then nothing
		// until the client or the test closes the connection.
		c.flushLocked()
		c.mu.Unlock()
		go func() {
			io.Copy(io.Discard, br)
			c.close()
		}()
		<-c.closed
		return false
	}
	c.w.WriteString(tag + " OK \"streaming starts\"\r\n")
	c.dumping = false
	err := c.flushLocked()
	c.mu.Unlock()
	if err != nil {
		return false
	}
	// Changes made during the dump go out now, unless they are held.
	s.mu.Lock()
	if !s.hold && !s.stall {
		c.mu.Lock()
		s.pushLocked(c)
		c.flushLocked()
		c.mu.Unlock()
	}
	s.mu.Unlock()
	return true
}

// wants reports whether a PARTIAL-UPDATE connection asked for the server
// of location.
func (c *conn) wants(location string) bool {
	if len(c.servers) == 0 {
		return true
	}
	server, _, _ := strings.Cut(location, "!")
	return slices.Contains(c.servers, server)
}

// pushLocked writes the current state of every queued name, as Cyrus's
// sendupdates does with a FIND that may answer DELETE. s.mu and c.mu are
// held; the caller flushes.
func (s *Server) pushLocked(c *conn) {
	for _, name := range c.pending {
		e, ok := s.boxes[name]
		if ok && !c.wants(e.location) {
			continue
		}
		if !ok {
			fmt.Fprintf(c.w, "%s DELETE %s\r\n", c.streaming, lit(name))
			continue
		}
		writeEntry(c.w, c.streaming, name, e)
	}
	c.pending = c.pending[:0]
}

func writeEntry(w io.Writer, tag, name string, e entry) {
	if e.reserved {
		fmt.Fprintf(w, "%s RESERVE %s %s\r\n", tag, lit(name), lit(e.location))
	} else {
		fmt.Fprintf(w, "%s MAILBOX %s %s %s\r\n", tag, lit(name), lit(e.location), lit(e.acl))
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
		writeEntry(&b, tag, args[0], e)
	}
	b.WriteString(tag + " OK \"Search completed\"\r\n")
	return b.String()
}
