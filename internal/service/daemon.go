// Package service runs lmtpgate as a daemon: it loads the configuration,
// takes its listeners from systemd (socket activation) or binds them,
// builds the routing state, serves LMTP, and handles the lifecycle that
// systemd sees — READY, STATUS, RELOADING and STOPPING notifications, the
// watchdog, SIGHUP reloads that keep the old state when the new
// configuration is broken, and a graceful stop on SIGTERM within
// shutdown_timeout.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/fsnotify/fsnotify"

	"github.com/lmtpgate/lmtpgate/internal/config"
	"github.com/lmtpgate/lmtpgate/internal/control"
	"github.com/lmtpgate/lmtpgate/internal/front"
	"github.com/lmtpgate/lmtpgate/internal/journal"
	"github.com/lmtpgate/lmtpgate/internal/metrics"
	"github.com/lmtpgate/lmtpgate/internal/sdnotify"
)

// Daemon is one running lmtpgate.
type Daemon struct {
	path     string
	version  string
	log      *slog.Logger
	closeLog func()
	level    *slog.LevelVar
	notify   *sdnotify.Notifier
	holder   *front.Holder // the one holder of the live snapshot
	srv      *front.Server
	metrics  *metrics.Metrics // nil without metrics.listen
	cancel   context.CancelFunc
	started  time.Time

	sigs      chan os.Signal
	listeners []net.Listener
	ctl       net.Listener
	lost      chan error
	cfgEvents <-chan struct{}

	mu            sync.Mutex // serialises reloads
	lastReload    time.Time
	lastReloadErr string

	stopping atomic.Bool
	serving  atomic.Int32 // listeners still accepting
}

// Serve runs the daemon with the configuration at path until ctx ends or
// SIGTERM/SIGINT arrives. It returns an error only if it could not start
// (or lost every listener); reload failures are logged and survived.
func Serve(ctx context.Context, path, version string, stderr io.Writer) error {
	d, err := start(ctx, path, version, stderr)
	if err != nil {
		return err
	}
	defer d.closeLog()
	err = d.loop(ctx)
	d.stop()
	return err
}

// current returns the live snapshot, without holding it.
func (d *Daemon) current() *state { return stateOf(d.holder.Current()) }

// start loads the configuration, opens the listeners, builds the routing
// state and begins serving; it returns once READY has been sent.
func start(ctx context.Context, path, version string, stderr io.Writer) (*Daemon, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	level := new(slog.LevelVar)
	level.Set(cfg.Log.Level)
	log, closeLog, err := newLogger(cfg.Log.Format, level, stderr)
	if err != nil {
		return nil, err
	}
	d := &Daemon{path: path, version: version, log: log, closeLog: closeLog, level: level, notify: sdnotify.New(), started: time.Now()}
	fail := func(err error) (*Daemon, error) {
		// At priority err, so that `journalctl -p err` shows why the
		// service does not start.
		log.Error("lmtpgate cannot start", "err", err.Error())
		closeLog()
		return nil, err
	}
	d.logConfigNotes(cfg)

	// Signals first, so a SIGHUP during start-up is not fatal.
	d.sigs = make(chan os.Signal, 4)
	signal.Notify(d.sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)

	ls, err := openListeners(cfg, log)
	if err != nil {
		signal.Stop(d.sigs)
		return fail(err)
	}
	if cfg.Metrics.Listen != "" {
		d.metrics = metrics.New(version, d.metricsState)
	}
	st, err := build(ctx, cfg, nil, log, d.metrics)
	if err != nil {
		closeAll(ls)
		signal.Stop(d.sigs)
		return fail(err)
	}
	activate(st)
	d.holder = front.NewHolder(st.rt)
	d.srv = front.New(front.Options{Hostname: cfg.Hostname, Config: cfg.LMTP, Log: log}, d.holder)
	if err := d.startSideChannels(ctx, cfg); err != nil {
		closeAll(ls)
		signal.Stop(d.sigs)
		retire(st, nil)
		return fail(err)
	}
	names := d.serve(cfg, ls)
	log.Info("lmtpgate started", "version", version, "mode", string(cfg.Mode), "order", fmt.Sprint(cfg.Order()), "listen", fmt.Sprint(names), "socket_activated", ls[0].activated)

	// READY once the routing state is usable: a source that can answer,
	// or, if none can yet, after a bounded wait (the daemon then answers
	// 451 and says so in STATUS rather than keeping systemd waiting).
	d.waitUsable(ctx, 5*time.Second)
	d.notify.Ready(statusLine(d.Status()))
	if cfg.WatchConfig {
		d.cfgEvents = d.watchConfig(ctx, cfg)
	}
	return d, nil
}

