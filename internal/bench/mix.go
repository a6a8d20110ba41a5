// Package bench measures LMTP delivery: a load generator that speaks LMTP
// (RFC 2033) over persistent connections, a null LMTP backend that accepts
// and discards everything, a CPU/RSS sampler for the process under test and
// a Markdown report that compares runs. Every performance figure published
// for lmtpgate comes from this package, run against lmtpgate and Cyrus's own
// frontend LMTP proxy side by side; none of it is used by the daemon itself.
package bench

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
)

// Spread says how the recipients of one message are placed on backends.
type Spread uint8

const (
	// SpreadAll deals the recipients round-robin over all backends,
	// starting at a random one: "10" with two backends gives five each.
	SpreadAll Spread = iota
	// SpreadDistinct puts each recipient on a different backend: "2x"
	// means two recipients on two different backends. It is an error to
	// ask for more recipients than there are backends.
	SpreadDistinct
	// SpreadSame puts all recipients on one randomly chosen backend:
	// "3s" means three mailboxes on the same backend.
	SpreadSame
)

// RcptClass is one entry of a recipient mix.
type RcptClass struct {
	N      int    // recipients per message
	Spread Spread // placement over backends
	Weight int    // relative frequency
}

// Key is the class without its weight: "1", "2x", "3s".
func (c RcptClass) Key() string {
	s := strconv.Itoa(c.N)
	switch c.Spread {
	case SpreadDistinct:
		s += "x"
	case SpreadSame:
		s += "s"
	}
	return s
}

func (c RcptClass) String() string { return c.Key() + ":" + strconv.Itoa(c.Weight) }

// RcptMix is a weighted choice of recipient classes.
type RcptMix []RcptClass

// DefaultRcptMix is one recipient per message.
const DefaultRcptMix = "1:100"

