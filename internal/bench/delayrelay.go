package bench

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DelayRelay emulates a network link on loopback, where these kernels have
// no netem: it accepts TCP connections and forwards both directions to a
// target, every byte delivered a fixed one-way delay after it arrived.
//
// It behaves like a link, not like a stop-and-wait proxy. Each direction
// has a reader that takes data off the socket as soon as it arrives and
// stamps it with its arrival time, and a writer that hands it on when the
// stamp plus the delay has passed, so a long transfer costs one delay plus
// its transfer time, however many segments it has. Order is kept (one
// queue per direction), a half-close (FIN) travels with the same delay
// after the last byte, and a reset (a read error other than EOF) aborts
// both sides. At most Window bytes wait in a direction; beyond that the
// reader stops reading, the sender's socket buffers fill and the sender
// blocks, as a full receive window would make it. A new connection reaches
// the target only after three one-way delays, as if its SYN, SYN-ACK and
// ACK had crossed the link, so the greeting of a server arrives four delays
// after the client connected, as over a real network.
//
// The delay can be changed while connections are open (SetDelay): bytes
// already waiting keep their time, later bytes get the new delay, and order
// is kept either way.
type DelayRelay struct {
	// Up counts bytes read from clients (toward the target), Down bytes
	// read from the target (toward clients), Conns connections accepted.
	Up, Down, Conns atomic.Int64

	l      net.Listener
	target string
	window int
	delay  atomic.Int64 // nanoseconds

	mu     sync.Mutex
	closed bool
	conns  map[*relayConn]struct{}
	wg     sync.WaitGroup
}

// relayChunk is the size of one read; a direction's queue holds
// Window/relayChunk of them.
const relayChunk = 64 << 10

// DefaultRelayWindow bounds the bytes waiting in one direction. At 8 MiB
// and a 2 ms delay the link carries up to 4 GB/s, beyond what loopback
// gives one connection, so the window never limits a benchmark.
const DefaultRelayWindow = 8 << 20

var chunkPool = sync.Pool{New: func() any { b := make([]byte, relayChunk); return &b }}

// NewDelayRelay listens on listen and relays every connection to target
// with the given one-way delay. window bounds the bytes queued per
// direction (0: DefaultRelayWindow).
func NewDelayRelay(ctx context.Context, listen, target string, delay time.Duration, window int) (*DelayRelay, error) {
	if delay < 0 {
		return nil, errors.New("delay relay: negative delay")
	}
	if window <= 0 {
		window = DefaultRelayWindow
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return nil, err
	}
	r := &DelayRelay{l: l, target: target, window: window, conns: map[*relayConn]struct{}{}}
	r.delay.Store(int64(delay))
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

// Addr is the relay's listening address.
func (r *DelayRelay) Addr() string { return r.l.Addr().String() }

// Delay is the current one-way delay.
func (r *DelayRelay) Delay() time.Duration { return time.Duration(r.delay.Load()) }

// SetDelay changes the one-way delay for bytes that arrive from now on.
func (r *DelayRelay) SetDelay(d time.Duration) { r.delay.Store(int64(max(d, 0))) }

// Close stops listening, aborts every relayed connection and waits until
// all of the relay's goroutines have ended.
func (r *DelayRelay) Close() error {
	err := r.l.Close()
	r.mu.Lock()
	r.closed = true
	for rc := range r.conns {
		rc.abort()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return err
}

func (r *DelayRelay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.l.Accept()
		if err != nil {
			return
		}
		r.Conns.Add(1)
		rc := &relayConn{c: c.(*net.TCPConn), dead: make(chan struct{})}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			c.Close()
			return
		}
		r.conns[rc] = struct{}{}
		r.wg.Add(1)
		r.mu.Unlock()
		go func() {
			defer r.wg.Done()
			r.relay(rc)
			r.mu.Lock()
			delete(r.conns, rc)
			r.mu.Unlock()
		}()
	}
}

