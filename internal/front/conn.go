package front

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// maxCommandLine bounds an LMTP command line. RFC 5321 §4.5.3.1.4 allows
// 512 octets; extensions may need more, and this limit exists only to keep
// a client from making us hold an endless line in memory.
const maxCommandLine = 8 << 10

// maxDataLine bounds a line while a message is being received. The message
// is refused anyway once a line passes 998 octets (package wire), but it
// must be read to its end so that the MTA gets the refusal as a reply
// rather than a reset connection; only beyond this absurd length is the
// connection given up.
const maxDataLine = 64 << 20

// mtaConn is an accepted MTA connection as go-smtp reads it. It does three
// things go-smtp cannot:
//
//   - It bounds lines itself (go-smtp's MaxLineLength is off). A command
//     line that is too long is read to its end, and only then answered
//     ("500 5.5.2 Line too long") and the connection ended, so that the
//     reply reaches a client that is no longer sending, instead of a reset.
//     The octets of a BDAT chunk are not lines and are not bounded; while a
//     message is received in DATA the bound is far higher, because the
//     front end refuses the message itself and must read it to its end.
//   - It remembers that the client's side ended (EOF or an error), which is
//     how a BDAT chunk cut short is told from a complete one: go-smtp's
//     chunk reader takes an early EOF for the end of the chunk.
//   - At shutdown it can answer 421 to a client that the server is waiting
//     on, and close (RFC 5321 §3.8), without racing go-smtp's own writes.
type mtaConn struct {
	net.Conn
	srv     *Server
	trusted bool        // the listener is trusted with MAIL's AUTH= parameter
	inTxn   atomic.Bool // between MAIL and the end of the transaction

	mu         sync.Mutex
	reading    bool // a Read is blocked on the client
	waiting    bool // ... between commands
	dataMode   bool // a message is being received in DATA
	closing    bool // 421 sent, the connection is being closed
	ended      error
	lineLen    int    // octets of the current line so far
	head       []byte // the first octets of the current line
	chunk      uint64 // octets of a BDAT chunk still to come
	draining   bool   // reading an overlong line to its end
	pendingErr error  // returned by the next Read
	// dataNext is set when the octets passed to go-smtp so far end with
	// a DATA command line: go-smtp's buffer then holds nothing of the
	// message, and the message can be read past go-smtp (rawData).
	dataNext bool
	// inject is returned by Read before anything else from the client:
	// octets held back after a DATA line, or, after rawData read the
	// message, the end-of-data line (alone, while dotFirst) and whatever
	// followed it.
	inject   []byte
	dotFirst bool
	rd       rawData // the reader of the message in progress, if rawData
	// owed is how many replies go-smtp still owes for the commands of
	// the last pass, all of which answer with exactly one reply (MAIL,
	// RCPT, RSET, NOOP, DATA); while it is above zero, replies are kept
	// in held and sent together with the last one: a pipelined MAIL,
	// RCPT, DATA is answered in one write, not one per reply.
	owed int
	held []byte
}

// setDataMode switches the line bound between commands and message data.
func (c *mtaConn) setDataMode(on bool) {
	c.mu.Lock()
	c.dataMode = on
	c.mu.Unlock()
}

// clientEnded returns the error (io.EOF included) that ended the client's
// side of the connection, or nil if it is still open.
func (c *mtaConn) clientEnded() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ended
}

// readable is what every read checks first, with c.mu held: that the
// connection is not closing, and that no reply is still held. go-smtp
// reads again only after answering everything it was given; if replies
// are still held, the count was wrong: they are sent now rather than keep
// the client waiting.
func (c *mtaConn) readable() error {
	if c.closing {
		return net.ErrClosed
	}
	return c.sendHeld()
}

