package service

import (
	"fmt"
	"strings"

	"github.com/lmtpgate/lmtpgate/internal/control"
)

// statusLine is the one-line summary for sd_notify STATUS=.
func statusLine(s control.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "mode %s;", s.Mode)
	for _, src := range s.Sources {
		h := "ok"
		if !src.Healthy {
			h = "DOWN"
		}
		fmt.Fprintf(&b, " %s %s (%s);", src.Name, h, src.Detail)
	}
	var down []string
	for _, be := range s.Backends {
		if !be.Up {
			down = append(down, be.Server)
		}
	}
	if len(down) > 0 {
		fmt.Fprintf(&b, " backends DOWN: %s;", strings.Join(down, ", "))
	}
	fmt.Fprintf(&b, " delivered %d, deferred %d, rejected %d", s.Stats.Delivered, s.Stats.Deferred, s.Stats.Rejected)
	if s.ModeProblem != "" {
		b.WriteString("; MODE FILE IGNORED")
	}
	if s.LastReloadError != "" {
		fmt.Fprintf(&b, "; LAST RELOAD FAILED: %s", s.LastReloadError)
	}
	return b.String()
}