// relayConn is one relayed connection: the client's side, the target's
// (once dialled) and dead, closed when the connection is aborted, which
// also ends any wait for a chunk's time.
type relayConn struct {
	c    *net.TCPConn
	dead chan struct{}

	mu      sync.Mutex
	up      *net.TCPConn
	aborted bool
}

// abort resets both sides. A linger of 0 makes Close send RST, so that a
// reset on one side shows as a reset on the other.
func (rc *relayConn) abort() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.aborted {
		return
	}
	rc.aborted = true
	close(rc.dead)
	rc.c.SetLinger(0)
	rc.c.Close()
	if rc.up != nil {
		rc.up.SetLinger(0)
		rc.up.Close()
	}
}

// setUp records the target's side; after an abort it closes it instead.
func (rc *relayConn) setUp(up *net.TCPConn) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.aborted {
		up.Close()
		return false
	}
	rc.up = up
	return true
}

// relay runs one connection. The client's bytes are read (and stamped)
// from the start; they are written once the handshake's three delays have
// passed and the target has accepted.
func (r *DelayRelay) relay(rc *relayConn) {
	accepted := time.Now()
	toUp := r.newDirection(rc.c, &r.Up)
	var wg sync.WaitGroup
	wg.Go(toUp.read)
	up := r.dial(rc, accepted)
	if up == nil {
		rc.abort()
		toUp.discard()
		wg.Wait()
		return
	}
	toDown := r.newDirection(up, &r.Down)
	wg.Go(toDown.read)
	wg.Go(func() { toUp.write(up, rc) })
	wg.Go(func() { toDown.write(rc.c, rc) })
	wg.Wait()
	rc.c.Close()
	up.Close()
}

// dial connects to the target once the handshake's delays have passed, or
// returns nil.
func (r *DelayRelay) dial(rc *relayConn, accepted time.Time) *net.TCPConn {
	if !sleepUntil(accepted.Add(3*r.Delay()), rc.dead) {
		return nil
	}
	conn, err := net.DialTimeout("tcp", r.target, 10*time.Second)
	if err != nil {
		return nil
	}
	up := conn.(*net.TCPConn)
	if !rc.setUp(up) {
		return nil
	}
	return up
}

// direction is one way of a relayed connection: a reader that queues
// stamped chunks and a writer that delivers them when they are due.
type direction struct {
	r     *DelayRelay
	src   *net.TCPConn
	count *atomic.Int64
	q     chan chunk
}

// chunk is data read from the source, or (buf nil) the end of it: eof for
// a clean half-close, otherwise a reset.
type chunk struct {
	buf *[]byte
	n   int
	due time.Time
	eof bool
}

func (r *DelayRelay) newDirection(src *net.TCPConn, count *atomic.Int64) *direction {
	return &direction{r: r, src: src, count: count, q: make(chan chunk, max(1, r.window/relayChunk))}
}

// read takes data off the source as it arrives. The channel's capacity is
// the window: when it is full, read blocks and stops reading the socket.
func (d *direction) read() {
	defer close(d.q)
	for {
		bp := chunkPool.Get().(*[]byte)
		n, err := d.src.Read(*bp)
		now := time.Now()
		if n > 0 {
			d.count.Add(int64(n))
			d.q <- chunk{buf: bp, n: n, due: now.Add(d.r.Delay())}
		} else {
			chunkPool.Put(bp)
		}
		if err != nil {
			d.q <- chunk{due: now.Add(d.r.Delay()), eof: errors.Is(err, io.EOF)}
			return
		}
	}
}

// discard empties the queue until the reader has ended.
func (d *direction) discard() {
	for ch := range d.q {
		if ch.buf != nil {
			chunkPool.Put(ch.buf)
		}
	}
}

// maxBatch bounds the chunks written with one writev.
const maxBatch = 64