// ParseRcptMix parses "N[x|s]:WEIGHT,..." such as "1:50,2x:30,10:20":
// 50% of messages have one recipient, 30% two recipients on two different
// backends, 20% ten recipients dealt over all backends. A bare N deals the
// recipients round-robin over all backends, "Nx" requires N distinct
// backends and "Ns" keeps all N on one backend. Weights are relative; they
// need not add up to 100.
func ParseRcptMix(s string) (RcptMix, error) {
	var mix RcptMix
	err := parseWeighted(s, "rcpt mix", "N[x|s]:WEIGHT", func(cls string, weight int) error {
		c := RcptClass{Weight: weight}
		switch {
		case strings.HasSuffix(cls, "x"):
			c.Spread, cls = SpreadDistinct, strings.TrimSuffix(cls, "x")
		case strings.HasSuffix(cls, "s"):
			c.Spread, cls = SpreadSame, strings.TrimSuffix(cls, "s")
		}
		n, err := strconv.Atoi(cls)
		if err != nil || n < 1 || n > 1000 {
			return errors.New("recipient count must be 1..1000")
		}
		c.N = n
		mix = append(mix, c)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return mix, nil
}

// parseWeighted splits "KEY:WEIGHT,..." and hands each entry to add;
// what and form name the list and its syntax in errors.
func parseWeighted(s, what, form string, add func(key string, weight int) error) error {
	total := 0
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		key, w, ok := strings.Cut(part, ":")
		if !ok {
			return fmt.Errorf("%s %q: want %s", what, part, form)
		}
		weight, err := strconv.Atoi(w)
		if err != nil || weight < 0 {
			return fmt.Errorf("%s %q: weight must be a non-negative integer", what, part)
		}
		if err := add(key, weight); err != nil {
			return fmt.Errorf("%s %q: %w", what, part, err)
		}
		total += weight
	}
	if total == 0 {
		return fmt.Errorf("%s: empty or all weights zero", what)
	}
	return nil
}

func (m RcptMix) String() string {
	parts := make([]string, len(m))
	for i, c := range m {
		parts[i] = c.String()
	}
	return strings.Join(parts, ",")
}

// pick draws a class with probability proportional to its weight.
func (m RcptMix) pick(r *rand.Rand) RcptClass {
	return m[pickWeighted(r, len(m), func(i int) int { return m[i].Weight })]
}

// SizeClass is one entry of a message-size mix.
type SizeClass struct {
	Bytes  int // approximate message size including headers
	Weight int
}

// SizeMix is a weighted choice of message sizes.
type SizeMix []SizeClass

// DefaultSizeMix is a typical mail-store distribution: mostly small text
// mail, some with attachments, a few large ones.
const DefaultSizeMix = "1KiB:80,64KiB:18,5MiB:2"

// ParseSizeMix parses "SIZE:WEIGHT,..." where SIZE is a byte count with an
// optional unit B, KiB (or K, k) or MiB (or M), e.g. "1KiB:80,5MiB:2".
func ParseSizeMix(s string) (SizeMix, error) {
	var mix SizeMix
	err := parseWeighted(s, "size mix", "SIZE:WEIGHT", func(size string, weight int) error {
		n, err := ParseSize(size)
		if err != nil {
			return err
		}
		mix = append(mix, SizeClass{Bytes: n, Weight: weight})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return mix, nil
}

// MaxSize bounds a generated message; larger messages measure disk
// bandwidth, not the proxy.
const MaxSize = 256 << 20

// ParseSize parses "512", "512B", "1KiB", "1K", "64k", "5MiB", "5M".
func ParseSize(s string) (int, error) {
	s = strings.TrimSpace(s)
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"K", 1 << 10}, {"k", 1 << 10}, {"M", 1 << 20}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxSize/mult {
		return 0, fmt.Errorf("size %q: want 1 byte .. %d MiB", s, MaxSize>>20)
	}
	return n * mult, nil
}

func (m SizeMix) String() string {
	parts := make([]string, len(m))
	for i, c := range m {
		parts[i] = FormatSize(c.Bytes) + ":" + strconv.Itoa(c.Weight)
	}
	return strings.Join(parts, ",")
}

// FormatSize writes n in the largest binary unit that divides it.
func FormatSize(n int) string {
	switch {
	case n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "MiB"
	case n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}

func pickWeighted(r *rand.Rand, n int, w func(int) int) int {
	total := 0
	for i := range n {
		total += w(i)
	}
	x := r.IntN(total)
	for i := range n {
		x -= w(i)
		if x < 0 {
			return i
		}
	}
	return n - 1
}

// Backend is one backend's name and the addresses of mailboxes on it.
type Backend struct {
	Name  string
	Addrs []string
}

// ParseBackends parses "be1=alice1@x,alice2@x;be2=carol1@x,...". The order
// is kept: it fixes which backend a seeded run picks.
func ParseBackends(s string) ([]Backend, error) {
	var out []Backend
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, list, ok := strings.Cut(part, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("backend %q: want NAME=addr,addr,...", part)
		}
		if seen[name] {
			return nil, fmt.Errorf("backend %q given twice", name)
		}
		seen[name] = true
		b := Backend{Name: name}
		for _, a := range strings.Split(list, ",") {
			a = strings.TrimSpace(a)
			if a == "" {
				continue
			}
			if strings.ContainsAny(a, "<> \r\n") || !strings.Contains(a, "@") {
				return nil, fmt.Errorf("backend %q: bad address %q", name, a)
			}
			b.Addrs = append(b.Addrs, a)
		}
		if len(b.Addrs) == 0 {
			return nil, fmt.Errorf("backend %q has no addresses", name)
		}
		out = append(out, b)
	}
	if len(out) == 0 {
		return nil, errors.New("no backends given")
	}
	return out, nil
}

// Rcpt is one recipient of a generated message.
type Rcpt struct {
	Addr    string
	Backend int // index into the backend list
}

// checkMix reports a class that the backends cannot satisfy with distinct
// addresses, so a run never silently sends duplicate RCPTs (which Cyrus
// would collapse into one delivery).
func checkMix(mix RcptMix, bes []Backend) error {
	for _, c := range mix {
		if c.Weight == 0 {
			continue
		}
		for _, b := range bes {
			need := 0
			switch c.Spread {
			case SpreadDistinct:
				if c.N > len(bes) {
					return fmt.Errorf("rcpt class %s needs %d backends, have %d", c, c.N, len(bes))
				}
				need = 1
			case SpreadSame:
				need = c.N
			case SpreadAll:
				// Round-robin from a random start: at most ceil(N/nb) each.
				need = (c.N + len(bes) - 1) / len(bes)
			}
			if need > len(b.Addrs) {
				return fmt.Errorf("rcpt class %s needs %d addresses on backend %s, have %d", c, need, b.Name, len(b.Addrs))
			}
		}
	}
	return nil
}

// drawRcpts picks the recipients of one message for class c. Addresses
// within a message are distinct (checkMix guarantees enough of them).
func drawRcpts(r *rand.Rand, c RcptClass, bes []Backend, dst []Rcpt) []Rcpt {
	dst = dst[:0]
	nb := len(bes)
	perBE := make([]int, nb) // how many drawn so far from each backend
	start := r.IntN(nb)
	var order []int
	switch c.Spread {
	case SpreadSame:
		for range c.N {
			order = append(order, start)
		}
	case SpreadDistinct:
		for _, i := range r.Perm(nb)[:c.N] {
			order = append(order, i)
		}
	default:
		for i := range c.N {
			order = append(order, (start+i)%nb)
		}
	}
	offsets := make([]int, nb)
	for i := range offsets {
		offsets[i] = r.IntN(len(bes[i].Addrs))
	}
	for _, bi := range order {
		addrs := bes[bi].Addrs
		a := addrs[(offsets[bi]+perBE[bi])%len(addrs)]
		perBE[bi]++
		dst = append(dst, Rcpt{Addr: a, Backend: bi})
	}
	return dst
}
