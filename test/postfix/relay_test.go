package postfix

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// relay is a TCP relay between lmtpgate and one Cyrus backend (lmtpgate is
// pointed at it with backends.addresses) that follows the LMTP dialogue,
// so that it can fail one transaction at an exact step and count how many
// transactions the backend has at once.
type relay struct {
	ln     net.Listener
	target string
	armed  atomic.Int32 // a relayFault, fired by the next transaction that reaches it
	fired  chan relayFault

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	inTxn   int
	maxTxn  int
	txns    int
	closed  bool
	closeWG sync.WaitGroup
}

type relayFault int32

const (
	relayPass relayFault = iota
	// relayFreezeAt354 passes the backend's 354 to DATA on, then nothing
	// more in either direction: the backend hangs mid-DATA and never sees
	// the message.
	relayFreezeAt354
	// relayLoseReply passes the whole message and its final dot on, then
	// swallows the backend's replies: the backend stored the message, and
	// lmtpgate never hears so.
	relayLoseReply
)

func (f relayFault) String() string {
	switch f {
	case relayFreezeAt354:
		return "frozen after 354"
	case relayLoseReply:
		return "replies after the final dot lost"
	}
	return "pass"
}

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target, conns: map[net.Conn]struct{}{}, fired: make(chan relayFault, 16)}
	go r.accept()
	t.Cleanup(r.close)
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

// arm makes the next transaction that gets that far suffer f.
func (r *relay) arm(f relayFault) { r.armed.Store(int32(f)) }

// claim reports whether f is armed, disarming it.
func (r *relay) claim(f relayFault) bool {
	if r.armed.CompareAndSwap(int32(f), int32(relayPass)) {
		r.fired <- f
		return true
	}
	return false
}

// maxConcurrent is the most transactions (MAIL to the last reply after
// DATA) the backend had at once, and total how many started.
func (r *relay) maxConcurrent() (most, total int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxTxn, r.txns
}

func (r *relay) close() {
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.ln.Close()
	r.closeWG.Wait()
}

func (r *relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}

func (r *relay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", r.target)
		if err != nil {
			// The backend is down: so is the relay, to lmtpgate.
			c.Close()
			continue
		}
		if !r.track(c, s) {
			c.Close()
			s.Close()
			return
		}
		r.closeWG.Add(1)
		go func() {
			defer r.closeWG.Done()
			newRelayConn(r, c, s).run()
		}()
	}
}

// relayConn is one relayed connection. Replies are paired with commands
// in order (RFC 2920 pipelining keeps that order), so the relay knows
// which reply is the 354 to DATA and how many replies after the final dot
// end the transaction (one per accepted RCPT, RFC 2033 §4.2).
type relayConn struct {
	r      *relay
	client net.Conn
	server net.Conn

	mu        sync.Mutex
	pending   []string // commands awaiting their reply, "" for the greeting
	saslCont  bool     // the client's next line answers a 334
	inTxn     bool
	rcptOK    int  // RCPTs accepted in this transaction
	okPending int  // RCPTs whose reply is still to come
	dataPhase bool // between the 354 and the final dot
	afterDot  int  // replies still due after the final dot
	frozen    bool // nothing more is passed on either way
	swallow   bool // server replies are read and dropped
	done      chan struct{}
}

func newRelayConn(r *relay, c, s net.Conn) *relayConn {
	return &relayConn{r: r, client: c, server: s, pending: []string{""}, done: make(chan struct{})}
}

func (rc *relayConn) run() {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); rc.clientToServer() }()
	go func() { defer wg.Done(); rc.serverToClient() }()
	wg.Wait()
	rc.endTxn()
	rc.r.mu.Lock()
	delete(rc.r.conns, rc.client)
	delete(rc.r.conns, rc.server)
	rc.r.mu.Unlock()
}

func (rc *relayConn) shut() {
	rc.client.Close()
	rc.server.Close()
}

