package mboxlist

import (
	"context"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// startWatcher sets up inotify on the file's directory, or returns nil for
// polling mode. It runs before the first load, so that no change between
// that load and the start of watching can be missed.
func (d *DB) startWatcher() *fsnotify.Watcher {
	mode := "polling"
	var w *fsnotify.Watcher
	if !d.cfg.ForcePolling {
		var err error
		w, err = fsnotify.NewWatcher()
		if err == nil {
			if err = w.Add(filepath.Dir(d.cfg.Path)); err != nil {
				w.Close()
				w = nil
			}
		}
		if err != nil {
			d.log.Warn("cannot watch the mailboxes.db directory; falling back to polling",
				"err", err.Error(), "interval", d.cfg.PollInterval.String())
		} else {
			mode = "inotify"
		}
	}
	d.mu.Lock()
	d.status.Watching = mode
	d.mu.Unlock()
	return w
}

// watch keeps the index current until ctx is done.
//
// It watches the directory, not the file: Cyrus commits twoskip and
// skiplist in place (IN_MODIFY on the name), but repacks, recovers and
// rewrites flat files by writing mailboxes.db.NEW and renaming it over the
// original (IN_MOVED_TO on the name), after which a watch on the old inode
// would see nothing more (lib/cyrusdb_twoskip.c repacks into mailboxes.db.NEW and renames it over). Any event for the name
// starts a short debounce, since one commit is several writes; then the
// header is stat'ed and the file re-read only if its identity changed.
// A periodic stat catches whatever inotify misses (a directory replaced,
// an overflowed event queue), and is the only trigger in polling mode.
func (d *DB) watch(ctx context.Context, w *fsnotify.Watcher) {
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	base := filepath.Base(d.cfg.Path)
	poll := time.NewTicker(d.cfg.PollInterval)
	defer poll.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	pending := false

	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if filepath.Base(ev.Name) != base {
				continue
			}
			// The window starts with the first event and is not
			// extended by later ones, so a steady stream of commits
			// cannot postpone the re-check indefinitely.
			if !pending {
				pending = true
				debounce.Reset(d.cfg.Debounce)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// Typically an event queue overflow: re-check now.
			d.log.Debug("inotify error; re-checking mailboxes.db", "err", err.Error())
			_ = d.check(ctx, false)
		case <-debounce.C:
			pending = false
			_ = d.check(ctx, false)
		case <-poll.C:
			_ = d.check(ctx, false)
		}
	}
}