func (c *mtaConn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if err := c.readable(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
		if len(c.inject) > 0 {
			src := c.inject
			if c.dotFirst {
				// The end-of-data line alone: go-smtp's reader ends
				// there, and what follows is read after the
				// transaction, in command mode.
				src, c.dotFirst = src[:3], false
			}
			n := copy(p, src)
			pass, used := c.scan(p[:n])
			c.inject = c.inject[used:]
			c.mu.Unlock()
			if pass > 0 {
				return pass, nil
			}
			continue
		}
		if err := c.pendingErr; err != nil {
			c.pendingErr = nil
			c.mu.Unlock()
			return 0, err
		}
		c.reading, c.waiting = true, !c.dataMode && c.chunk == 0
		c.mu.Unlock()
		n, err := c.Conn.Read(p)
		c.mu.Lock()
		c.reading, c.waiting = false, false
		if c.closing {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		if err != nil && c.ended == nil {
			c.ended = err
		}
		pass, used := c.scan(p[:n])
		if used < n {
			// Held back after a DATA line: served by the next Read, or
			// read by rawData.
			c.inject = append(c.inject, p[used:n]...)
			if err != nil && c.pendingErr == nil {
				c.pendingErr = err
			}
			err = nil
		}
		c.mu.Unlock()
		switch {
		case pass == n && (n > 0 || err != nil):
			return n, err
		case pass > 0:
			return pass, nil
		case err != nil:
			return 0, err
		}
		// Everything read was part of a refused line: read on (a Read
		// must not return 0, nil).
	}
}

// refusedLineEnded is called when the line that broke the bound ends;
// nothing after it is passed on. A command line is answered here and the
// connection ends (go-smtp takes EOF quietly); in a message, go-smtp's
// reader gets the error and the message is refused. c.mu is held.
func (c *mtaConn) refusedLineEnded() {
	c.draining, c.lineLen, c.head = false, 0, c.head[:0]
	if c.dataMode {
		c.pendingErr = smtp.ErrTooLongLine
		return
	}
	c.Conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	c.Conn.Write([]byte("500 5.5.2 Line too long, closing connection\r\n"))
	c.pendingErr = io.EOF
}

// scan applies the line bound to octets on their way to go-smtp. It
// returns how many of them, from the start, go on to go-smtp (pass), and
// how many it dealt with (used); p[used:] is to be passed later. c.mu is
// held.
//
// Octets after a refused line are dropped (pass < used). A DATA command
// line ends what is passed (used == pass, at its end): go-smtp then holds
// nothing of the message when it starts reading it, which lets rawData
// read the message past go-smtp's reader (dataNext).
func (c *mtaConn) scan(p []byte) (pass, used int) {
	limit := maxCommandLine
	if c.dataMode {
		limit = maxDataLine
	}
	pass = len(p)
	if c.draining {
		pass = 0
	}
	if len(p) > 0 {
		c.dataNext = false
	}
	owed, simple := 0, !c.dataMode
	defer func() {
		// Replies are held only for a pass that ends at the end of a
		// line and holds nothing but single-reply commands.
		if simple && used > 0 && used == pass && p[used-1] == '\n' && c.chunk == 0 && !c.draining {
			c.owed = owed
		} else {
			c.owed = 0
		}
	}()
	for i := 0; i < len(p); {
		if c.draining {
			j := bytes.IndexByte(p[i:], '\n')
			if j < 0 {
				break
			}
			c.refusedLineEnded()
			break
		}
		if c.chunk > 0 {
			k := min(c.chunk, uint64(len(p)-i))
			c.chunk -= k
			i += int(k)
			continue
		}
		j := bytes.IndexByte(p[i:], '\n')
		seg := len(p) - i
		if j >= 0 {
			seg = j
		}
		if c.lineLen+seg > limit {
			pass = min(pass, i)
			c.draining = true
			continue
		}
		if len(c.head) < 64 {
			c.head = append(c.head, p[i:i+min(seg+1, 64-len(c.head), len(p)-i)]...)
		}
		if j < 0 {
			c.lineLen += seg
			break
		}
		// A BDAT line is followed by its chunk, whatever the mode (a
		// body line that merely looks like one only loses the bound on a
		// few octets).
		c.chunk = bdatSize(c.head)
		data := !c.dataMode && isDataCommand(c.head)
		if singleReply(c.head) {
			owed++
		} else {
			simple = false
		}
		c.lineLen, c.head = 0, c.head[:0]
		i += j + 1
		if data {
			c.dataNext = true
			return i, i
		}
	}
	return pass, len(p)
}

// singleReply reports whether the command line is one go-smtp answers
// with exactly one reply line and nothing else.
func singleReply(line []byte) bool {
	if len(line) < 4 {
		return false
	}
	var verb [4]byte
	for i := range verb {
		verb[i] = line[i] &^ 0x20 // ASCII upper case; non-letters never match
	}
	switch string(verb[:]) {
	case "MAIL", "RCPT", "RSET", "NOOP", "DATA":
		return len(line) == 4 || line[4] == ' ' || line[4] == '\r' || line[4] == '\n'
	}
	return false
}

// Write sends go-smtp's replies, holding them while more replies to the
// same pass of pipelined commands are owed (owed).
func (c *mtaConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.owed > 0 {
		c.held = append(c.held, b...)
		c.owed -= finalLines(b)
		if c.owed > 0 {
			return len(b), nil
		}
		c.owed = 0
		if err := c.sendHeld(); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	if err := c.sendHeld(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// sendHeld writes the held replies. c.mu is held.
func (c *mtaConn) sendHeld() error {
	if len(c.held) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	return err
}

// finalLines counts the reply lines in b that end a reply ("250 ...", not
// "250-...").
func finalLines(b []byte) int {
	n := 0
	for len(b) >= 4 {
		if b[3] == ' ' || b[3] == '\r' {
			n++
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		b = b[i+1:]
	}
	return n
}

var dataCommand = []byte("DATA")

// isDataCommand reports whether line (a command line's first octets, with
// its line end) is DATA as go-smtp parses it.
func isDataCommand(line []byte) bool {
	return bytes.EqualFold(bytes.TrimRight(line, " \r\n"), dataCommand)
}

// bdatSize returns the size of the chunk that follows a command line, as
// go-smtp parses "BDAT <size> [LAST]" (it reads the chunk even when it
// refuses the command, but not when the command itself is malformed), or 0.
func bdatSize(line []byte) uint64 {
	if len(line) < 5 || !strings.EqualFold(string(line[:5]), "BDAT ") {
		return 0
	}
	args := strings.Fields(string(line[5:]))
	if len(args) == 0 || len(args) > 2 || (len(args) == 2 && !strings.EqualFold(args[1], "LAST")) {
		return 0
	}
	n, err := strconv.ParseUint(args[0], 10, 32)
	if err != nil {
		return 0
	}
	return n
}

// shutdownIdle answers 421 and closes the connection if the server is
// waiting for the client's next command, and reports whether it did.
func (c *mtaConn) shutdownIdle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.waiting || c.closing {
		return false
	}
	c.say421AndClose()
	return true
}

// cut ends the connection when the stop ran out of time. A client the
// server is reading from (between commands, or in the middle of its
// message) hears 421 first: go-smtp writes nothing while it reads, so the
// line cannot interleave with a reply. Otherwise (a reply is being
// written, or the backends are being waited on) the connection is closed
// without one; the MTA retries what it got no answer for.
func (c *mtaConn) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	if c.reading {
		c.say421AndClose()
		return
	}
	c.closing = true
	c.Conn.Close()
}

// say421AndClose writes the 421 line, briefly bounded, and closes. c.mu
// is held.
func (c *mtaConn) say421AndClose() {
	c.closing = true
	c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.Conn.Write([]byte(shutdownLine))
	c.Conn.Close()
}

// shutdownLine is replyShutdown on the wire.
const shutdownLine = "421 4.3.2 Service shutting down, try again later\r\n"

func (c *mtaConn) Close() error {
	c.srv.untrack(c)
	c.mu.Lock()
	c.sendHeld()
	c.mu.Unlock()
	err := c.Conn.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// listener wraps one listening socket: it tracks and bounds connections.
type listener struct {
	net.Listener
	srv     *Server
	trusted bool
}

func (l listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		mc := &mtaConn{Conn: c, srv: l.srv, trusted: l.trusted}
		if l.srv.track(mc) {
			return mc, nil
		}
		// Over lmtp.max_connections: refuse politely, before go-smtp
		// spends a goroutine and a session on it.
		l.srv.nrefused.Add(1)
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write([]byte("421 4.3.2 Too many connections, try again later\r\n"))
		c.Close()
	}
}