// write delivers the queued chunks to dst when each is due. Chunks that
// are due together go out in one writev. A write error aborts the whole
// connection; the queue is then drained so the reader never blocks on it.
func (d *direction) write(dst *net.TCPConn, rc *relayConn) {
	defer d.discard()
	var (
		batch   = make([]chunk, 0, maxBatch)
		backing = make([][]byte, 0, maxBatch)
		pending *chunk
	)
	for {
		var ch chunk
		if pending != nil {
			ch, pending = *pending, nil
		} else {
			var ok bool
			if ch, ok = <-d.q; !ok {
				return
			}
		}
		if !sleepUntil(ch.due, rc.dead) {
			if ch.buf != nil {
				chunkPool.Put(ch.buf)
			}
			return
		}
		if ch.buf == nil {
			// The source's end: a FIN goes on as a half-close,
			// anything else as a reset of the whole connection.
			if !ch.eof || dst.CloseWrite() != nil {
				rc.abort()
			}
			return
		}
		batch = append(batch, ch)
		// Take every further chunk that is already due.
		now := time.Now()
	more:
		for len(batch) < maxBatch {
			select {
			case nx, ok := <-d.q:
				if !ok {
					break more
				}
				if nx.buf == nil || nx.due.After(now) {
					pending = &nx
					break more
				}
				batch = append(batch, nx)
			default:
				break more
			}
		}
		// WriteTo consumes the slice it is given, so it gets a
		// fresh header over the same backing array each time.
		bufs := net.Buffers(backing[:0])
		for _, b := range batch {
			bufs = append(bufs, (*b.buf)[:b.n])
		}
		_, err := bufs.WriteTo(dst)
		for _, b := range batch {
			chunkPool.Put(b.buf)
		}
		batch = batch[:0]
		if err != nil {
			rc.abort()
			if pending != nil && pending.buf != nil {
				chunkPool.Put(pending.buf)
			}
			return
		}
	}
}

// sleepUntil returns true at t, give or take a few microseconds, or false
// as soon as dead is closed. Go's timers cannot keep such a time when the
// process is idle: the runtime then waits in epoll with a timeout in whole
// milliseconds, rounded up, so a 0.5 ms sleep takes 1 ms or more. A
// blocking nanosleep on this goroutine's thread, with the thread's timer
// slack (50 µs by default) cut to 1 µs, comes closer, but a sleeping CPU
// (in a virtual machine above all) still wakes some tens of microseconds
// late. So the sleep is cut short by wakeLate, the lateness seen recently,
// and what is left when it is shorter than that is waited out by yielding.
// Longer waits sleep on a Go timer first (which dead can interrupt),
// leaving the last 2 ms, which covers its rounding, to nanosleep.
func sleepUntil(t time.Time, dead <-chan struct{}) bool {
	for {
		select {
		case <-dead:
			return false
		default:
		}
		d := time.Until(t)
		if d <= 0 {
			return true
		}
		if d > 3*time.Millisecond {
			tm := time.NewTimer(d - 2*time.Millisecond)
			select {
			case <-dead:
				tm.Stop()
				return false
			case <-tm.C:
			}
			continue
		}
		late := time.Duration(wakeLate.Load())
		if d <= late {
			runtime.Gosched()
			continue
		}
		// Per thread; a thread keeps it, so setting it every time costs
		// only a cheap syscall.
		_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
		want := d - late
		ts := unix.NsecToTimespec(int64(want))
		t0 := time.Now()
		if unix.Nanosleep(&ts, nil) == nil {
			noteWakeLate(time.Since(t0) - want)
		}
	}
}

// wakeLate (nanoseconds) follows the lower edge of how late nanosleep
// returns: it drops at once to a smaller lateness and rises slowly toward
// a larger one, so that an odd slow wake-up does not make every later
// sleep end early. Aiming at the lower edge keeps bytes from being
// delivered before their time but by a microsecond or two.
var wakeLate atomic.Int64

// maxWakeLate bounds the correction: a stall longer than this is not
// wake-up latency.
const maxWakeLate = 200 * time.Microsecond

func noteWakeLate(l time.Duration) {
	l = min(max(l, 0), maxWakeLate)
	cur := time.Duration(wakeLate.Load())
	if l < cur {
		wakeLate.Store(int64(l))
	} else {
		wakeLate.Store(int64(cur + (l-cur)/32))
	}
}
