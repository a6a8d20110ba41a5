package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/config"
	"github.com/lmtpgate/lmtpgate/internal/control"
	"github.com/lmtpgate/lmtpgate/internal/front"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// Resolve answers for one address the way an RCPT would be answered, with
// every source's answer and time, the health of each source and of the
// backend chosen. It reads one snapshot: rt and the sources it holds.
func Resolve(ctx context.Context, rt *front.Runtime, addr string) control.ResolveResult {
	st := stateOf(rt)
	v := front.Check(ctx, rt, addr, "", true)
	r := control.ResolveResult{
		Address: addr,
		Mailbox: v.Recipient.Mailbox,
		Forward: v.Recipient.Forward,
		Server:  v.Result.Entry.Server,
		Source:  v.Result.Source,
		Code:    250,
		Verdict: "250 accepted",
	}
	if v.Reply == nil && r.Server != "" {
		if err := st.pool.Available(r.Server); err != nil {
			r.Code, r.Verdict, r.Error = 451, "451 4.4.3 Server(s) unavailable to complete operation", err.Error()
		}
	}
	if v.Reply != nil {
		r.Code = v.Reply.Code
		r.Verdict = backend.FormatReply(v.Reply)
	}
	if v.Err != nil {
		r.Error = v.Err.Error()
	}
	for _, h := range st.pool.Health() {
		if h.Server == r.Server {
			r.Backend = backendLine(h)
		}
	}
	for _, a := range v.Result.Trace {
		ans := ""
		switch {
		case a.Err == nil:
			ans = fmt.Sprintf("%s on %s (%s)", a.Entry.Name, a.Entry.Server, a.Entry.State)
			if ss := sourceStatus(st, a.Source); ss.Stale {
				ans += ", from a list not kept current: " + ss.Detail
			}
		case errors.Is(a.Err, lookup.ErrNotFound):
			ans = "no such mailbox"
		default:
			ans = "failed: " + a.Err.Error()
		}
		r.Trace = append(r.Trace, control.TraceAnswer{Source: a.Source, Answer: ans, Micros: a.Dur.Microseconds()})
	}
	r.Sources = sourceStatuses(st)
	return r
}

// backendLine is a backend's health in words.
func backendLine(h backend.Health) string {
	if h.Up {
		return fmt.Sprintf("up, %d in flight, %d idle", h.InFlight, h.Idle)
	}
	return fmt.Sprintf("DOWN since %s (%s); next try %s", h.Since.Format("15:04:05"), h.LastError, h.RetryAt.Format("15:04:05"))
}

// ResolveLocal builds the routing state for cfg in this process, answers
// for addrs and tears it down: `lmtpgate resolve --local`, or when no daemon
// runs.
func ResolveLocal(ctx context.Context, cfg *config.Config, addrs []string, log *slog.Logger) ([]control.ResolveResult, error) {
	// The daemon owns the master replica's snapshot: this process reads
	// it and leaves it alone.
	c := *cfg
	c.Lookup.Replica.SnapshotReadOnly = true
	st, err := build(ctx, &c, nil, log, nil)
	if err != nil {
		return nil, err
	}
	defer retire(st, nil)
	activate(st)
	if r := st.replica(); r != nil {
		// A list from the snapshot or the master's first dump, within
		// the lookup's budget; without one the replica answers
		// "unavailable" and the chain goes on.
		wctx, cancel := context.WithTimeout(ctx, cfg.Lookup.Timeout)
		select {
		case <-r.Ready():
		case <-wctx.Done():
		}
		cancel()
	}
	var out []control.ResolveResult
	for _, a := range addrs {
		out = append(out, Resolve(ctx, st.rt, a))
	}
	return out, nil
}
