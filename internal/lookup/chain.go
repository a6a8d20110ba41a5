package lookup

import (
	"context"
	"errors"
	"time"
)

// Status is the verdict of a chain lookup.
type Status uint8

const (
	// Found: a source knows the mailbox (Entry.State may still be
	// Reserved or Moving).
	Found Status = iota
	// NotFound: at least one source answered and every source that
	// answered said "no such mailbox". Only this verdict may become a 5xx.
	NotFound
	// Unavailable: no source could answer. The recipient gets a 4xx so
	// the MTA retries; a lookup failure must never bounce mail.
	Unavailable
)

func (s Status) String() string {
	switch s {
	case Found:
		return "found"
	case NotFound:
		return "not-found"
	}
	return "unavailable"
}

// Answer is one source's reply to one question, kept for diagnostics
// (`lmtpgate resolve -v`).
type Answer struct {
	Source string
	Entry  Entry
	Err    error // nil, ErrNotFound, or the source's failure
	Dur    time.Duration
}

// Result is the chain's verdict.
type Result struct {
	Status Status
	Entry  Entry
	Source string // the source that found it (Found only)
	Err    error  // the last failure (Unavailable only)
	Trace  []Answer
}

// Chain asks its sources in order. It is immutable; a reload builds a new
// one.
type Chain struct {
	sources []Source
	timeout time.Duration
	observe func(source string, answer Status, d time.Duration)
}

// WithObserver returns a copy of the chain that calls f after every
// source's answer (Found, NotFound, or Unavailable for a failure), for
// metrics. f must not block.
func (c *Chain) WithObserver(f func(source string, answer Status, d time.Duration)) *Chain {
	x := *c
	x.observe = f
	return &x
}

// NewChain returns a chain over sources, giving each source at most timeout
// per question.
func NewChain(timeout time.Duration, sources ...Source) *Chain {
	return &Chain{sources: sources, timeout: timeout}
}

// ask puts the question to s within the chain's timeout.
func (c *Chain) ask(ctx context.Context, s Source, mailbox string) (Entry, error) {
	qctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return s.Lookup(qctx, mailbox)
}

// Peeker is a Source that can answer from memory, without waiting, when it
// holds the mailbox (mailboxes.db's index, the master replica's list): the
// chain then asks Peek first and needs no timer for the question. ok false
// means Lookup must be asked (a miss may wait for a replica, a list may not
// be loaded).
type Peeker interface {
	Peek(mailbox string) (e Entry, ok bool)
}

// Resolve finds the mailbox. A source that fails passes the question on;
// so does a miss, because a mailbox just created may not yet have reached
// the local replica (Cyrus's own lmtpd pokes its replica and looks again
// for the same reason). With trace set, every source's answer is recorded.
func (c *Chain) Resolve(ctx context.Context, mailbox string, trace bool) Result {
	var res Result
	answered := false
	for _, s := range c.sources {
		start := time.Now()
		var e Entry
		var err error
		if p, ok := s.(Peeker); ok {
			var hit bool
			if e, hit = p.Peek(mailbox); !hit {
				e, err = c.ask(ctx, s, mailbox)
			}
		} else {
			e, err = c.ask(ctx, s, mailbox)
		}
		if trace {
			res.Trace = append(res.Trace, Answer{Source: s.Name(), Entry: e, Err: err, Dur: time.Since(start)})
		}
		if c.observe != nil {
			a := Unavailable
			switch {
			case err == nil:
				a = Found
			case errors.Is(err, ErrNotFound):
				a = NotFound
			}
			c.observe(s.Name(), a, time.Since(start))
		}
		switch {
		case err == nil:
			res.Status, res.Entry, res.Source = Found, e, s.Name()
			return res
		case errors.Is(err, ErrNotFound):
			answered = true
		default:
			res.Err = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	if answered {
		res.Status = NotFound
		res.Err = nil
	} else {
		res.Status = Unavailable
		if res.Err == nil {
			res.Err = errors.New("no lookup source configured")
		}
	}
	return res
}