// startSideChannels starts what serves operators rather than mail: the
// metrics endpoint (whose failure to listen is fatal, as a listener's
// is) and the control socket (whose failure is not: mail still flows).
func (d *Daemon) startSideChannels(ctx context.Context, cfg *config.Config) error {
	if d.metrics != nil {
		d.srv.SetHooks(front.Hooks{Recipient: d.metrics.Recipient})
		mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		d.cancel = cancel
		addr, err := d.metrics.Serve(mctx, cfg.Metrics.Listen, d.log)
		if err != nil {
			return err
		}
		d.log.Info("metrics endpoint listening", "addr", addr.String())
	}
	if cfg.ControlSocket != "" {
		var err error
		if d.ctl, err = control.Listen(cfg.ControlSocket); err != nil {
			d.log.Warn("control socket unavailable: lmtpgate reload/status/resolve will not reach this daemon", "path", cfg.ControlSocket, "err", err.Error())
		} else {
			go control.Serve(d.ctl, d.log, d.handleControl)
		}
	}
	return nil
}

// serve runs the LMTP server on every listener and returns their names.
// A listener that fails outside a stop is reported on d.lost.
func (d *Daemon) serve(cfg *config.Config, ls []namedListener) []string {
	d.lost = make(chan error, len(ls))
	var names []string
	for _, l := range ls {
		d.listeners = append(d.listeners, l.Listener)
		names = append(names, l.addr)
		d.serving.Add(1)
		go func() {
			err := d.srv.Serve(l.Listener, cfg.LMTP.Trusts(l.name, l.addr))
			d.serving.Add(-1)
			if !d.stopping.Load() {
				d.lost <- fmt.Errorf("listener %s: %v", l.addr, err)
			}
		}()
	}
	return names
}

// logConfigNotes logs what the configuration says is wrong or risky.
func (d *Daemon) logConfigNotes(cfg *config.Config) {
	for _, p := range cfg.Problems {
		d.log.Error("configuration: "+p.String(), "key", p.Key)
	}
	if cfg.ModeProblem != "" {
		d.log.Error("mode file ignored: "+cfg.ModeProblem, "mode", string(cfg.Mode))
	}
	for _, w := range cfg.Warnings {
		d.log.Warn("configuration: " + w)
	}
}

// loop serves until ctx ends, SIGTERM or SIGINT arrives, or every listener
// is lost; it reloads on SIGHUP and feeds the watchdog.
func (d *Daemon) loop(ctx context.Context) error {
	defer signal.Stop(d.sigs)
	var wd <-chan time.Time
	if iv := d.notify.WatchdogInterval(); iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		wd = t.C
	}
	statusTick := time.NewTicker(10 * time.Second)
	defer statusTick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig := <-d.sigs:
			if sig == syscall.SIGHUP {
				d.reload("SIGHUP")
				continue
			}
			d.log.Info("stopping", "signal", sig.String())
			return nil
		case <-d.cfgEvents:
			if d.current().cfg.WatchConfig {
				d.reload("configuration file changed")
			}
		case <-wd:
			// Fed from the main loop, and only while every listener
			// still accepts: a daemon that cannot take mail must be
			// restarted, not kept alive.
			if int(d.serving.Load()) == len(d.listeners) {
				d.notify.Watchdog()
			}
		case <-statusTick.C:
			d.notify.Status(statusLine(d.Status()))
		case err := <-d.lost:
			d.log.Error("lost a listener", "err", err.Error())
			if d.serving.Load() == 0 {
				return errors.New("no listener left")
			}
		}
	}
}

// stop ends the daemon within shutdown_timeout: the front end's graceful
// stop takes the whole budget (its grace period included), then the
// sources and connections are closed with a short bound of their own.
func (d *Daemon) stop() {
	d.stopping.Store(true)
	cur := d.current()
	d.notify.Stopping("stopping: finishing transactions in progress")
	sctx, cancel := context.WithTimeout(context.Background(), cur.cfg.ShutdownTimeout)
	d.srv.Shutdown(sctx)
	cancel()
	if d.ctl != nil {
		d.ctl.Close()
		os.Remove(cur.cfg.ControlSocket)
	}
	done := make(chan struct{})
	go func() {
		retire(cur, nil)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		// A backend that does not answer QUIT is not worth a kill by
		// systemd.
	}
	if d.cancel != nil {
		d.cancel()
	}
	s := d.srv.Stats()
	d.log.Info("lmtpgate stopped", "delivered", s.Delivered, "deferred", s.Deferred, "rejected", s.Rejected)
}

