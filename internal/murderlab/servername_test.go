package murderlab

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// forwarder is a plain TCP relay for the test: what stands for the network
// between the frontend and a backend or the master. It counts what it
// carries toward the target.
type forwarder struct {
	l     net.Listener
	up    atomic.Int64
	conns atomic.Int64
	wg    sync.WaitGroup
}

func startForwarder(t *testing.T, listen, target string) *forwarder {
	t.Helper()
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{l: l}
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		f.wg.Wait()
	})
	f.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.conns.Add(1)
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			open = append(open, c, up)
			mu.Unlock()
			f.wg.Go(func() {
				n, _ := io.Copy(up, c)
				f.up.Add(n)
				up.(*net.TCPConn).CloseWrite()
			})
			f.wg.Go(func() {
				io.Copy(c, up)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	return f
}

// TestAdvertisedServernames puts every backend and the master behind a
// forwarder, as lmtpbench puts them behind delay relays, and checks that
// the names and the traffic follow: mailboxes.db and MUPDATE name the
// forwarders' hosts, the frontend's replica syncs through the master's
// forwarder, and Cyrus's LMTP proxy delivers through a backend's
// forwarder (on the lmtp port from /etc/services), with proxy AUTH in the
// advertised name's realm.
func TestAdvertisedServernames(t *testing.T) {
	RequireCyrus(t)
	// A loopback /24 of the test's own for the forwarders.
	var fwdNet string
	for try := 0; try < 50 && fwdNet == ""; try++ {
		n := fmt.Sprintf("127.%d.%d.", 1+rand.IntN(254), rand.IntN(256))
		if l, err := net.Listen("tcp", n+"1:3905"); err == nil {
			l.Close()
			fwdNet = n
		}
	}
	if fwdNet == "" {
		t.Fatal("no free loopback net for the forwarders")
	}
	lmtpFwd := map[int]*forwarder{}
	var masterFwd *forwarder
	l := StartTest(t, Options{Log: testWriter{t}, CyrusProxy: true,
		BackendServername: func(i int, addr string) (string, error) {
			host := fwdNet + strconv.Itoa(1+i)
			lmtpFwd[i] = startForwarder(t, net.JoinHostPort(host, "2003"), net.JoinHostPort(addr, "2003"))
			startForwarder(t, net.JoinHostPort(host, "143"), net.JoinHostPort(addr, "143"))
			return host, nil
		},
		FrontendMupdate: func(addr string) (string, error) {
			masterFwd = startForwarder(t, fwdNet+"1:3905", addr)
			return masterFwd.l.Addr().String(), nil
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for i := 1; i <= 2; i++ {
		if want := fwdNet + strconv.Itoa(1+i); l.BackendServer(i) != want {
			t.Errorf("BackendServer(%d) = %q, want %q", i, l.BackendServer(i), want)
		}
	}
	if err := l.CreateMailbox(ctx, 2, "user/carol", nil); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitFrontend(ctx, "user.carol", true); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]func(context.Context) (map[string]string, error){"frontend": l.FrontendMailboxes, "master": l.MasterMailboxes} {
		mb, err := m(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if mb["user.carol"] != l.BackendServer(2) {
			t.Errorf("%s mailboxes.db: user.carol on %q, want %q", name, mb["user.carol"], l.BackendServer(2))
		}
	}
	if masterFwd.conns.Load() == 0 {
		t.Error("the frontend's replica never connected through the master's forwarder")
	}
	if err := deliverAuth(ctx, t, l, l.CyrusProxyLMTPAddr(), false, "carol@example.org", "across", "<x1@lab>"); err != nil {
		t.Fatalf("deliver through Cyrus's LMTP proxy: %v", err)
	}
	expectOneMessage(ctx, t, l, 2, "user/carol", "across", "<x1@lab>")
	// The proxy keeps its backend connection open, so the bytes are
	// counted only at its end: the connection is the evidence.
	if lmtpFwd[2].conns.Load() == 0 {
		t.Error("Cyrus's proxy did not connect through backend 2's forwarder")
	}
	if lmtpFwd[1].conns.Load() != 0 {
		t.Errorf("backend 1's LMTP forwarder carried %d connections for a delivery to backend 2", lmtpFwd[1].conns.Load())
	}
}
