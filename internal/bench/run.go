package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes one load-generator run.
type Config struct {
	// Label names the run in reports ("a", "cyrus-proxy", ...).
	Label string
	// Target is the LMTP address every message goes to: "host:port",
	// "tcp:host:port" or "unix:/path".
	Target string
	// Direct, if not empty, replaces Target: Direct[i] is the LMTP
	// address of Backends[i], and each message is split into one
	// transaction per backend holding its recipients, sent one after
	// another as Cyrus's frontend does. This measures the backends
	// without any proxy.
	Direct []string
	// Backends lists the mailbox addresses per backend; recipients are
	// drawn from it according to RcptMix.
	Backends []Backend
	// Conns is the number of parallel persistent connections (per
	// target). Each runs one transaction after another.
	Conns int
	// Messages is the total number of messages; if 0, Duration bounds
	// the run instead.
	Messages int
	Duration time.Duration
	// Rate, if above 0, paces the run to this many messages per second
	// in total: message i is not started before i/Rate seconds into the
	// run. Latency is measured from the moment a message is sent, so a
	// server that cannot keep up shows as lower throughput, not as queue
	// time. 0 sends as fast as the connections allow.
	Rate    float64
	RcptMix RcptMix
	SizeMix SizeMix
	// From is the envelope sender (default "lmtpbench@example.invalid").
	From string
	// LHLOName is the LHLO argument (default "lmtpbench.invalid").
	LHLOName string
	// AuthUser and AuthPass, if AuthUser is set, authenticate every
	// connection with AUTH PLAIN, as a Cyrus backend requires of its
	// frontend.
	AuthUser, AuthPass string
	// NoPipelining sends each command and waits for its reply even if
	// the server offers PIPELINING.
	NoPipelining bool
	// Seed fixes the choice of recipients and sizes per message: the
	// same seed gives the same message sequence.
	Seed uint64
	// Timeout bounds each protocol phase (default 2 minutes).
	Timeout time.Duration
	// PID, if not 0, is sampled for CPU and RSS during the run; with
	// PIDTree its descendants are included.
	PID            int
	PIDTree        bool
	SampleInterval time.Duration
}

// Result is what a run measured. It is written as JSON by lmtpbench run and
// read back by lmtpbench report.
type Result struct {
	Label    string    `json:"label"`
	Target   string    `json:"target"`
	Started  time.Time `json:"started"`
	Conns    int       `json:"conns"`
	RcptMix  string    `json:"rcpt_mix"`
	SizeMix  string    `json:"size_mix"`
	Seed     uint64    `json:"seed"`
	Pipeline bool      `json:"pipelining"`

	// Messages is the number of messages attempted; Completed those for
	// which every recipient got a reply.
	Messages  int `json:"messages"`
	Completed int `json:"completed"`
	// Recipients attempted, and their outcomes. NoReply counts
	// recipients left without a reply by a broken connection.
	Recipients int `json:"recipients"`
	Replies2xx int `json:"replies_2xx"`
	Replies4xx int `json:"replies_4xx"`
	Replies5xx int `json:"replies_5xx"`
	NoReply    int `json:"no_reply"`
	// ConnErrors counts connections that failed (dial, greeting, LHLO,
	// AUTH or I/O); FirstError is the first of them.
	ConnErrors int    `json:"conn_errors"`
	FirstError string `json:"first_error,omitempty"`
	// BytesSent is message bytes written in DATA.
	BytesSent int64 `json:"bytes_sent"`

	// SetupSeconds is the time to open all connections before the
	// clock started; WallSeconds runs from then to the last reply.
	SetupSeconds     float64 `json:"setup_seconds"`
	WallSeconds      float64 `json:"wall_seconds"`
	MsgsPerSec       float64 `json:"msgs_per_sec"`       // Completed / wall
	DeliveriesPerSec float64 `json:"deliveries_per_sec"` // Replies2xx / wall

	Latency LatencyStats `json:"latency"`
	// ClassCounts and SizeCounts count messages per recipient class
	// ("2x") and size ("64KiB"), to check the mix was honoured.
	ClassCounts map[string]int `json:"class_counts"`
	SizeCounts  map[string]int `json:"size_counts"`

	Proc    *ProcStats `json:"proc,omitempty"`
	Machine *Machine   `json:"machine,omitempty"`
}

