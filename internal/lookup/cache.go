package lookup

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// CacheConfig is how a Cache keeps answers. Every field means what its
// comment says, zero included; the defaults are DefaultCacheConfig's.
type CacheConfig struct {
	// PositiveTTL is how long a found mailbox is remembered; 0: not at all.
	PositiveTTL time.Duration
	// NegativeTTL is how long "no such mailbox" is remembered; 0: not at
	// all. Keep it short: a mailbox created a moment ago must be found.
	NegativeTTL time.Duration
	// MaxEntries bounds the memory; 0 caches nothing.
	MaxEntries int
}

// DefaultCacheConfig returns the defaults of every setting.
func DefaultCacheConfig() CacheConfig {
	return CacheConfig{PositiveTTL: 30 * time.Second, NegativeTTL: 5 * time.Second, MaxEntries: 100000}
}

// Cache wraps a MUPDATE source so that a burst of mail to one mailbox costs
// one query, not one per message. Positive answers live PositiveTTL,
// "no such mailbox" answers NegativeTTL (short, so a newly created mailbox
// is found soon). Failures are never cached: the next question asks again,
// and the source's own breaker keeps that cheap. Concurrent questions for
// the same mailbox share one query.
type Cache struct {
	src         Source
	positiveTTL time.Duration
	negativeTTL time.Duration
	maxEntries  int
	now         func() time.Time

	mu       sync.Mutex
	entries  map[string]cacheEntry
	inflight map[string]*call
	hits     uint64
	misses   uint64
}

type cacheEntry struct {
	entry   Entry
	missing bool
	expires time.Time
}

type call struct {
	done  chan struct{}
	entry Entry
	err   error
}

// NewCache wraps src.
func NewCache(src Source, cfg CacheConfig) *Cache {
	return &Cache{
		src:         src,
		positiveTTL: cfg.PositiveTTL,
		negativeTTL: cfg.NegativeTTL,
		maxEntries:  cfg.MaxEntries,
		now:         time.Now,
		entries:     map[string]cacheEntry{},
		inflight:    map[string]*call{},
	}
}

// Name is the wrapped source's name.
func (c *Cache) Name() string { return c.src.Name() }

// Stats reports cache hits and misses.
func (c *Cache) Stats() (hits, misses uint64, size int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.misses, len(c.entries)
}

// Peek answers a cached positive answer (Peeker); everything else goes
// through Lookup, which counts it.
func (c *Cache) Peek(mailbox string) (Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[mailbox]; ok && !e.missing && c.now().Before(e.expires) {
		c.hits++
		return e.entry, true
	}
	return Entry{}, false
}

// Lookup answers from the cache or asks the source.
func (c *Cache) Lookup(ctx context.Context, mailbox string) (Entry, error) {
	c.mu.Lock()
	if e, ok := c.entries[mailbox]; ok {
		if c.now().Before(e.expires) {
			c.hits++
			c.mu.Unlock()
			if e.missing {
				return Entry{}, ErrNotFound
			}
			return e.entry, nil
		}
		delete(c.entries, mailbox)
	}
	c.misses++
	if cl, ok := c.inflight[mailbox]; ok {
		c.mu.Unlock()
		select {
		case <-cl.done:
			return cl.entry, cl.err
		case <-ctx.Done():
			return Entry{}, ctx.Err()
		}
	}
	cl := &call{done: make(chan struct{})}
	c.inflight[mailbox] = cl
	c.mu.Unlock()

	cl.entry, cl.err = c.src.Lookup(ctx, mailbox)

	c.mu.Lock()
	delete(c.inflight, mailbox)
	var ttl time.Duration
	switch {
	case cl.err == nil:
		ttl = c.positiveTTL
	case errors.Is(cl.err, ErrNotFound):
		ttl = c.negativeTTL
	}
	if ttl > 0 && c.maxEntries > 0 {
		if len(c.entries) >= c.maxEntries {
			c.evict()
		}
		c.entries[mailbox] = cacheEntry{entry: cl.entry, missing: cl.err != nil, expires: c.now().Add(ttl)}
	}
	c.mu.Unlock()
	close(cl.done)
	return cl.entry, cl.err
}

// evict drops expired entries, and if that frees nothing, an arbitrary
// eighth of the cache (Go's map order is random enough for this).
func (c *Cache) evict() {
	now := c.now()
	for k, e := range c.entries {
		if !now.Before(e.expires) {
			delete(c.entries, k)
		}
	}
	n := len(c.entries) / 8
	for k := range c.entries {
		if len(c.entries) < c.maxEntries && n <= 0 {
			break
		}
		delete(c.entries, k)
		n--
	}
}

// Health is the wrapped source's, with the cache's counters added.
func (c *Cache) Health() Health {
	var h Health
	if hr, ok := c.src.(HealthReporter); ok {
		h = hr.Health()
	} else {
		h = Health{Healthy: true}
	}
	hits, misses, size := c.Stats()
	h.CacheHits, h.CacheMisses, h.CacheEntries = hits, misses, size
	h.Detail += fmt.Sprintf(", cache %d entries %d hits %d misses", size, hits, misses)
	return h
}
