// Package service runs lmtpgate as a daemon: it loads the configuration,
// takes its listeners from systemd (socket activation) or binds them,
// builds the routing state, serves LMTP, and handles the lifecycle that
// systemd sees — READY, STATUS, RELOADING and STOPPING notifications, the
// watchdog, SIGHUP reloads that keep the old state when the new
// configuration is broken, and a graceful stop on SIGTERM.
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
	"github.com/lmtpgate/lmtpgate/internal/front"
	"github.com/lmtpgate/lmtpgate/internal/journal"
	"github.com/lmtpgate/lmtpgate/internal/sdnotify"
)

// Daemon is one running lmtpgate.
type Daemon struct {
	path    string
	version string
	log     *slog.Logger
	level   *slog.LevelVar
	notify  *sdnotify.Notifier
	holder  *front.Holder
	srv     *front.Server
	cur     atomic.Pointer[state]
	started time.Time

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
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	level.Set(cfg.Log.Level)
	log, closeLog, err := newLogger(cfg.Log.Format, level, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	d := &Daemon{path: path, version: version, log: log, level: level, notify: sdnotify.New(), started: time.Now()}
	for _, w := range cfg.Warnings {
		log.Warn("configuration: " + w)
	}

	// Signals first, so a SIGHUP during start-up is not fatal.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	listeners, activated, err := openListeners(cfg)
	if err != nil {
		return err
	}

	st, err := build(ctx, cfg, nil, log)
	if err != nil {
		closeAll(listeners)
		return err
	}
	d.cur.Store(st)
	d.holder = front.NewHolder(st.rt)
	d.srv = front.New(front.Options{
		Hostname:        cfg.Hostname,
		MaxMessageBytes: cfg.LMTP.MaxMessageSize,
		MaxRecipients:   cfg.LMTP.MaxRecipients,
		ReadTimeout:     cfg.LMTP.ReadTimeout,
		WriteTimeout:    cfg.LMTP.WriteTimeout,
		Log:             log,
	}, d.holder)

	var ctl net.Listener
	if cfg.ControlSocket != "" {
		if ctl, err = listenControl(cfg.ControlSocket); err != nil {
			log.Warn("control socket unavailable: lmtpgate reload/status/resolve will not reach this daemon", "path", cfg.ControlSocket, "err", err.Error())
		} else {
			go d.serveControl(ctl)
		}
	}

	lost := make(chan error, len(listeners))
	for _, l := range listeners {
		d.serving.Add(1)
		go func() {
			err := d.srv.Serve(l)
			d.serving.Add(-1)
			if !d.stopping.Load() {
				lost <- fmt.Errorf("listener %s: %v", l.Addr(), err)
			}
		}()
	}
	names := make([]string, len(listeners))
	for i, l := range listeners {
		names[i] = l.Addr().Network() + ":" + l.Addr().String()
	}
	log.Info("lmtpgate started", "version", version, "mode", string(cfg.Mode), "order", fmt.Sprint(cfg.Order()), "listen", fmt.Sprint(names), "socket_activated", activated)

	// READY once the routing state is usable: a source that can answer,
	// or, if none can yet, after a bounded wait (the daemon then answers
	// 451 and says so in STATUS rather than keeping systemd waiting).
	d.waitUsable(ctx, 5*time.Second)
	d.notify.Ready(d.Status().Line())

	var cfgEvents <-chan struct{}
	if cfg.WatchConfig {
		cfgEvents = d.watchConfig(ctx, cfg)
	}
	var wd <-chan time.Time
	if iv := d.notify.WatchdogInterval(); iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		wd = t.C
	}
	statusTick := time.NewTicker(10 * time.Second)
	defer statusTick.Stop()

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				d.reload("SIGHUP")
				continue
			}
			log.Info("stopping", "signal", sig.String())
			break loop
		case <-cfgEvents:
			if d.cur.Load().cfg.WatchConfig {
				d.reload("configuration file changed")
			}
		case <-wd:
			// Fed from the main loop, and only while every listener
			// still accepts: a daemon that cannot take mail must be
			// restarted, not kept alive.
			if int(d.serving.Load()) == len(listeners) {
				d.notify.Watchdog()
			}
		case <-statusTick.C:
			d.notify.Status(d.Status().Line())
		case err := <-lost:
			log.Error("lost a listener", "err", err.Error())
			if d.serving.Load() == 0 {
				runErr = errors.New("no listener left")
				break loop
			}
		}
	}

	d.stopping.Store(true)
	cur := d.cur.Load()
	d.notify.Stopping("stopping: finishing transactions in progress")
	sctx, cancel := context.WithTimeout(context.Background(), cur.cfg.ShutdownTimeout)
	d.srv.Shutdown(sctx, 10*time.Second)
	cancel()
	if ctl != nil {
		ctl.Close()
		os.Remove(cur.cfg.ControlSocket)
	}
	retire(cur, nil)
	st2 := d.srv.Stats()
	log.Info("lmtpgate stopped", "delivered", st2.Delivered, "deferred", st2.TempFailed, "rejected", st2.PermFailed)
	return runErr
}

