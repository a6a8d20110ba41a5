// Package metrics exposes lmtpgate's state to Prometheus: a /metrics
// endpoint in the text exposition format, with the Go and process
// collectors, the per-recipient, per-backend and per-source counters, and
// the daemon's mode and reloads.
//
// The hot path pays little: what the daemon already counts (sessions,
// recipients, backend health, source health, cache hits) is read at scrape
// time by a collector, and only the latency histograms and the recipient
// outcomes are observed as they happen. Every label is bounded: a reply
// class, a backend server string, a source name, a cause; never a
// recipient or a mailbox.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/front"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/replica"
)

// State is what the collector reads at scrape time.
type State struct {
	Mode           string // "master" or "no-master"
	Front          front.Stats
	Backends       []backend.Health
	Sources        []Source
	LastReload     time.Time
	LastReloadFail bool
}

// Source is one lookup source's health by name.
type Source struct {
	Name string
	lookup.Health
}

// Metrics is the registry and the instruments the daemon feeds.
type Metrics struct {
	reg        *prometheus.Registry
	recipients *prometheus.CounterVec
	rcptDur    prometheus.Histogram
	lookups    *prometheus.CounterVec
	lookupDur  *prometheus.HistogramVec
	backendDur *prometheus.HistogramVec

	// Children looked up once per label set, so that the hot path does
	// not hash label values for every recipient.
	mu       sync.Mutex
	rcptKids map[rcptKey]prometheus.Counter
}

type rcptKey struct {
	outcome string
	class   smtp.EnhancedCode
}

// New makes the registry. state is called at every scrape.
func New(version string, state func() State) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), rcptKids: map[rcptKey]prometheus.Counter{}}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.recipients = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lmtpgate_recipients_total",
		Help: "Recipients answered, by outcome (delivered, deferred, rejected) and the class of the enhanced status code (2.1, 4.4, 5.1, ...).",
	}, []string{"outcome", "class"})
	m.rcptDur = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "lmtpgate_recipient_duration_seconds",
		Help:    "Time from a recipient's RCPT to its final answer.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})
	m.lookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lmtpgate_lookups_total",
		Help: "Lookups by source and answer (found, not_found, failed).",
	}, []string{"source", "answer"})
	m.lookupDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lmtpgate_lookup_duration_seconds",
		Help:    "Time one source took to answer one lookup.",
		Buckets: prometheus.ExponentialBuckets(0.00001, 4, 12),
	}, []string{"source"})
	m.backendDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lmtpgate_backend_delivery_duration_seconds",
		Help:    "Time from a backend's go-ahead for DATA to its last final reply.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"backend"})
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "lmtpgate_build_info",
		Help:        "Always 1; the labels say which lmtpgate runs.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	info.Set(1)
	m.reg.MustRegister(m.recipients, m.rcptDur, m.lookups, m.lookupDur, m.backendDur, info, &collector{state: state})
	// Every outcome exists from the start, so rate() and alerts see a
	// zero rather than no series.
	for _, o := range []string{"delivered", "deferred", "rejected"} {
		m.recipients.WithLabelValues(o, map[string]string{"delivered": "2.1", "deferred": "4.0", "rejected": "5.0"}[o])
	}
	return m
}

// Recipient records one recipient's outcome (front.Hooks).
func (m *Metrics) Recipient(code int, ec smtp.EnhancedCode, _ string, d time.Duration) {
	outcome := "delivered"
	switch {
	case code >= 500:
		outcome = "rejected"
	case code >= 400:
		outcome = "deferred"
	}
	k := rcptKey{outcome, smtp.EnhancedCode{ec[0], ec[1], 0}}
	m.mu.Lock()
	c := m.rcptKids[k]
	if c == nil {
		class := strconv.Itoa(code/100) + ".0"
		if ec[0] > 0 && ec[1] >= 0 && ec[1] < 10 {
			class = strconv.Itoa(ec[0]) + "." + strconv.Itoa(ec[1])
		}
		c = m.recipients.WithLabelValues(outcome, class)
		m.rcptKids[k] = c
	}
	m.mu.Unlock()
	c.Inc()
	m.rcptDur.Observe(d.Seconds())
}

// Lookup records one source's answer (lookup.Chain's observer).
func (m *Metrics) Lookup(source string, answer lookup.Status, d time.Duration) {
	a := "failed"
	switch answer {
	case lookup.Found:
		a = "found"
	case lookup.NotFound:
		a = "not_found"
	}
	m.lookups.WithLabelValues(source, a).Inc()
	m.lookupDur.WithLabelValues(source).Observe(d.Seconds())
}

// BackendDelivery records a backend transaction's DATA time (the pool's
// observer).
func (m *Metrics) BackendDelivery(server string, d time.Duration) {
	m.backendDur.WithLabelValues(server).Observe(d.Seconds())
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Serve listens on addr ("host:port") and serves /metrics until ctx ends.
// It returns once listening, or the listen error.
func (m *Metrics) Serve(ctx context.Context, addr string, log *slog.Logger) (net.Addr, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "err", err.Error())
		}
	}()
	context.AfterFunc(ctx, func() { srv.Close() })
	return l.Addr(), nil
}

// collector turns the daemon's state into metrics at scrape time.
type collector struct {
	state func() State
}

