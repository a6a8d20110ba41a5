package mboxlist

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// fakeReplica listens where Cyrus's mupdate replica has its kick socket. On
// each poke it runs sync (standing in for the replica writing what the
// master told it into mailboxes.db), then answers "ok" and closes, as the
// replica does; with stall set it accepts and never answers.
func fakeReplica(t *testing.T, sync func(), stall bool) (path string, pokes *atomic.Int64) {
	t.Helper()
	dir, err := os.MkdirTemp("", "mbxr") // unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path = filepath.Join(dir, "mupdate.target")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	pokes = &atomic.Int64{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			pokes.Add(1)
			if stall {
				t.Cleanup(func() { c.Close() })
				continue
			}
			sync()
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
	return path, pokes
}

func TestMissPokesTheReplica(t *testing.T) {
	routes := map[string]string{"user.alice": "be1"}
	var h *harness
	sock, pokes := fakeReplica(t, func() {
		// The replica learns of user.newby from the master and commits it.
		routes["user.newby"] = "be2"
		writeAtomically(t, h.path, flatDB(routes))
	}, false)
	var err error
	// Polling once an hour: only the poke can make the new mailbox visible.
	h, err = startDB(t, Config{ForcePolling: true, PollInterval: time.Hour, ReplicaSocket: sock}, flatDB(map[string]string{"user.alice": "be1"}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if e, err := h.d.Lookup(ctx, "user.alice"); err != nil || e.Server != "be1" {
		t.Fatalf("hit: %+v %v", e, err)
	}
	if n := pokes.Load(); n != 0 {
		t.Fatalf("a hit poked the replica %d times", n)
	}
	e, err := h.d.Lookup(ctx, "user.newby")
	if err != nil || e.Server != "be2" {
		t.Fatalf("a mailbox the replica had just received was not found after the poke: %+v %v", e, err)
	}
	if _, err := h.d.Lookup(ctx, "user.nobody"); !errors.Is(err, lookup.ErrNotFound) {
		t.Fatalf("genuine miss: %v", err)
	}
	if n := pokes.Load(); n != 2 {
		t.Fatalf("replica poked %d times for 2 misses", n)
	}
}

func TestMissWithoutReplicaStands(t *testing.T) {
	t.Run("no socket", func(t *testing.T) {
		h, err := startDB(t, Config{ForcePolling: true, ReplicaSocket: filepath.Join(t.TempDir(), "absent")}, flatDB(map[string]string{"user.alice": "be1"}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.d.Lookup(context.Background(), "user.nobody"); !errors.Is(err, lookup.ErrNotFound) {
			t.Fatalf("err = %v, want not found", err)
		}
	})
	t.Run("replica never answers", func(t *testing.T) {
		sock, pokes := fakeReplica(t, nil, true)
		h, err := startDB(t, Config{ForcePolling: true, ReplicaSocket: sock, ReplicaTimeout: 100 * time.Millisecond}, flatDB(map[string]string{"user.alice": "be1"}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.d.Lookup(context.Background(), "user.nobody"); !errors.Is(err, lookup.ErrNotFound) {
			t.Fatalf("err = %v, want not found", err)
		}
		if pokes.Load() != 1 {
			t.Fatalf("pokes = %d", pokes.Load())
		}
	})
}
