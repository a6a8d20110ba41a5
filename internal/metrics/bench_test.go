package metrics_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/address"
	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/bench"
	"github.com/lmtpgate/lmtpgate/internal/front"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/metrics"
)

type oneSource struct{}

func (oneSource) Name() string { return "mailboxes-db" }
func (oneSource) Lookup(context.Context, string) (lookup.Entry, error) {
	return lookup.Entry{Name: "user.alice", Server: "be1", ACL: "alice\tlrswipkxtecdan\t"}, nil
}

// Peek answers from memory, as mailboxes.db's index does.
func (s oneSource) Peek(mb string) (lookup.Entry, bool) {
	e, _ := s.Lookup(context.Background(), mb)
	return e, true
}

// BenchmarkDeliverNull is front's BenchmarkDeliverNull with and without
// the metrics instruments on the hot path (recipient outcomes, lookup and
// backend histograms), so that their cost can be read side by side.
func BenchmarkDeliverNull(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "metrics=off"
		if on {
			name = "metrics=on"
		}
		b.Run(name, func(b *testing.B) { deliverNull(b, on) })
	}
}

func deliverNull(b *testing.B, on bool) {
	nb := &bench.NullBackend{}
	defer nb.Close()
	addr, err := nb.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	bc := backend.DefaultConfig()
	bc.Addresses = map[string]string{"be1": addr.String()}
	bc.AuthName, bc.Password = "bench", "bench"
	pool := backend.NewPool(bc, log)
	defer pool.Close()
	chain := lookup.NewChain(time.Second, oneSource{})
	var m *metrics.Metrics
	if on {
		m = metrics.New("bench", func() metrics.State { return metrics.State{} })
		pool.SetObserver(m.BackendDelivery)
		chain = chain.WithObserver(m.Lookup)
	}
	rt := &front.Runtime{Mode: "master", Address: address.DefaultSettings(), Chain: chain, Backends: pool, SpoolMemoryLimit: 1 << 20}
	fc := front.DefaultConfig()
	srv := front.New(front.Options{Hostname: "fe.bench", Config: fc, Log: log}, front.NewHolder(rt))
	if on {
		srv.SetHooks(front.Hooks{Recipient: m.Recipient})
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l, true)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	c, err := bench.Dial(context.Background(), l.Addr().String(), time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("bench", true); err != nil {
		b.Fatal(err)
	}
	body := bench.NewBody(1<<10, 1)
	header := bench.Header(nil, "sender@example.org", "bench.1", time.Now(), &body)
	rcpts := []string{"alice@example.org"}
	codes := make([]int, 1)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Send("sender@example.org", rcpts, header, body.Wire, codes); err != nil {
			b.Fatal(err)
		}
		if codes[0] != 250 {
			b.Fatalf("reply %d", codes[0])
		}
	}
}
