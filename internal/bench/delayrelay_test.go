package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

// startUpstream serves every connection with handle on a loopback port.
func startUpstream(t *testing.T, handle func(c *net.TCPConn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return l.Addr().String()
}

func startDelayRelay(t *testing.T, target string, delay time.Duration, window int) *DelayRelay {
	t.Helper()
	r, err := NewDelayRelay(context.Background(), "127.0.0.1:0", target, delay, window)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { r.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("relay Close hangs")
		}
	})
	return r
}

func dialTCP(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// Against hangs only.
	c.SetDeadline(time.Now().Add(60 * time.Second))
	return c.(*net.TCPConn)
}

// TestDelayRelayIntegrity sends several MiB each way through a relay with
// a delay and checks every byte arrives, in order, and that half-closes
// pass both ways: the upstream echoes until the client's FIN, then sends a
// trailer and closes, which the client sees as the end of the stream.
func TestDelayRelayIntegrity(t *testing.T) {
	up := startUpstream(t, func(c *net.TCPConn) {
		if _, err := io.Copy(c, c); err != nil {
			return
		}
		c.Write([]byte("trailer"))
		c.CloseWrite()
	})
	r := startDelayRelay(t, up, time.Millisecond, 0)
	c := dialTCP(t, r.Addr())
	payload := make([]byte, 5<<20+123)
	rand.Read(payload)
	go func() {
		// Uneven writes, so chunks have all sizes.
		for p := payload; len(p) > 0; {
			n := min(len(p), 1+len(p)%70000)
			if _, err := c.Write(p[:n]); err != nil {
				return
			}
			p = p[n:]
		}
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, payload...), "trailer"...)
	if !bytes.Equal(got, want) {
		t.Fatalf("received %d bytes, want %d (equal prefix %d)", len(got), len(want), commonPrefix(got, want))
	}
	if r.Up.Load() != int64(len(payload)) || r.Down.Load() != int64(len(want)) || r.Conns.Load() != 1 {
		t.Errorf("counters up %d down %d conns %d", r.Up.Load(), r.Down.Load(), r.Conns.Load())
	}
}

func commonPrefix(a, b []byte) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// TestDelayRelayDelays checks the lower bounds a link imposes, which a
// correct relay can never beat however fast the machine: the greeting of a
// server comes four one-way delays after connecting (handshake, then the
// greeting itself), a round trip takes two, and a new delay applies to
// bytes that arrive after SetDelay. Each crossing may end up to
// maxWakeLate early, as the relay aims early by the lateness of its
// wake-ups (see sleepUntil).
func TestDelayRelayDelays(t *testing.T) {
	up := startUpstream(t, func(c *net.TCPConn) {
		c.Write([]byte("hello\n"))
		io.Copy(c, c)
	})
	const d = 40 * time.Millisecond
	r := startDelayRelay(t, up, d, 0)
	t0 := time.Now()
	c := dialTCP(t, r.Addr())
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello\n" {
		t.Fatalf("greeting %q, %v", buf, err)
	}
	atLeast := func(what string, el time.Duration, hops int) {
		t.Helper()
		if min := time.Duration(hops) * (d - maxWakeLate); el < min {
			t.Errorf("%s after %v, want at least %v", what, el, min)
		}
	}
	atLeast("greeting", time.Since(t0), 4)
	rtt := func() time.Duration {
		t0 := time.Now()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf[:1]); err != nil {
			t.Fatal(err)
		}
		return time.Since(t0)
	}
	for range 3 {
		atLeast("round trip", rtt(), 2)
	}
	r.SetDelay(3 * d)
	if r.Delay() != 3*d {
		t.Errorf("Delay = %v", r.Delay())
	}
	atLeast("round trip after SetDelay to 3 delays", rtt(), 6)
}

// connectedAtHour connects through a relay without delay, checks the
// connection reaches the upstream (which counts what it receives), then
// sets a delay nothing in a test can outlast.
func connectedAtHour(t *testing.T, window int) (*DelayRelay, *net.TCPConn, *atomic.Int64) {
	t.Helper()
	received := new(atomic.Int64)
	up := startUpstream(t, func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			received.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	r := startDelayRelay(t, up, 0, window)
	c := dialTCP(t, r.Addr())
	if _, err := c.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return received.Load() == 1 })
	r.SetDelay(time.Hour)
	return r, c, received
}

