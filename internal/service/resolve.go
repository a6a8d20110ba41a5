package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/config"

	"github.com/lmtpgate/lmtpgate/internal/front"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// ResolveResult is what `lmtpgate resolve` prints for one address.
type ResolveResult struct {
	Address string         `json:"address"`
	Mailbox string         `json:"mailbox,omitempty"`
	Forward string         `json:"forward,omitempty"`
	Server  string         `json:"server,omitempty"`
	Source  string         `json:"source,omitempty"`
	Verdict string         `json:"verdict"` // what the MTA would hear at RCPT
	Error   string         `json:"error,omitempty"`
	Trace   []TraceAnswer  `json:"trace,omitempty"`
	Sources []SourceStatus `json:"sources,omitempty"`
}

// TraceAnswer is one source's answer.
type TraceAnswer struct {
	Source string `json:"source"`
	Answer string `json:"answer"`
	Micros int64  `json:"us"`
}

// Resolve answers for one address the way an RCPT would be answered, with
// every source's answer and time, and the health of each source.
func Resolve(ctx context.Context, rt *front.Runtime, st *state, addr string) ResolveResult {
	v := front.Check(ctx, rt, addr, "", true)
	r := ResolveResult{
		Address: addr,
		Mailbox: v.Recipient.Mailbox,
		Forward: v.Recipient.Forward,
		Server:  v.Result.Entry.Server,
		Source:  v.Result.Source,
		Verdict: "250 accepted",
	}
	if v.Reply != nil {
		r.Verdict = fmt.Sprintf("%d %d.%d.%d %s", v.Reply.Code, v.Reply.EnhancedCode[0], v.Reply.EnhancedCode[1], v.Reply.EnhancedCode[2], v.Reply.Message)
	}
	if v.Err != nil {
		r.Error = v.Err.Error()
	}
	for _, a := range v.Result.Trace {
		ans := ""
		switch {
		case a.Err == nil:
			ans = fmt.Sprintf("%s on %s (%s)", a.Entry.Name, a.Entry.Server, a.Entry.State)
		case errors.Is(a.Err, lookup.ErrNotFound):
			ans = "no such mailbox"
		default:
			ans = "failed: " + a.Err.Error()
		}
		r.Trace = append(r.Trace, TraceAnswer{Source: a.Source, Answer: ans, Micros: a.Dur.Microseconds()})
	}
	if st != nil {
		now := time.Now()
		for _, name := range st.cfg.Order() {
			r.Sources = append(r.Sources, sourceStatus(st, name, now))
		}
	}
	return r
}

// ResolveLocal builds the routing state for cfg in this process, answers
// for addrs and tears it down: `lmtpgate resolve` when no daemon runs.
func ResolveLocal(ctx context.Context, cfg *config.Config, addrs []string, log *slog.Logger) ([]ResolveResult, error) {
	st, err := build(ctx, cfg, nil, log)
	if err != nil {
		return nil, err
	}
	defer retire(st, nil)
	var out []ResolveResult
	for _, a := range addrs {
		out = append(out, Resolve(ctx, st.rt, st, a))
	}
	return out, nil
}
