// Package lookup answers the question every recipient asks: which backend
// holds this mailbox? It defines the Source interface that the mailboxes.db
// reader and the MUPDATE clients implement, and the Chain that asks them in
// the configured order with failover.
package lookup

import (
	"context"
	"errors"
	"math"
	"time"
)

// State is the routing state of a mailbox entry, as Cyrus records it in the
// mailboxes.db type flags or in the MUPDATE response kind.
type State uint8

const (
	// Active: the mailbox exists on Server and takes mail.
	Active State = iota
	// Reserved: being created or renamed (mbtype 'z', MUPDATE RESERVE).
	// Cyrus answers 451 4.2.1 for it.
	Reserved
	// Moving: being moved to another server (mbtype 'm'). 451 4.2.1.
	Moving
)

func (s State) String() string {
	switch s {
	case Active:
		return "active"
	case Reserved:
		return "reserved"
	case Moving:
		return "moving"
	}
	return "unknown"
}

// Entry is what a source knows of one mailbox. Deleted, intermediate and
// tombstone entries are never returned as entries: a source reports them as
// ErrNotFound, as Cyrus's frontend treats them as nonexistent.
type Entry struct {
	// Name is the Cyrus internal mailbox name: "user.alice",
	// "example.com!user.alice", "shared.lists", "user.john^doe".
	Name string
	// Server is the Cyrus server string: "backend1", "10.0.0.2:2003",
	// "host/tls". Empty only for a local mailbox, which a dedicated
	// frontend does not have.
	Server string
	// Partition is the backend partition ("default"); informational.
	Partition string
	// ACL is the Cyrus ACL string "identifier TAB rights TAB ..." (may be
	// empty, e.g. for reserved entries).
	ACL string
	// State is Active, Reserved or Moving.
	State State
}

// ErrNotFound is returned by a Source that answered authoritatively that the
// mailbox does not exist. Any other error means the source could not answer
// (unreachable, timed out, unreadable file) and the question passes on.
var ErrNotFound = errors.New("no such mailbox")

// Source is one place that can answer "which backend holds this mailbox?".
type Source interface {
	// Name is the source's configured name: "mailboxes-db",
	// "local-mupdate" or "master-mupdate".
	Name() string
	// Lookup returns the entry for the internal mailbox name, ErrNotFound
	// for an authoritative miss, or another error if the source failed.
	Lookup(ctx context.Context, mailbox string) (Entry, error)
}

// Health is how a source is doing, for `lmtpgate status`, `resolve -v`,
// READY and metrics.
type Health struct {
	// Healthy is false while the source cannot answer: not loaded yet,
	// unreachable, failing authentication, in its breaker's backoff.
	Healthy bool `json:"healthy"`
	// State is a word for the source's state ("loaded", "connected",
	// "backoff", "stale"...).
	State string `json:"state"`
	// Detail says more, in words.
	Detail string `json:"detail"`
	// Entries is the number of mailboxes a source holds in memory, if it
	// holds a list; LoadedAt is when that list was last updated.
	Entries  int       `json:"entries,omitempty"`
	LoadedAt time.Time `json:"loaded_at,omitzero"`
	// Queries counts the questions a remote source was asked.
	Queries uint64 `json:"queries,omitempty"`
	// CacheHits, CacheMisses and CacheEntries are the answer cache's, for
	// a source behind one.
	CacheHits    uint64 `json:"cache_hits,omitempty"`
	CacheMisses  uint64 `json:"cache_misses,omitempty"`
	CacheEntries int    `json:"cache_entries,omitempty"`
	// Stale is set while a source answers from a list it cannot bring
	// up to date (mailboxes.db unreadable since its last good load, the
	// master replica's stream down or stopped).
	Stale bool `json:"stale,omitempty"`
	// LastError is the last failure.
	LastError string `json:"last_error,omitempty"`
}

// HealthReporter is implemented by every source.
type HealthReporter interface {
	Health() Health
}

// Interner numbers the few distinct strings of a mailbox list (its
// servers and partitions: a murder has a handful of backends and a
// million mailboxes) so that each entry holds 16-bit indexes instead of
// strings. Index 0 is the empty string. The zero value is not ready; use
// NewInterner.
type Interner struct {
	strs  []string
	index map[string]uint16
}

// NewInterner returns an Interner holding only "".
func NewInterner() *Interner {
	return &Interner{strs: []string{""}, index: map[string]uint16{"": 0}}
}

// Index returns the index of s, adding it if it is new; ok is false when
// the table is full (65,535 distinct strings).
func (in *Interner) Index(s []byte) (i uint16, ok bool) {
	if len(s) == 0 {
		return 0, true
	}
	if i, ok := in.index[string(s)]; ok { // no allocation for the lookup
		return i, true
	}
	if len(in.strs) >= math.MaxUint16 {
		return 0, false
	}
	str := string(s)
	i = uint16(len(in.strs))
	in.strs = append(in.strs, str)
	in.index[str] = i
	return i, true
}

// Strings returns the table, indexed by what Index returned; the caller
// must not add to the Interner afterwards.
func (in *Interner) Strings() []string { return in.strs }