// TestDelayRelayPipelines checks that the relay is a link, not a
// stop-and-wait proxy: it goes on taking what the client sends while the
// first bytes are still on their way.
func TestDelayRelayPipelines(t *testing.T) {
	r, c, received := connectedAtHour(t, 0)
	for range 3 {
		if _, err := c.Write(make([]byte, 10000)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // separate segments
	}
	waitFor(t, func() bool { return r.Up.Load() == 30001 })
	if n := received.Load(); n != 1 {
		t.Errorf("upstream received %d bytes, want the 1 sent before the delay", n)
	}
}

// TestDelayRelayBackpressure checks that the relay holds at most its
// window: a client that writes without pause is blocked by TCP once the
// window and the socket buffers are full, instead of the relay reading
// (and holding) all it sends.
func TestDelayRelayBackpressure(t *testing.T) {
	const window = 4 * relayChunk
	r, c, _ := connectedAtHour(t, window)
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	var wrote int64
	block := make([]byte, 64<<10)
	for {
		n, err := c.Write(block)
		wrote += int64(n)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatal(err)
			}
			break
		}
		if wrote > 1<<30 {
			t.Fatal("1 GiB written into a relay with a window of 128 KiB")
		}
	}
	// The queue, one chunk in the writer's hands and one in the
	// reader's.
	if n := r.Up.Load() - 1; n > window+2*relayChunk || n < window {
		t.Errorf("relay read %d bytes (client wrote %d), want between %d and %d", n, wrote, window, window+2*relayChunk)
	}
}

// TestDelayRelayReset checks that a reset on one side reaches the other:
// the upstream aborts (RST) and the client's read fails instead of seeing
// a clean end of stream.
func TestDelayRelayReset(t *testing.T) {
	up := startUpstream(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		c.Read(buf)
		c.SetLinger(0)
		c.Close()
	})
	r := startDelayRelay(t, up, time.Millisecond, 0)
	c := dialTCP(t, r.Addr())
	c.Write([]byte("x"))
	if _, err := io.ReadAll(c); err == nil {
		t.Error("client saw a clean end after the upstream's reset")
	}
}

// TestDelayRelayUnreachable checks that a client of a relay whose target
// refuses connections sees its connection fail, not hang.
func TestDelayRelayUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	r := startDelayRelay(t, dead, 0, 0)
	// The reset may come before connect has returned.
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadAll(c); err == nil {
		t.Error("client saw a clean end from an unreachable target")
	}
}

// TestDelayRelayCloseAborts checks that Close ends connections whose bytes
// are still waiting for their time.
func TestDelayRelayCloseAborts(t *testing.T) {
	up := startUpstream(t, func(c *net.TCPConn) { io.Copy(c, c) })
	r, err := NewDelayRelay(context.Background(), "127.0.0.1:0", up, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := dialTCP(t, r.Addr())
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	r.SetDelay(time.Hour)
	c.Write([]byte("late"))
	waitFor(t, func() bool { return r.Up.Load() == 8 })
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Close hangs on a connection with bytes in flight")
	}
	if _, err := io.ReadAll(c); err == nil {
		t.Error("client saw a clean end after Close")
	}
}

// waitFor waits for cond, failing the test after a generous time.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, 30*time.Second, "the condition", cond)
}

// TestProbeThroughRelay runs the probe protocol straight to a sink and
// through a relay: every request is answered and every byte counted, and
// through a 20 ms link each round trip takes at least 40 ms (less the
// relay's early aim, see TestDelayRelayDelays).
func TestProbeThroughRelay(t *testing.T) {
	ctx := context.Background()
	s, err := StartRequestSink(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := startDelayRelay(t, s.Addr(), 20*time.Millisecond, 0)
	var want int64
	for _, addr := range []string{s.Addr(), r.Addr()} {
		p, err := DialProbe(ctx, addr, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		for _, size := range []int64{0, 1, 300 << 10, 3 << 20} {
			ds, err := p.Requests(size, 2, time.Minute)
			if err != nil || len(ds) != 2 {
				t.Fatalf("%s: %d-byte requests: %v, %v", addr, size, ds, err)
			}
			want += 2 * size
			if addr == r.Addr() {
				for _, d := range ds {
					if d < 2*(20*time.Millisecond-maxWakeLate) {
						t.Errorf("%d bytes through a 20 ms link: %v", size, d)
					}
				}
			}
		}
		p.Close()
	}
	if got := s.Bytes.Load(); got != want {
		t.Errorf("sink read %d payload bytes, want %d", got, want)
	}
	if _, err := (&Probe{}).Requests(1, 0, time.Second); err == nil {
		t.Error("count 0 accepted")
	}
}

// TestNoteWakeLate checks the lateness estimate follows the lower edge:
// down at once, up by a 32nd of the gap, never below 0 or above
// maxWakeLate.
func TestNoteWakeLate(t *testing.T) {
	defer wakeLate.Store(wakeLate.Load())
	for _, tc := range []struct {
		cur, sample, want time.Duration
	}{
		{50 * time.Microsecond, 10 * time.Microsecond, 10 * time.Microsecond},
		{10 * time.Microsecond, 42 * time.Microsecond, 11 * time.Microsecond},
		{10 * time.Microsecond, -5 * time.Microsecond, 0},
		{0, time.Second, maxWakeLate / 32},
		{maxWakeLate, time.Second, maxWakeLate},
	} {
		wakeLate.Store(int64(tc.cur))
		noteWakeLate(tc.sample)
		if got := time.Duration(wakeLate.Load()); got != tc.want {
			t.Errorf("from %v, sample %v: %v, want %v", tc.cur, tc.sample, got, tc.want)
		}
	}
}