func (d *Daemon) waitUsable(ctx context.Context, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for _, s := range d.Status().Sources {
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
	old := d.cur.Load()
	err := d.doReload(old)
	if err != nil {
		d.lastReloadErr = err.Error()
		d.log.Error("reload rejected, still serving the previous configuration", "reason", why, "err", err.Error(), "mode", string(old.cfg.Mode))
	} else {
		d.lastReloadErr = ""
	}
	d.lastReload = time.Now()
	// d.mu is held: Status would lock it again and hang the daemon.
	d.notify.Ready(d.status(d.lastReload, d.lastReloadErr).Line())
	return err
}

func (d *Daemon) doReload(old *state) error {
	cfg, err := config.Load(d.path)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		d.log.Warn("configuration: " + w)
	}
	for _, f := range restartOnly(old.cfg, cfg) {
		d.log.Warn("setting changed; it takes effect at the next restart", "key", f)
	}
	st, err := build(context.Background(), cfg, old, d.log)
	if err != nil {
		return err
	}
	old.rt.OnRetired = func() { retire(old, st) }
	d.holder.Swap(st.rt)
	d.cur.Store(st)
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
	if a.LMTP.MaxMessageSize != b.LMTP.MaxMessageSize || a.LMTP.MaxRecipients != b.LMTP.MaxRecipients ||
		a.LMTP.ReadTimeout != b.LMTP.ReadTimeout || a.LMTP.WriteTimeout != b.LMTP.WriteTimeout {
		out = append(out, "lmtp")
	}
	if a.ControlSocket != b.ControlSocket {
		out = append(out, "control_socket")
	}
	if a.Log.Format != b.Log.Format {
		out = append(out, "log.format")
	}
	if a.WatchConfig != b.WatchConfig && b.WatchConfig {
		out = append(out, "watch_config")
	}
	return out
}

// Status reports the daemon's current state.
func (d *Daemon) Status() Status {
	d.mu.Lock()
	lr, lre := d.lastReload, d.lastReloadErr
	d.mu.Unlock()
	return d.status(lr, lre)
}

// status is Status with the reload outcome given, for callers that hold d.mu.
func (d *Daemon) status(lr time.Time, lre string) Status {
	st := d.cur.Load()
	s := Status{
		Version:         d.version,
		Config:          d.path,
		Mode:            string(st.cfg.Mode),
		ModeFrom:        st.cfg.ModeFrom,
		Order:           st.cfg.Order(),
		Started:         d.started,
		LastReload:      lr,
		LastReloadError: lre,
	}
	if d.srv != nil {
		s.Stats = d.srv.Stats()
	}
	now := time.Now()
	for _, name := range st.cfg.Order() {
		s.Sources = append(s.Sources, sourceStatus(st, name, now))
	}
	return s
}

// openListeners takes systemd's sockets when socket-activated, else binds
// the configured ones.
func openListeners(cfg *config.Config) (ls []net.Listener, activated bool, err error) {
	if os.Getenv("LISTEN_FDS") != "" {
		all, err := activation.Listeners()
		if err != nil {
			return nil, false, fmt.Errorf("socket activation: %w", err)
		}
		for _, l := range all {
			if l != nil {
				ls = append(ls, l)
			}
		}
		if len(ls) == 0 {
			return nil, false, errors.New("socket activation: no stream socket among the passed descriptors")
		}
		return ls, true, nil
	}
	for _, li := range cfg.Listen {
		var l net.Listener
		if li.Network == "unix" {
			if fi, err := os.Lstat(li.Address); err == nil && fi.Mode()&os.ModeSocket != 0 {
				os.Remove(li.Address)
			}
			l, err = net.Listen("unix", li.Address)
			if err == nil {
				// The MTA's LMTP client (Postfix's lmtp runs as postfix,
				// usually in group mail) must be able to connect.
				os.Chmod(li.Address, 0o660)
			}
		} else {
			l, err = net.Listen(li.Network, li.Address)
		}
		if err != nil {
			closeAll(ls)
			return nil, false, fmt.Errorf("listen %s: %w", li, err)
		}
		ls = append(ls, l)
	}
	if len(ls) == 0 {
		return nil, false, errors.New("no listener configured (listen is empty and the daemon was not socket-activated)")
	}
	return ls, false, nil
}

func closeAll(ls []net.Listener) {
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
	switch format {
	case "journal":
		sock := os.Getenv("LMTPGATE_JOURNAL_SOCKET")
		h, err := journal.NewHandler(journal.Options{Socket: sock, Level: level, Fallback: stderr})
		if err != nil {
			return nil, nil, err
		}
		return slog.New(h), func() { h.Close() }, nil
	case "json":
		return slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})), func() {}, nil
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})), func() {}, nil
}
