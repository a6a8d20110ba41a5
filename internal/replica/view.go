package replica

import (
	"maps"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// A view is what lookups see: a list and the changes pushed since it was
// built. Like the list, a view and its overlay map are never modified
// once published; the stream publishes a new view (a copy of the overlay
// with the new changes) after each burst of pushes, and from time to time
// folds the overlay into a new list in the background (compaction), so
// that the copy stays small. Lookups load one pointer and need no lock,
// and nothing the stream does, a whole re-dump included, can slow them.
type view struct {
	base *list
	over map[string]*change // nil when there are no changes
	n    int                // mailboxes in base and over together
	seq  uint64             // changes applied to base so far
	// from says where base came from: "dump" or "snapshot".
	from string
	// asOf is when base was known to match the master: the end of its
	// dump, or the time recorded in its snapshot.
	asOf time.Time
}

// change is one pushed MAILBOX, RESERVE or DELETE: the state of one
// mailbox after it.
type change struct {
	e       lookup.Entry
	deleted bool
	seq     uint64 // the view.seq it was applied at
}

// compactAt is the overlay size at which it is folded into a new list.
// Copying the overlay on every burst of pushes costs O(its size); a new
// list costs O(the whole list) once, in the background.
const compactAt = 8192

func (v *view) lookup(name string) (lookup.Entry, bool) {
	if v.over != nil {
		if c, ok := v.over[name]; ok {
			if c.deleted {
				return lookup.Entry{}, false
			}
			return c.e, true
		}
	}
	return v.base.lookup(name)
}

// forEach calls fn for every mailbox of the view.
func (v *view) forEach(fn func(e lookup.Entry) error) error {
	err := v.base.forEach(func(e lookup.Entry) error {
		if _, changed := v.over[e.Name]; changed {
			return nil
		}
		return fn(e)
	})
	if err != nil {
		return err
	}
	for _, c := range v.over {
		if !c.deleted {
			if err := fn(c.e); err != nil {
				return err
			}
		}
	}
	return nil
}

// draft collects a burst of pushes into the next view. It belongs to the
// stream goroutine.
type draft struct {
	prev *view
	next *view
}

// apply records one change. The overlay is copied at the first change of
// a burst, never written after it is published.
func (d *draft) apply(c *change) {
	if d.next == nil {
		p := d.prev
		d.next = &view{base: p.base, over: maps.Clone(p.over), n: p.n, seq: p.seq, from: p.from, asOf: p.asOf}
		if d.next.over == nil {
			d.next.over = map[string]*change{}
		}
	}
	v := d.next
	_, had := v.lookup(c.e.Name)
	switch {
	case had && c.deleted:
		v.n--
	case !had && !c.deleted:
		v.n++
	}
	v.seq++
	c.seq = v.seq
	v.over[c.e.Name] = c
}

// compact builds a list holding v's base with its overlay folded in.
func compact(v *view) (*list, error) {
	b := newBuilder(v.n)
	if err := v.forEach(b.putEntry); err != nil {
		return nil, err
	}
	return b.finish(), nil
}

// rebase returns the view to publish after a compaction of done: cur with
// done's changes taken out of the overlay, since the new list has them.
// Changes applied after done (a higher seq) stay.
func rebase(cur, done *view, l *list) *view {
	nv := &view{base: l, n: cur.n, seq: cur.seq, from: cur.from, asOf: cur.asOf}
	for name, c := range cur.over {
		if c.seq > done.seq {
			if nv.over == nil {
				nv.over = map[string]*change{}
			}
			nv.over[name] = c
		}
	}
	return nv
}