// CPUPer1000 is the CPU seconds the sampled process used per 1000
// completed messages, or -1 if unknown.
func (r *Result) CPUPer1000() float64 {
	if r.Proc == nil || r.Completed == 0 {
		return -1
	}
	return r.Proc.CPUSeconds * 1000 / float64(r.Completed)
}

func (c *Config) validate() error {
	if c.Conns < 1 {
		return errors.New("conns must be at least 1")
	}
	if c.Messages < 0 || (c.Messages == 0 && c.Duration <= 0) {
		return errors.New("give a message count or a duration")
	}
	if len(c.Backends) == 0 {
		return errors.New("no backends")
	}
	if len(c.Direct) > 0 && len(c.Direct) != len(c.Backends) {
		return fmt.Errorf("direct mode needs one address per backend: %d addresses, %d backends", len(c.Direct), len(c.Backends))
	}
	if len(c.Direct) == 0 && c.Target == "" {
		return errors.New("no target")
	}
	if len(c.RcptMix) == 0 || len(c.SizeMix) == 0 {
		return errors.New("empty mix")
	}
	if c.Rate < 0 {
		return fmt.Errorf("bad rate %g", c.Rate)
	}
	if c.PID < 0 {
		return fmt.Errorf("bad pid %d", c.PID)
	}
	if c.PID > 0 {
		// Fail before opening any connection, not after.
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/stat", c.PID)); err != nil {
			return fmt.Errorf("pid %d: %w", c.PID, err)
		}
	}
	return checkMix(c.RcptMix, c.Backends)
}

