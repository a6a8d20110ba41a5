package front

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/lmtpgate/lmtpgate/internal/address"
	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// Deliverer runs one LMTP transaction on one backend. *backend.Pool is the
// real one.
type Deliverer interface {
	Deliver(ctx context.Context, server string, env backend.Envelope, rcpts []string, msg backend.Message) []backend.Result
}

// Runtime is everything a transaction needs from one configuration
// snapshot. A transaction holds the Runtime it began with until it ends,
// so a reload never changes the rules under a transaction in progress.
type Runtime struct {
	Mode                 string // "master" or "no-master", for logs
	Address              address.Settings
	Chain                *lookup.Chain
	Deliver              Deliverer
	OverQuotaPermFailure bool
	// DeletedPrefix is Cyrus's deletedprefix ("DELETED"): mailboxes under
	// it are delayed-delete copies and never take mail. Empty disables.
	DeletedPrefix    string
	SpoolMemoryLimit int64
	SpoolDir         string

	// OnRetired runs once the Runtime has been replaced and no
	// transaction holds it any more: the service closes the sources and
	// connections the new Runtime did not take over.
	OnRetired func()

	refs    atomic.Int64
	retired atomic.Bool
	once    sync.Once
}

func (rt *Runtime) release() {
	if rt.refs.Add(-1) == 0 && rt.retired.Load() {
		rt.finish()
	}
}

func (rt *Runtime) finish() {
	rt.once.Do(func() {
		if rt.OnRetired != nil {
			go rt.OnRetired()
		}
	})
}

// Holder keeps the current Runtime and swaps it atomically.
type Holder struct {
	cur atomic.Pointer[Runtime]
}

// NewHolder returns a Holder serving rt.
func NewHolder(rt *Runtime) *Holder {
	h := &Holder{}
	h.cur.Store(rt)
	return h
}

// Current returns the Runtime now in force, without holding it.
func (h *Holder) Current() *Runtime { return h.cur.Load() }

// Acquire returns the current Runtime, held until release is called.
func (h *Holder) Acquire() (rt *Runtime, release func()) {
	for {
		rt := h.cur.Load()
		rt.refs.Add(1)
		// A swap between the load and the increment would let the old
		// Runtime retire while we think we hold it: check and retry.
		if h.cur.Load() == rt {
			return rt, rt.release
		}
		rt.release()
	}
}

// Swap makes rt current and retires the previous Runtime, whose OnRetired
// runs when its last transaction ends.
func (h *Holder) Swap(rt *Runtime) {
	old := h.cur.Swap(rt)
	if old == nil || old == rt {
		return
	}
	old.retired.Store(true)
	if old.refs.Load() == 0 {
		old.finish()
	}
}
