package front

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/lmtpgate/lmtpgate/internal/address"
	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// Backends opens transactions on backends. *backend.Pool is the real one.
type Backends interface {
	// Begin opens a transaction on server; see backend.Pool.Begin.
	Begin(ctx context.Context, server string, env backend.Envelope) *backend.Txn
	// Available says whether server may be used now; see
	// backend.Pool.Available.
	Available(server string) error
}

// Runtime is everything a transaction needs from one configuration
// snapshot. A transaction holds the Runtime it began with until it ends,
// so a reload never changes the rules under a transaction in progress.
type Runtime struct {
	Mode     string // "master" or "no-master", for logs
	Address  address.Settings
	Chain    *lookup.Chain
	Backends Backends
	// VerifyRcpt: answer each RCPT with the backend's own reply.
	VerifyRcpt           bool
	OverQuotaPermFailure bool
	// DeletedPrefix is Cyrus's deletedprefix ("DELETED"): mailboxes under
	// it are delayed-delete copies and never take mail. Empty disables.
	DeletedPrefix    string
	SpoolMemoryLimit int64
	SpoolDir         string
	// Ext belongs to the Runtime's owner (the daemon keeps its whole
	// snapshot there), so that one pointer holds everything that is live
	// and a reader never mixes two snapshots.
	Ext any

	refs      atomic.Int64
	retired   atomic.Bool
	onRetired func()
	once      sync.Once
}

// Release ends a hold that Acquire gave.
func (rt *Runtime) Release() {
	if rt.refs.Add(-1) == 0 && rt.retired.Load() {
		rt.finish()
	}
}

func (rt *Runtime) finish() {
	rt.once.Do(func() {
		if rt.onRetired != nil {
			go rt.onRetired()
		}
	})
}

// Holder keeps the current Runtime and swaps it atomically.
type Holder struct {
	mu  sync.Mutex // serialises Swap
	cur atomic.Pointer[Runtime]
}

// NewHolder returns a Holder serving rt.
func NewHolder(rt *Runtime) *Holder {
	h := &Holder{}
	h.cur.Store(rt)
	return h
}

// Current returns the Runtime now in force, without holding it; for
// callers that only read its plain fields.
func (h *Holder) Current() *Runtime { return h.cur.Load() }

// Acquire returns the current Runtime, held until its Release is called.
func (h *Holder) Acquire() *Runtime {
	for {
		rt := h.cur.Load()
		rt.refs.Add(1)
		// A swap between the load and the increment would let the old
		// Runtime retire while we think we hold it: check and retry.
		if h.cur.Load() == rt {
			return rt
		}
		rt.Release()
	}
}

// Swap makes rt current and retires the previous Runtime in the same step:
// onRetired runs once the previous Runtime's last transaction has ended.
func (h *Holder) Swap(rt *Runtime, onRetired func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.cur.Load()
	if old == rt {
		return
	}
	// The hook is in place before anyone can see old as retired.
	old.onRetired = onRetired
	h.cur.Store(rt)
	old.retired.Store(true)
	if old.refs.Load() == 0 {
		old.finish()
	}
}