// Run generates the configured load and returns what it measured. It ends
// early, with what was measured so far, when ctx is cancelled. An error is
// returned only for a bad configuration or an unusable PID to sample;
// delivery failures are counted in the Result.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.From == "" {
		cfg.From = "lmtpbench@example.invalid"
	}
	if cfg.LHLOName == "" {
		cfg.LHLOName = "lmtpbench.invalid"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Minute
	}
	bodies := make([]Body, len(cfg.SizeMix))
	for i, sc := range cfg.SizeMix {
		bodies[i] = NewBody(sc.Bytes, cfg.Seed)
	}
	res := &Result{
		Label: cfg.Label, Target: cfg.Target, Conns: cfg.Conns,
		RcptMix: cfg.RcptMix.String(), SizeMix: cfg.SizeMix.String(),
		Seed: cfg.Seed, Pipeline: !cfg.NoPipelining,
		ClassCounts: map[string]int{}, SizeCounts: map[string]int{},
	}
	if len(cfg.Direct) > 0 {
		res.Target = "direct:" + strings.Join(cfg.Direct, ",")
	}
	// Connections are opened (LHLO, AUTH) before the clock starts: the
	// measurement is of steady-state delivery over persistent
	// connections, as an MTA keeps them, not of connection set-up, which
	// is reported separately.
	setup := time.Now()
	g := &gen{cfg: &cfg, bodies: bodies, runID: strconv.FormatInt(setup.UnixNano(), 36), start: make(chan struct{})}
	workers := make([]*worker, cfg.Conns)
	var wg, ready sync.WaitGroup
	for i := range workers {
		w := &worker{g: g, id: i, conns: make([]*Client, max(len(cfg.Direct), 1)),
			classCounts: map[string]int{}, sizeCounts: map[string]int{}}
		workers[i] = w
		ready.Add(1)
		wg.Go(func() { w.run(ctx, ready.Done) })
	}
	ready.Wait()
	var sampler *Sampler
	if cfg.PID != 0 {
		var err error
		if sampler, err = StartSampler(cfg.PID, cfg.PIDTree, cfg.SampleInterval); err != nil {
			g.abort.Store(true) // workers stop at once
			close(g.start)
			wg.Wait()
			return nil, fmt.Errorf("sample pid %d: %w", cfg.PID, err)
		}
	}
	start := time.Now()
	res.SetupSeconds = start.Sub(setup).Seconds()
	res.Started = start.UTC()
	if cfg.Messages == 0 {
		g.deadline = start.Add(cfg.Duration)
	}
	g.t0 = start
	close(g.start)
	wg.Wait()
	end := start
	for _, w := range workers {
		if w.finished.After(end) {
			end = w.finished
		}
	}
	wall := end.Sub(start)
	if sampler != nil {
		ps := sampler.Stop()
		res.Proc = &ps
	}
	var lat []time.Duration
	for _, w := range workers {
		res.Messages += w.messages
		res.Completed += w.completed
		res.Recipients += w.rcpts
		res.Replies2xx += w.r2
		res.Replies4xx += w.r4
		res.Replies5xx += w.r5
		res.NoReply += w.noReply
		res.ConnErrors += w.connErrors
		res.BytesSent += w.bytes
		if res.FirstError == "" && w.firstErr != nil {
			res.FirstError = w.firstErr.Error()
		}
		for k, v := range w.classCounts {
			res.ClassCounts[k] += v
		}
		for k, v := range w.sizeCounts {
			res.SizeCounts[k] += v
		}
		lat = append(lat, w.lat...)
	}
	res.Latency = Summarize(lat)
	res.WallSeconds = wall.Seconds()
	if wall > 0 {
		res.MsgsPerSec = float64(res.Completed) / wall.Seconds()
		res.DeliveriesPerSec = float64(res.Replies2xx) / wall.Seconds()
	}
	return res, nil
}

// gen is the state shared by the workers of one run.
type gen struct {
	cfg      *Config
	bodies   []Body
	runID    string
	deadline time.Time // set before start is closed
	t0       time.Time // set before start is closed
	start    chan struct{}
	next     atomic.Int64
	abort    atomic.Bool
}

// worker drives one connection (or, in direct mode, one per backend).
type worker struct {
	g     *gen
	id    int
	conns []*Client

	messages, completed, rcpts int
	r2, r4, r5, noReply        int
	connErrors                 int
	bytes                      int64
	firstErr                   error
	lat                        []time.Duration
	finished                   time.Time
	classCounts, sizeCounts    map[string]int
}