var (
	descSessionsOpen   = prometheus.NewDesc("lmtpgate_sessions_open", "MTA sessions open now.", nil, nil)
	descSessions       = prometheus.NewDesc("lmtpgate_sessions_total", "MTA sessions accepted.", nil, nil)
	descRefused        = prometheus.NewDesc("lmtpgate_connections_refused_total", "MTA connections refused over lmtp.max_connections.", nil, nil)
	descMessages       = prometheus.NewDesc("lmtpgate_messages_received_total", "Messages received (DATA or BDAT to its end).", nil, nil)
	descBytes          = prometheus.NewDesc("lmtpgate_received_bytes_total", "Message bytes received from MTAs.", nil, nil)
	descMode           = prometheus.NewDesc("lmtpgate_mode", "1 for the mode in force (master or no-master).", []string{"mode"}, nil)
	descReloadTime     = prometheus.NewDesc("lmtpgate_last_reload_timestamp_seconds", "When the last reload ran (0: none since start).", nil, nil)
	descReloadOK       = prometheus.NewDesc("lmtpgate_last_reload_success", "1 if the last reload was applied, 0 if it was rejected.", nil, nil)
	descBackendUp      = prometheus.NewDesc("lmtpgate_backend_up", "1 while a backend is in service, 0 while its breaker keeps it out.", []string{"backend"}, nil)
	descBackendFlight  = prometheus.NewDesc("lmtpgate_backend_transactions_in_flight", "Transactions running on a backend.", []string{"backend"}, nil)
	descBackendIdle    = prometheus.NewDesc("lmtpgate_backend_connections_idle", "Pooled connections to a backend.", []string{"backend"}, nil)
	descBackendDeliv   = prometheus.NewDesc("lmtpgate_backend_deliveries_total", "Recipients a backend accepted after DATA.", []string{"backend"}, nil)
	descBackendRefused = prometheus.NewDesc("lmtpgate_backend_refusals_total", "Recipients a backend refused, at RCPT or after DATA.", []string{"backend"}, nil)
	descBackendFail    = prometheus.NewDesc("lmtpgate_backend_failures_total", "Transactions that failed, by cause.", []string{"backend", "cause"}, nil)
	descSourceUp       = prometheus.NewDesc("lmtpgate_source_up", "1 while a lookup source can answer.", []string{"source"}, nil)
	descSourceStale    = prometheus.NewDesc("lmtpgate_source_stale", "1 while a source answers from a list it cannot bring up to date (mailboxes.db unreadable since its last good load, the master replica's stream down).", []string{"source"}, nil)
	descCacheHits      = prometheus.NewDesc("lmtpgate_lookup_cache_hits_total", "Lookups a MUPDATE source's cache answered.", []string{"source"}, nil)
	descCacheMisses    = prometheus.NewDesc("lmtpgate_lookup_cache_misses_total", "Lookups a MUPDATE source's cache passed on.", []string{"source"}, nil)
	descEntries        = prometheus.NewDesc("lmtpgate_source_mailboxes", "Mailboxes a source holds in memory (mailboxes.db, the master replica).", []string{"source"}, nil)
	descReplicaStream  = prometheus.NewDesc("lmtpgate_replica_stream", "1 for the master replica's stream state (stopped in no-master mode, connecting, dumping, streaming, backoff after a failure), 0 for the others.", []string{"state"}, nil)
	descLoaded         = prometheus.NewDesc("lmtpgate_source_loaded_timestamp_seconds", "When a source's list was last brought up to date.", []string{"source"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessionsOpen, descSessions, descRefused, descMessages, descBytes, descMode,
		descReloadTime, descReloadOK, descBackendUp, descBackendFlight, descBackendIdle, descBackendDeliv, descBackendRefused,
		descBackendFail, descSourceUp, descSourceStale, descCacheHits, descCacheMisses, descEntries, descLoaded, descReplicaStream} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.state()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descSessionsOpen, float64(st.Front.Active))
	counter(descSessions, st.Front.Sessions)
	counter(descRefused, st.Front.Refused)
	counter(descMessages, st.Front.Transactions)
	counter(descBytes, st.Front.Bytes)
	for _, m := range []string{"master", "no-master"} {
		gauge(descMode, b2f(st.Mode == m), m)
	}
	if !st.LastReload.IsZero() {
		gauge(descReloadTime, float64(st.LastReload.UnixNano())/1e9)
		gauge(descReloadOK, b2f(!st.LastReloadFail))
	} else {
		gauge(descReloadTime, 0)
		gauge(descReloadOK, 1)
	}
	for _, b := range st.Backends {
		gauge(descBackendUp, b2f(b.Up), b.Server)
		gauge(descBackendFlight, float64(b.InFlight), b.Server)
		gauge(descBackendIdle, float64(b.Idle), b.Server)
		counter(descBackendDeliv, b.Delivered, b.Server)
		counter(descBackendRefused, b.Refused, b.Server)
		for _, cause := range backend.Causes {
			counter(descBackendFail, b.Failures[cause], b.Server, cause)
		}
	}
	for _, s := range st.Sources {
		gauge(descSourceUp, b2f(s.Healthy), s.Name)
		gauge(descSourceStale, b2f(s.Stale), s.Name)
		if s.CacheHits+s.CacheMisses > 0 || s.Name == "local-mupdate" || s.Name == "master-mupdate" {
			counter(descCacheHits, s.CacheHits, s.Name)
			counter(descCacheMisses, s.CacheMisses, s.Name)
		}
		if !s.LoadedAt.IsZero() {
			gauge(descEntries, float64(s.Entries), s.Name)
			gauge(descLoaded, float64(s.LoadedAt.UnixNano())/1e9, s.Name)
		}
		if s.Name == replica.Name {
			for _, state := range replica.StreamStates {
				gauge(descReplicaStream, b2f(s.State == state), state)
			}
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
