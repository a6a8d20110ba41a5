package front

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
	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// BenchmarkDeliverNull measures one whole single-recipient 1 KiB
// transaction through the LMTP server and the backend pool, in process,
// against a null backend: MAIL, RCPT (with its lookup), DATA, spooling,
// delivery and the reply. allocs/op is the allocations per message on
// both sides of lmtpgate (the null backend and the client allocate next to
// nothing per message).
func BenchmarkDeliverNull(b *testing.B) { benchDeliverNull(b, 1<<10) }

// BenchmarkDeliverNull5MiB is the same with a 5 MiB message: the cost per
// byte (reading the MTA's DATA, the spool, the wire encoding to the
// backend), which the 1 KiB case hides under the per-message cost.
func BenchmarkDeliverNull5MiB(b *testing.B) { benchDeliverNull(b, 5<<20) }

func benchDeliverNull(b *testing.B, size int) {
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
	src := &memSource{&mapSource{name: "mailboxes-db", entries: map[string]lookup.Entry{
		"user.alice": active("user.alice", "be1", "alice\tlrswipkxtecdan\t"),
	}}}
	rt := &Runtime{Mode: "master", Address: address.DefaultSettings(), Chain: lookup.NewChain(time.Second, src),
		Backends: pool, SpoolMemoryLimit: 1 << 20}
	fc := DefaultConfig()
	fc.MaxRecipients, fc.ReadTimeout, fc.WriteTimeout = 100, time.Minute, time.Minute
	srv := New(Options{Hostname: "fe.bench", Config: fc, Log: log}, NewHolder(rt))
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
	body := bench.NewBody(size, 1)
	header := bench.Header(nil, "sender@example.org", "bench.1", time.Now(), &body)
	rcpts := []string{"alice@example.org"}
	codes := make([]int, 1)
	b.ReportAllocs()
	b.SetBytes(int64(len(header) + len(body.Wire)))
	for b.Loop() {
		if err := c.Send("sender@example.org", rcpts, header, body.Wire, codes); err != nil {
			b.Fatal(err)
		}
		if codes[0] != 250 {
			b.Fatalf("reply %d", codes[0])
		}
	}
}

// memSource answers hits from memory as mailboxes.db's index does
// (lookup.Peeker).
type memSource struct{ *mapSource }

func (m *memSource) Peek(mb string) (lookup.Entry, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[mb]
	return e, ok
}