func (d *Daemon) waitUsable(ctx context.Context, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for _, s := range sourceStatuses(d.current()) {
			if s.Healthy {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reload re-reads the configuration and swaps in the new routing state.
// A configuration that does not load, or whose sources cannot be built, is
// rejected whole: the old state keeps serving and the error is reported.
// Transactions in progress finish on the state they began with.
func (d *Daemon) reload(why string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.notify.Reloading("reloading configuration (" + why + ")")
	old := d.current()
	err := d.doReload(old)
	if err != nil {
		d.lastReloadErr = err.Error()
		d.log.Error("reload rejected, still serving the previous configuration", "reason", why, "err", err.Error(), "mode", string(old.cfg.Mode))
	} else {
		d.lastReloadErr = ""
	}
	d.lastReload = time.Now()
	// d.mu is held: Status would lock it again and hang the daemon.
	d.notify.Ready(statusLine(d.status(d.lastReload, d.lastReloadErr)))
	return err
}

func (d *Daemon) doReload(old *state) error {
	cfg, err := config.Load(d.path)
	if err != nil {
		return err
	}
	d.logConfigNotes(cfg)
	for _, f := range restartOnly(old.cfg, cfg) {
		d.log.Warn("setting changed; it takes effect at the next restart", "key", f)
	}
	st, err := build(context.Background(), cfg, old, d.log, d.metrics)
	if err != nil {
		return err
	}
	activate(st)
	d.holder.Swap(st.rt, func() { retire(old, st) })
	d.level.Set(cfg.Log.Level)
	if old.cfg.Mode != cfg.Mode {
		d.log.Warn("mode changed", "from", string(old.cfg.Mode), "mode", string(cfg.Mode), "order", fmt.Sprint(cfg.Order()), "mode_from", cfg.ModeFrom)
	}
	d.log.Info("configuration reloaded", "mode", string(cfg.Mode), "order", fmt.Sprint(cfg.Order()))
	return nil
}

// restartOnly names the settings a reload cannot apply: listeners are
// never closed or re-bound on reload (they may be systemd's), and go-smtp
// reads its limits per connection.
func restartOnly(a, b *config.Config) []string {
	var out []string
	if !reflect.DeepEqual(a.Listen, b.Listen) {
		out = append(out, "listen")
	}
	if a.Hostname != b.Hostname {
		out = append(out, "hostname")
	}
	la, lb := a.LMTP, b.LMTP
	// The spool settings are read per message.
	la.SpoolDir, la.SpoolMemoryLimit, lb.SpoolDir, lb.SpoolMemoryLimit = "", 0, "", 0
	if !reflect.DeepEqual(la, lb) {
		out = append(out, "lmtp")
	}
	if a.ControlSocket != b.ControlSocket {
		out = append(out, "control_socket")
	}
	if a.Log.Format != b.Log.Format {
		out = append(out, "log.format")
	}
	if a.Metrics.Listen != b.Metrics.Listen {
		out = append(out, "metrics.listen")
	}
	if a.WatchConfig != b.WatchConfig && b.WatchConfig {
		out = append(out, "watch_config")
	}
	return out
}

// Status reports the daemon's current state.
func (d *Daemon) Status() control.Status {
	d.mu.Lock()
	lr, lre := d.lastReload, d.lastReloadErr
	d.mu.Unlock()
	return d.status(lr, lre)
}

// status is Status with the reload outcome given, for callers that hold d.mu.
func (d *Daemon) status(lr time.Time, lre string) control.Status {
	st := d.current()
	s := control.Status{
		Version:         d.version,
		Config:          d.path,
		Mode:            string(st.cfg.Mode),
		ModeFrom:        st.cfg.ModeFrom,
		ConfigMode:      string(st.cfg.ConfigMode),
		ModeProblem:     st.cfg.ModeProblem,
		Order:           st.cfg.Order(),
		Started:         d.started,
		LastReload:      lr,
		LastReloadError: lre,
		Sources:         sourceStatuses(st),
		Backends:        st.pool.Health(),
	}
	for _, p := range st.cfg.Problems {
		s.Problems = append(s.Problems, p.String())
	}
	if d.srv != nil {
		s.Stats = d.srv.Stats()
	}
	return s
}

// metricsState is what a scrape reads.
func (d *Daemon) metricsState() metrics.State {
	s := d.Status()
	ms := metrics.State{Mode: s.Mode, Front: s.Stats, Backends: s.Backends, LastReload: s.LastReload, LastReloadFail: s.LastReloadError != ""}
	for _, src := range s.Sources {
		ms.Sources = append(ms.Sources, metrics.Source{Name: src.Name, Health: src.Health})
	}
	return ms
}

func (d *Daemon) handleControl(req control.Request) control.Response {
	switch req.Cmd {
	case "reload":
		if err := d.reload("control socket"); err != nil {
			return control.Response{Error: err.Error()}
		}
		st := d.Status()
		return control.Response{OK: true, Message: "reloaded; mode " + st.Mode, Status: &st}
	case "status":
		st := d.Status()
		return control.Response{OK: true, Status: &st}
	case "resolve":
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rt := d.holder.Acquire()
		defer rt.Release()
		var out []control.ResolveResult
		for _, a := range req.Args {
			out = append(out, Resolve(ctx, rt, a))
		}
		return control.Response{OK: true, Resolved: out}
	}
	return control.UnknownCommand(req.Cmd)
}

// namedListener is a listening socket with what identifies it for
// lmtp.trust_auth: its systemd name, if any, and its address as
// "unix:/path" or "tcp:host:port".
type namedListener struct {
	net.Listener
	name, addr string
	activated  bool
}

// openListeners takes systemd's sockets when socket-activated, else binds
// the configured ones.
func openListeners(cfg *config.Config, log *slog.Logger) ([]namedListener, error) {
	var ls []namedListener
	if os.Getenv("LISTEN_FDS") != "" {
		byName, err := activation.ListenersWithNames()
		if err != nil {
			return nil, fmt.Errorf("socket activation: %w", err)
		}
		for name, list := range byName {
			for _, l := range list {
				if l != nil {
					ls = append(ls, namedListener{Listener: l, name: name, addr: l.Addr().Network() + ":" + l.Addr().String(), activated: true})
				}
			}
		}
		if len(ls) == 0 {
			return nil, errors.New("socket activation: no stream socket among the passed descriptors")
		}
		return ls, nil
	}
	for _, li := range cfg.Listen {
		var l net.Listener
		var err error
		if li.Network == "unix" {
			if fi, err := os.Lstat(li.Address); err == nil && fi.Mode()&os.ModeSocket != 0 {
				os.Remove(li.Address)
			}
			l, err = net.Listen("unix", li.Address)
			if err == nil {
				// Only the MTA's group may connect: LMTP carries no
				// authentication.
				if cerr := os.Chmod(li.Address, 0o660); cerr != nil {
					log.Warn("cannot set the LMTP socket's mode to 0660; the MTA may be refused", "path", li.Address, "err", cerr.Error())
				}
			}
		} else {
			l, err = net.Listen(li.Network, li.Address)
		}
		if err != nil {
			for _, x := range ls {
				x.Close()
			}
			return nil, fmt.Errorf("listen %s: %w", li, err)
		}
		ls = append(ls, namedListener{Listener: l, addr: li.String()})
	}
	if len(ls) == 0 {
		return nil, errors.New("no listener configured (listen is empty and the daemon was not socket-activated)")
	}
	return ls, nil
}

func closeAll(ls []namedListener) {
	for _, l := range ls {
		l.Close()
	}
}

// watchConfig reports changes to the configuration file and imapd.conf.
// Editors replace files by rename, so the directories are watched.
func (d *Daemon) watchConfig(ctx context.Context, cfg *config.Config) <-chan struct{} {
	out := make(chan struct{}, 1)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		d.log.Warn("watch_config: cannot watch files, reload with SIGHUP instead", "err", err.Error())
		return nil
	}
	files := map[string]bool{}
	for _, f := range []string{d.path, cfg.ImapdConf} {
		if f == "" {
			continue
		}
		abs, _ := filepath.Abs(f)
		files[abs] = true
		if err := w.Add(filepath.Dir(abs)); err != nil {
			d.log.Warn("watch_config: cannot watch", "path", filepath.Dir(abs), "err", err.Error())
		}
	}
	go func() {
		defer w.Close()
		var timer *time.Timer
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if !files[ev.Name] || ev.Op == fsnotify.Chmod {
					continue
				}
				// Let an editor finish writing before we read.
				if timer != nil {
					timer.Stop()
				}
				timer = time.AfterFunc(300*time.Millisecond, func() {
					select {
					case out <- struct{}{}:
					default:
					}
				})
			case <-w.Errors:
			}
		}
	}()
	return out
}

func newLogger(format string, level *slog.LevelVar, stderr io.Writer) (*slog.Logger, func(), error) {
	if format == "auto" {
		format = "text"
		if journal.ShouldUse() {
			format = "journal"
		}
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: journal.ReplaceLevel}
	switch format {
	case "journal":
		sock := os.Getenv("LMTPGATE_JOURNAL_SOCKET")
		h, err := journal.NewHandler(journal.Options{Socket: sock, Level: level, Fallback: stderr})
		if err != nil {
			return nil, nil, err
		}
		return slog.New(h), func() { h.Close() }, nil
	case "json":
		return slog.New(slog.NewJSONHandler(stderr, opts)), func() {}, nil
	}
	return slog.New(slog.NewTextHandler(stderr, opts)), func() {}, nil
}