func (w *worker) run(ctx context.Context, ready func()) {
	cfg := w.g.cfg
	// Warm up: open every connection this worker will use. A failure is
	// counted and the connection is tried again with the first message.
	for i := range w.conns {
		target := cfg.Target
		if len(cfg.Direct) > 0 {
			target = cfg.Direct[i]
		}
		c, err := w.dial(ctx, target)
		if err != nil {
			w.fail(err)
			continue
		}
		w.conns[i] = c
	}
	ready()
	<-w.g.start
	defer func() {
		w.finished = time.Now() // QUIT is not part of the measurement
		for _, c := range w.conns {
			if c != nil {
				c.Quit()
			}
		}
	}()
	// The random choices of message i depend only on (Seed, i), so a
	// seeded run sends the same messages however they are scheduled.
	pcg := rand.NewPCG(0, 0)
	r := rand.New(pcg)
	var (
		rcpts  []Rcpt
		addrs  []string
		codes  []int
		header []byte
		sub    []int
	)
	for ctx.Err() == nil && !w.g.abort.Load() {
		idx := w.g.next.Add(1) - 1
		if cfg.Messages > 0 && idx >= int64(cfg.Messages) {
			return
		}
		if !w.g.deadline.IsZero() && time.Now().After(w.g.deadline) {
			return
		}
		if cfg.Rate > 0 {
			due := w.g.t0.Add(time.Duration(float64(idx) / cfg.Rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
			// A message due after the end of a timed run is not sent.
			if !w.g.deadline.IsZero() && time.Now().After(w.g.deadline) {
				return
			}
		}
		pcg.Seed(cfg.Seed, uint64(idx))
		class := cfg.RcptMix.pick(r)
		si := pickWeighted(r, len(cfg.SizeMix), func(i int) int { return cfg.SizeMix[i].Weight })
		body := &w.g.bodies[si]
		rcpts = drawRcpts(r, class, cfg.Backends, rcpts)
		w.messages++
		w.classCounts[class.Key()]++
		w.sizeCounts[FormatSize(body.Size)]++
		w.rcpts += len(rcpts)

		msgID := w.g.runID + "." + strconv.FormatInt(idx, 10)
		header = Header(header[:0], cfg.From, msgID, time.Now(), body)
		codes = growInts(codes, len(rcpts))
		t0 := time.Now()
		ok := true
		if len(cfg.Direct) == 0 {
			addrs = addrs[:0]
			for _, rc := range rcpts {
				addrs = append(addrs, rc.Addr)
			}
			ok = w.send(ctx, 0, cfg.Target, addrs, header, body, codes)
		} else {
			// One transaction per backend, in order of first
			// appearance, each with that backend's recipients.
			done := make([]bool, len(cfg.Direct))
			for _, rc := range rcpts {
				bi := rc.Backend
				if done[bi] {
					continue
				}
				done[bi] = true
				addrs, sub = addrs[:0], sub[:0]
				for j, x := range rcpts {
					if x.Backend == bi {
						addrs = append(addrs, x.Addr)
						sub = append(sub, j)
					}
				}
				sc := make([]int, len(addrs))
				if !w.send(ctx, bi, cfg.Direct[bi], addrs, header, body, sc) {
					ok = false
				}
				for k, j := range sub {
					codes[j] = sc[k]
				}
			}
		}
		elapsed := time.Since(t0)
		for _, c := range codes {
			switch c / 100 {
			case 2:
				w.r2++
			case 4:
				w.r4++
			case 5:
				w.r5++
			default:
				w.noReply++
				ok = false
			}
		}
		if ok {
			w.completed++
			w.lat = append(w.lat, elapsed)
		}
	}
}

// send runs one transaction on connection slot i, dialling it if needed.
// It reports false if the connection failed; codes then holds 0 for the
// recipients left without a reply.
func (w *worker) send(ctx context.Context, i int, target string, addrs []string, header []byte, body *Body, codes []int) bool {
	cfg := w.g.cfg
	if w.conns[i] == nil {
		c, err := w.dial(ctx, target)
		if err != nil {
			w.fail(err)
			for j := range codes {
				codes[j] = 0
			}
			// Do not spin against a target that refuses connections.
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
			return false
		}
		w.conns[i] = c
	}
	err := w.conns[i].Send(cfg.From, addrs, header, body.Wire, codes)
	w.bytes += int64(len(header) + len(body.Wire))
	if err != nil {
		w.fail(err)
		w.conns[i].Close()
		w.conns[i] = nil
		return false
	}
	return true
}

func (w *worker) dial(ctx context.Context, target string) (*Client, error) {
	cfg := w.g.cfg
	c, err := Dial(ctx, target, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	if err := c.Hello(cfg.LHLOName, !cfg.NoPipelining); err != nil {
		c.Close()
		return nil, err
	}
	if cfg.AuthUser != "" {
		if err := c.AuthPlain(cfg.AuthUser, cfg.AuthPass); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (w *worker) fail(err error) {
	w.connErrors++
	if w.firstErr == nil {
		w.firstErr = err
	}
}

func growInts(s []int, n int) []int {
	if cap(s) < n {
		return make([]int, n)
	}
	return s[:n]
}