func (rc *relayConn) startTxn() {
	rc.r.mu.Lock()
	defer rc.r.mu.Unlock()
	rc.r.inTxn++
	rc.r.txns++
	rc.r.maxTxn = max(rc.r.maxTxn, rc.r.inTxn)
}

// endTxn ends the transaction in progress, if any. Called with rc.mu held
// or after both directions stopped.
func (rc *relayConn) endTxn() {
	if !rc.inTxn {
		return
	}
	rc.inTxn = false
	rc.rcptOK, rc.okPending, rc.afterDot = 0, 0, 0
	rc.r.mu.Lock()
	rc.r.inTxn--
	rc.r.mu.Unlock()
}

func (rc *relayConn) clientToServer() {
	defer rc.shut()
	br := bufio.NewReaderSize(rc.client, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		// Frozen, the line is read and dropped: the connection stays
		// open, and the relay notices when lmtpgate gives up on it.
		if len(line) > 0 && rc.fromClient(line) {
			if _, werr := rc.server.Write(line); werr != nil {
				close(rc.done)
				return
			}
		}
		if err != nil {
			close(rc.done)
			return
		}
	}
}

// fromClient notes one client line and reports whether to pass it on.
func (rc *relayConn) fromClient(line []byte) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.frozen {
		return false
	}
	if rc.dataPhase {
		if bytes.Equal(line, []byte(".\r\n")) {
			rc.dataPhase = false
			rc.afterDot = rc.rcptOK
			if rc.r.claim(relayLoseReply) {
				rc.swallow = true
			}
		}
		return true
	}
	if rc.saslCont {
		rc.saslCont = false
		return true
	}
	verb := strings.ToUpper(strings.TrimSpace(string(line)))
	if i := strings.IndexAny(verb, " :"); i >= 0 {
		verb = verb[:i]
	}
	rc.pending = append(rc.pending, verb)
	if verb == "MAIL" && !rc.inTxn {
		rc.inTxn = true
		rc.startTxn()
	}
	if verb == "RCPT" {
		rc.okPending++
	}
	return true
}

func (rc *relayConn) serverToClient() {
	defer rc.shut()
	br := bufio.NewReaderSize(rc.server, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			pass, freeze := rc.fromServer(line)
			if pass {
				if _, werr := rc.client.Write(line); werr != nil {
					return
				}
			}
			if freeze {
				<-rc.done
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// fromServer notes one reply line and reports whether to pass it on and
// whether the connection freezes after it.
func (rc *relayConn) fromServer(line []byte) (pass, freeze bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.frozen {
		return false, true
	}
	if rc.swallow {
		// The backend answers the message lmtpgate will never hear
		// about; from here on the connection is dead to lmtpgate.
		rc.frozen = true
		return false, true
	}
	if len(line) < 4 || line[3] == '-' {
		return true, false
	}
	code := string(line[:3])
	if rc.afterDot > 0 {
		rc.afterDot--
		if rc.afterDot == 0 {
			rc.endTxn()
		}
		return true, false
	}
	if len(rc.pending) == 0 {
		return true, false
	}
	cmd := rc.pending[0]
	rc.pending = rc.pending[1:]
	switch {
	case code == "334":
		// SASL continues: the command stays, the next client line
		// is its answer.
		rc.pending = append([]string{cmd}, rc.pending...)
		rc.saslCont = true
	case cmd == "MAIL" && code[0] != '2':
		rc.endTxn()
	case cmd == "RCPT":
		rc.okPending--
		if code[0] == '2' {
			rc.rcptOK++
		}
	case cmd == "DATA" && code == "354":
		rc.dataPhase = true
		if rc.r.claim(relayFreezeAt354) {
			rc.frozen = true
			return true, true
		}
	case cmd == "DATA" || cmd == "RSET" || cmd == "QUIT":
		rc.endTxn()
	}
	return true, false
}
