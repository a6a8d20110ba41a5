package service

import (
	"fmt"
	"strings"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/front"
	"github.com/lmtpgate/lmtpgate/internal/mboxlist"
)

// Status is the daemon's state as `lmtpgate status` and STATUS= show it.
type Status struct {
	Version         string         `json:"version"`
	Config          string         `json:"config"`
	Mode            string         `json:"mode"`
	ModeFrom        string         `json:"mode_from"`
	Order           []string       `json:"order"`
	Started         time.Time      `json:"started"`
	LastReload      time.Time      `json:"last_reload,omitzero"`
	LastReloadError string         `json:"last_reload_error,omitempty"`
	Sources         []SourceStatus `json:"sources"`
	Stats           front.Stats    `json:"stats"`
}

// SourceStatus is one lookup source's health.
type SourceStatus struct {
	Name    string `json:"name"`
	Healthy bool   `json:"healthy"`
	Detail  string `json:"detail"`
}

// Line is the one-line summary for sd_notify STATUS=.
func (s Status) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "mode %s;", s.Mode)
	for _, src := range s.Sources {
		h := "ok"
		if !src.Healthy {
			h = "DOWN"
		}
		fmt.Fprintf(&b, " %s %s (%s);", src.Name, h, src.Detail)
	}
	fmt.Fprintf(&b, " delivered %d, deferred %d, rejected %d", s.Stats.Delivered, s.Stats.TempFailed, s.Stats.PermFailed)
	if s.LastReloadError != "" {
		fmt.Fprintf(&b, "; LAST RELOAD FAILED: %s", s.LastReloadError)
	}
	return b.String()
}

func sourceStatus(st *state, name string, now time.Time) SourceStatus {
	ss := SourceStatus{Name: name}
	p, ok := st.parts[name]
	if !ok {
		ss.Detail = "not configured"
		return ss
	}
	switch o := p.obj.(type) {
	case *mboxlist.DB:
		s := o.Status()
		switch {
		case s.Loaded:
			ss.Healthy = true
			ss.Detail = fmt.Sprintf("%d mailboxes, loaded %s ago, %s", s.Entries, now.Sub(s.LoadedAt).Round(time.Second), s.Watching)
			if s.LastError != "" && s.LastErrorAt.After(s.LoadedAt) {
				ss.Detail += "; keeping last good index: " + s.LastError
			}
		default:
			ss.Detail = "not loaded: " + s.LastError
		}
	case *cachedMupdate:
		s := o.client.Stats()
		hits, misses, size := o.Stats()
		ss.Healthy = s.State != "backoff" && s.State != "closed"
		ss.Detail = fmt.Sprintf("%s, %d queries, cache %d entries %d hits %d misses", s.State, s.Queries, size, hits, misses)
		if !ss.Healthy && s.LastError != "" {
			ss.Detail += ", " + s.LastError
		}
	}
	return ss
}
