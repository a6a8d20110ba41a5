package replica

import (
	"bufio"
	"bytes"
	"compress/flate"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mupdate"
)

// updateTag tags the UPDATE command; the dump and every push carry it.
const updateTag = "U01"

// session is one connection to the master: login, UPDATE, the dump into
// a new list, then the stream of changes until the connection fails or
// the replica stops it. One goroutine reads (session's caller); a second
// one (writer) sends the NOOPs, for misses and for keep-alive.
type session struct {
	r  *Replica
	nc net.Conn
	dr *deadlineReader
	sc *mupdate.Scanner
	w  io.Writer     // commands go here: the connection or fw
	fw *flate.Writer // with COMPRESS

	bmu      sync.Mutex // guards the NOOP state below
	tagN     int
	inflight *noop // sent, not answered yet
	next     *noop // to be sent once inflight is answered; misses join it
	endErr   error // set when the session is over

	kick chan struct{} // wakes the writer
	over chan struct{} // closed when the session is over

	compacting bool
	compacted  chan compacted
}

// noop is one NOOP barrier that lookups wait for.
type noop struct {
	tag  string
	done chan struct{}
	err  error
}

type compacted struct {
	done *view // the view that was compacted
	l    *list
	err  error
}

// deadlineReader sets the connection's read deadline before each read,
// so that a master that stops sending (frozen mid-dump, or silent on the
// stream past a keep-alive NOOP) is noticed without a timer per line. It
// records when data last came.
type deadlineReader struct {
	r    io.Reader
	c    net.Conn
	idle atomic.Int64 // time.Duration
	last atomic.Int64 // Unix ns
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	d.c.SetReadDeadline(time.Now().Add(time.Duration(d.idle.Load())))
	n, err := d.r.Read(p)
	if n > 0 {
		d.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// session runs one connection. It reports whether it got as far as
// streaming, and always returns the error that ended it.
func (r *Replica) session(ctx context.Context) (streamed bool, err error) {
	conn, err := mupdate.Dial(ctx, r.cfg.Server.Endpoint(r.tls))
	if err != nil {
		return false, fmt.Errorf("connecting: %w", err)
	}
	// Stop closes the connection, which ends whatever read is waiting.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	r.mu.Lock()
	r.st.Connects++
	r.mu.Unlock()

	s := &session{
		r:         r,
		nc:        conn.NetConn,
		w:         conn.NetConn,
		kick:      make(chan struct{}, 1),
		over:      make(chan struct{}),
		compacted: make(chan compacted, 1),
	}
	defer func() { s.end(err) }()
	s.dr = &deadlineReader{r: conn.Reader, c: conn.NetConn}
	s.dr.last.Store(time.Now().UnixNano())
	var src io.Reader = s.dr
	if r.cfg.Compress && conn.Greeting.Compress {
		ok, err := s.compress(conn)
		if err != nil {
			return false, err
		}
		if ok {
			// Raw deflate (RFC 1951) both ways, as Cyrus's prot layer
			// does it.
			src = flate.NewReader(s.dr)
		}
	}
	s.sc = mupdate.NewScanner(bufio.NewReaderSize(src, 64<<10), r.cfg.MaxLiteral)

	r.dumped.Store(0)
	r.setStream(StreamDumping)
	v, err := s.dump()
	if err != nil {
		return false, err
	}
	return true, s.stream(v)
}

// compress asks for COMPRESS "DEFLATE". A refusal (Cyrus refuses when TLS
// already compresses) is not an error: the stream goes on uncompressed.
func (s *session) compress(conn *mupdate.Conn) (bool, error) {
	if err := s.write("C01 COMPRESS \"DEFLATE\"\r\n"); err != nil {
		return false, err
	}
	s.nc.SetReadDeadline(time.Now().Add(s.r.cfg.QueryTimeout))
	for {
		resp, err := mupdate.ReadResponse(conn.Reader, s.r.cfg.MaxLiteral)
		if err != nil {
			return false, fmt.Errorf("COMPRESS: %w", err)
		}
		if resp.Tag == "*" {
			continue
		}
		if resp.Tag != "C01" {
			return false, fmt.Errorf("%w: response tagged %q to COMPRESS", mupdate.ErrProtocol, resp.Tag)
		}
		if resp.Kind != "OK" {
			s.r.log.Warn("the master refused COMPRESS; streaming uncompressed", "answer", resp.String())
			return false, nil
		}
		s.fw, _ = flate.NewWriter(s.nc, flate.BestSpeed)
		s.w = s.fw
		return true, nil
	}
}

// write sends one command, bounded by QueryTimeout.
func (s *session) write(cmd string) error {
	s.nc.SetWriteDeadline(time.Now().Add(s.r.cfg.QueryTimeout))
	if _, err := io.WriteString(s.w, cmd); err != nil {
		return err
	}
	if s.fw != nil {
		return s.fw.Flush()
	}
	return nil
}

// dump sends UPDATE and reads the master's list into a new list, which
// replaces the one served when the master says "streaming starts". Until
// then lookups go on using the old one.
func (s *session) dump() (*view, error) {
	r := s.r
	s.dr.idle.Store(int64(r.cfg.DumpIdleTimeout))
	if err := s.write(updateTag + " UPDATE\r\n"); err != nil {
		return nil, err
	}
	hint := 0
	if v := r.view.Load(); v != nil {
		hint = v.n
	}
	b := newBuilder(hint)
	t0 := time.Now()
	if err := readDump(s.sc, b, &r.dumped); err != nil {
		return nil, err
	}
	return r.installDump(b.finish(), time.Since(t0)), nil
}

// readDump reads a dump into b up to the master's OK, counting the
// mailboxes in progress (every 4096, to keep the counter off the hot
// path).
func readDump(sc *mupdate.Scanner, b *builder, progress *atomic.Int64) error {
	n := 0
	for {
		if err := sc.Scan(); err != nil {
			return fmt.Errorf("reading the dump after %d mailboxes: %w", b.Len(), err)
		}
		if err := untagged(sc); err != errTagged {
			if err != nil {
				return err
			}
			continue
		}
		if string(sc.Tag()) != updateTag {
			return fmt.Errorf("%w: response tagged %q during the dump", mupdate.ErrProtocol, sc.Tag())
		}
		switch kind := sc.Kind(); string(kind) {
		case "MAILBOX", "RESERVE":
			name, server, part, acl, state, err := entryArgs(sc)
			if err != nil {
				return err
			}
			if err := b.put(name, server, part, acl, state); err != nil {
				return err
			}
			if n++; n&4095 == 0 {
				progress.Store(int64(n))
			}
		case "DELETE":
			if sc.NArgs() != 1 || len(sc.Arg(0)) == 0 {
				return fmt.Errorf("%w: DELETE with %d arguments", mupdate.ErrProtocol, sc.NArgs())
			}
			b.del(sc.Arg(0))
		case "OK":
			progress.Store(int64(n))
			return nil
		case "NO", "BAD":
			return fmt.Errorf("UPDATE refused: %s", sc.Response())
		default:
			return fmt.Errorf("%w: %s during the dump", mupdate.ErrProtocol, kind)
		}
	}
}

// errTagged is untagged's answer for a tagged response.
var errTagged = fmt.Errorf("tagged")

// untagged handles an untagged response: BYE ends the session, anything
// else is passed over.
func untagged(sc *mupdate.Scanner) error {
	if string(sc.Tag()) != "*" {
		return errTagged
	}
	if string(sc.Kind()) == "BYE" {
		return fmt.Errorf("the master said %s", sc.Response())
	}
	return nil
}

// entryArgs splits "MAILBOX name location acl" or "RESERVE name location".
// A location is "server!partition"; without '!' the whole string is the
// server (cyrus-interop §10.4). The slices are the scanner's.
func entryArgs(sc *mupdate.Scanner) (name, server, part, acl []byte, state lookup.State, err error) {
	switch {
	case string(sc.Kind()) == "MAILBOX" && sc.NArgs() == 3:
		state, acl = lookup.Active, sc.Arg(2)
	case string(sc.Kind()) == "RESERVE" && sc.NArgs() == 2:
		state = lookup.Reserved
	default:
		return nil, nil, nil, nil, 0, fmt.Errorf("%w: %s with %d arguments", mupdate.ErrProtocol, sc.Kind(), sc.NArgs())
	}
	name, server = sc.Arg(0), sc.Arg(1)
	if i := bytes.IndexByte(server, '!'); i >= 0 {
		server, part = server[:i], server[i+1:]
	}
	if len(name) == 0 || len(server) == 0 {
		// Routing on it is impossible, and Cyrus never sends it: the
		// stream is not what we think it is.
		return nil, nil, nil, nil, 0, fmt.Errorf("%w: %s with an empty name or server", mupdate.ErrProtocol, sc.Kind())
	}
	return name, server, part, acl, state, nil
}

// stream applies the master's pushes until the connection fails. Each
// burst of pushes (what arrived together) becomes one new view; a NOOP's
// answer is acted on only after the pushes before it are published, which
// is what makes the NOOP a barrier.
func (s *session) stream(v *view) error {
	r := s.r
	s.dr.idle.Store(int64(r.cfg.KeepAlive + r.cfg.QueryTimeout))
	r.sess.Store(s)
	defer func() {
		r.sess.CompareAndSwap(s, nil)
		r.streamEnded()
	}()
	go s.writer()
	d := &draft{prev: v}
	sc := s.sc
	for {
		if err := sc.Scan(); err != nil {
			return fmt.Errorf("reading the stream: %w", err)
		}
		if err := untagged(sc); err != errTagged {
			if err != nil {
				return err
			}
			continue
		}
		if string(sc.Tag()) == updateTag {
			c, err := pushed(sc)
			if err != nil {
				return err
			}
			d.apply(c)
			r.pushes.Add(1)
			if sc.Buffered() == 0 {
				s.publish(d)
			}
			continue
		}
		s.publish(d)
		if err := s.answered(); err != nil {
			return err
		}
	}
}

// pushed turns a pushed MAILBOX, RESERVE or DELETE into a change.
func pushed(sc *mupdate.Scanner) (*change, error) {
	if string(sc.Kind()) == "DELETE" {
		if sc.NArgs() != 1 || len(sc.Arg(0)) == 0 {
			return nil, fmt.Errorf("%w: DELETE with %d arguments", mupdate.ErrProtocol, sc.NArgs())
		}
		return &change{e: lookup.Entry{Name: string(sc.Arg(0))}, deleted: true}, nil
	}
	if k := string(sc.Kind()); k != "MAILBOX" && k != "RESERVE" {
		return nil, fmt.Errorf("%w: %s pushed on the stream", mupdate.ErrProtocol, k)
	}
	name, server, part, acl, state, err := entryArgs(sc)
	if err != nil {
		return nil, err
	}
	return &change{e: lookup.Entry{Name: string(name), Server: string(server), Partition: string(part), ACL: string(acl), State: state}}, nil
}

// publish makes the draft's changes visible, and looks after compaction.
func (s *session) publish(d *draft) {
	if d.next != nil {
		s.r.view.Store(d.next)
		d.prev, d.next = d.next, nil
	}
	select {
	case res := <-s.compacted:
		s.compacting = false
		if res.err != nil {
			s.r.log.Error("cannot compact the mailbox list", "error", res.err)
			break
		}
		nv := rebase(d.prev, res.done, res.l)
		s.r.view.Store(nv)
		d.prev = nv
	default:
	}
	if !s.compacting && len(d.prev.over) >= compactAt {
		s.compacting = true
		done := d.prev
		go func() {
			l, err := compact(done)
			s.compacted <- compacted{done: done, l: l, err: err}
			// A NOOP's answer brings the stream goroutine round to
			// install the new list.
			s.requestNoop()
		}()
	}
}

// answered handles the answer to a NOOP.
func (s *session) answered() error {
	sc := s.sc
	s.bmu.Lock()
	defer s.bmu.Unlock()
	n := s.inflight
	if n == nil || string(sc.Tag()) != n.tag {
		return fmt.Errorf("%w: response tagged %q on the stream", mupdate.ErrProtocol, sc.Tag())
	}
	switch string(sc.Kind()) {
	case "OK":
	case "NO", "BAD":
		n.err = fmt.Errorf("NOOP refused: %s", sc.Response())
	default:
		return fmt.Errorf("%w: %s answering NOOP", mupdate.ErrProtocol, sc.Kind())
	}
	s.inflight = nil
	close(n.done)
	if s.next != nil {
		s.wake()
	}
	return nil
}

func (s *session) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// requestNoop asks for a NOOP and returns what to wait for: the next one
// to be sent, never one already sent (whose answer could predate the
// caller's question). Concurrent callers share it.
func (s *session) requestNoop() (*noop, error) {
	s.bmu.Lock()
	if s.endErr != nil {
		err := s.endErr
		s.bmu.Unlock()
		return nil, err
	}
	if s.next == nil {
		s.next = &noop{done: make(chan struct{})}
	}
	n := s.next
	s.bmu.Unlock()
	s.wake()
	return n, nil
}

// barrier waits until the master answered a NOOP sent after the call.
func (s *session) barrier(ctx context.Context) error {
	n, err := s.requestNoop()
	if err != nil {
		return err
	}
	select {
	case <-n.done:
		return n.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writer sends the NOOPs: the next one once none is in flight, and one
// after KeepAlive without a word from the master. A failed write closes
// the connection, which ends the session.
func (s *session) writer() {
	ka := s.r.cfg.KeepAlive
	t := time.NewTimer(ka)
	defer t.Stop()
	for {
		select {
		case <-s.over:
			return
		case <-s.kick:
		case <-t.C:
			idle := time.Since(time.Unix(0, s.dr.last.Load()))
			if idle < ka {
				t.Reset(ka - idle)
				continue
			}
			t.Reset(ka)
			s.requestNoop()
		}
		s.bmu.Lock()
		var n *noop
		if s.endErr == nil && s.inflight == nil && s.next != nil {
			n, s.inflight, s.next = s.next, s.next, nil
			s.tagN++
			n.tag = fmt.Sprintf("N%d", s.tagN)
		}
		s.bmu.Unlock()
		if n == nil {
			continue
		}
		s.r.barriers.Add(1)
		if err := s.write(n.tag + " NOOP\r\n"); err != nil {
			s.nc.Close()
			return
		}
	}
}

// end fails every waiting barrier with err and stops the writer.
func (s *session) end(err error) {
	if err == nil {
		err = fmt.Errorf("session ended")
	}
	err = fmt.Errorf("the stream from %s ended: %w", s.r.cfg.Address, err)
	s.bmu.Lock()
	defer s.bmu.Unlock()
	if s.endErr != nil {
		return
	}
	s.endErr = err
	for _, n := range []*noop{s.inflight, s.next} {
		if n != nil {
			n.err = err
			close(n.done)
		}
	}
	s.inflight, s.next = nil, nil
	close(s.over)
}
