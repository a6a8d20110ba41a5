package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/bench"
)

// labNet is the emulated network of the lab: a delay relay in front of
// each backend's lmtpd and imapd and one in front of the master's MUPDATE.
// The backends' servernames are the relays' hosts, so whatever follows
// mailboxes.db or MUPDATE (Cyrus's LMTP proxy, lmtpgate) crosses it, and
// the load generator's direct run is pointed at the same relays. The relays
// live on a loopback /24 of their own, 127.R.S.0/24:
//
//	127.R.S.1:3905         -> the master's MUPDATE
//	127.R.S.(1+i):2003     -> backend i's lmtpd
//	127.R.S.(1+i):143      -> backend i's imapd
type labNet struct {
	prefix string // "127.R.S."
	lmtp   map[int]*bench.DelayRelay
	imap   map[int]*bench.DelayRelay
	master *bench.DelayRelay
}

// newLabNet picks a /24 whose relay addresses are free to bind.
func newLabNet(backends int) (*labNet, error) {
	for try := 0; try < 50; try++ {
		prefix := fmt.Sprintf("127.%d.%d.", 1+rand.IntN(254), rand.IntN(256))
		addrs := []string{prefix + "1:3905"}
		for i := 1; i <= backends; i++ {
			h := prefix + strconv.Itoa(1+i)
			addrs = append(addrs, h+":2003", h+":143")
		}
		free := true
		for _, a := range addrs {
			l, err := net.Listen("tcp", a)
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return &labNet{prefix: prefix, lmtp: map[int]*bench.DelayRelay{}, imap: map[int]*bench.DelayRelay{}}, nil
		}
	}
	return nil, errors.New("lab: no free loopback /24 for the relays")
}

// backend is murderlab's Options.BackendServername: it starts backend i's
// relays and names their host as the backend's servername.
func (n *labNet) backend(ctx context.Context, i int, addr string) (string, error) {
	host := n.prefix + strconv.Itoa(1+i)
	var err error
	if n.lmtp[i], err = bench.NewDelayRelay(ctx, host+":2003", net.JoinHostPort(addr, "2003"), 0, 0); err != nil {
		return "", err
	}
	if n.imap[i], err = bench.NewDelayRelay(ctx, host+":143", net.JoinHostPort(addr, "143"), 0, 0); err != nil {
		return "", err
	}
	return host, nil
}

// masterMupdate is murderlab's Options.FrontendMupdate.
func (n *labNet) masterMupdate(ctx context.Context, addr string) (string, error) {
	var err error
	if n.master, err = bench.NewDelayRelay(ctx, n.prefix+"1:3905", addr, 0, 0); err != nil {
		return "", err
	}
	return n.master.Addr(), nil
}

func (n *labNet) all() []*bench.DelayRelay {
	var out []*bench.DelayRelay
	if n.master != nil {
		out = append(out, n.master)
	}
	for _, m := range []map[int]*bench.DelayRelay{n.lmtp, n.imap} {
		for _, r := range m {
			if r != nil {
				out = append(out, r)
			}
		}
	}
	return out
}

// SetDelay sets the one-way delay of every relay.
func (n *labNet) SetDelay(d time.Duration) {
	for _, r := range n.all() {
		r.SetDelay(d)
	}
}

// LMTPAddr is backend i's lmtpd as seen across the network.
func (n *labNet) LMTPAddr(i int) string { return n.lmtp[i].Addr() }

// LMTPBytes is what crossed the backends' LMTP relays so far, toward the
// backends and back.
func (n *labNet) LMTPBytes() (up, down int64) {
	for _, r := range n.lmtp {
		up += r.Up.Load()
		down += r.Down.Load()
	}
	return up, down
}

// Close stops every relay.
func (n *labNet) Close() {
	for _, r := range n.all() {
		r.Close()
	}
}
