// Command lmtpgate is an LMTP proxy for the frontends of a Cyrus IMAP
// murder: it routes each recipient to its backend from the frontend's
// mailboxes.db, its local mupdate replica or the murder master, and
// delivers there. See lmtpgate(8).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/config"
	"github.com/lmtpgate/lmtpgate/internal/control"
	"github.com/lmtpgate/lmtpgate/internal/journal"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/service"
)

// version is stamped at build time: -ldflags "-X main.version=...".
var version = "devel"

const usage = `usage: lmtpgate <command> [options]

commands:
  serve   [-c FILE]                      run the daemon
  check   [-c FILE] [--connect]          validate the configuration; --connect also logs in
                                         to every backend and MUPDATE server
  resolve [-c FILE] [-v] [--local] [--json] ADDRESS...
                                         show where mail for each address goes
  reload  [-c FILE]                      make the running daemon reload; fails if the new configuration is rejected
  mode    [-c FILE] [master|no-master|clear]
                                         show or set master / no-master mode (and reload); clear
                                         removes the override and returns to the file's mode:
  status  [-c FILE] [--json]             show the running daemon's status
  version                                print the version
`

// Exit statuses besides 0, 1 (an error) and 2 (usage).
const (
	exitDeferred = 4 // resolve: an address would get a 4xx
	exitRejected = 5 // resolve: an address would get a 5xx
)

// errUsage makes main exit 2.
var errUsage = errors.New("usage")

// exitError carries an exit status other than 1.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	var ee *exitError
	switch {
	case err == nil:
	case errors.Is(err, errUsage):
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprint(os.Stderr, errorLines(ee, journal.StderrIsStream()))
		}
		os.Exit(ee.code)
	default:
		fmt.Fprint(os.Stderr, errorLines(err, journal.StderrIsStream()))
		os.Exit(1)
	}
}

// errorLines formats the error that ends a command. Under systemd two such
// errors matter: the one that keeps `lmtpgate serve` from starting and the
// rejection that `lmtpgate reload` reports to `systemctl reload`. Both go
// to stderr, which journald logs at the stream's level, info, so
// `journalctl -p err` would not show them. When stderr is a journal
// stream, each line carries sd-daemon(3)'s "<3>" (LOG_ERR) prefix, which
// journald strips and takes as the line's priority; elsewhere (a terminal,
// a file) the text stays plain.
func errorLines(err error, journalStream bool) string {
	text := "lmtpgate: " + err.Error()
	if !journalStream {
		return text + "\n"
	}
	var b strings.Builder
	for _, line := range strings.Split(text, "\n") {
		b.WriteString("<3>")
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", config.DefaultPath, "configuration file")
	verbose := fs.Bool("v", false, "resolve: show every source's answer and time")
	local := fs.Bool("local", false, "resolve: do not ask the running daemon")
	jsonOut := fs.Bool("json", false, "status, resolve: print JSON")
	connect := fs.Bool("connect", false, "check: log in to every backend and MUPDATE server")
	switch cmd {
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "lmtpgate", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "serve", "check", "resolve", "reload", "mode", "status":
	default:
		return errUsage
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	switch cmd {
	case "serve":
		if fs.NArg() != 0 {
			return errUsage
		}
		return service.Serve(ctx, *cfgPath, version, stderr)
	case "check":
		if fs.NArg() != 0 {
			return errUsage
		}
		return check(ctx, *cfgPath, *connect, stdout)
	case "resolve":
		if fs.NArg() == 0 {
			return errUsage
		}
		return resolve(ctx, *cfgPath, fs.Args(), *verbose, *local, *jsonOut, stdout, stderr)
	case "reload":
		if fs.NArg() != 0 {
			return errUsage
		}
		return reload(ctx, *cfgPath, stdout)
	case "mode":
		if fs.NArg() > 1 {
			return errUsage
		}
		return mode(ctx, *cfgPath, fs.Arg(0), stdout)
	case "status":
		if fs.NArg() != 0 {
			return errUsage
		}
		return status(ctx, *cfgPath, *jsonOut, stdout)
	}
	return errUsage
}

// controlSocket is the daemon's control socket, found even when the file
// on disk is broken.
func controlSocket(path string) string {
	sock, _ := config.Locate(path)
	return sock
}

// callDaemon asks the running daemon; it says plainly when this user may
// not.
func callDaemon(ctx context.Context, path string, req control.Request) (*control.Response, error) {
	sock := controlSocket(path)
	resp, err := control.Call(ctx, sock, req)
	if errors.Is(err, control.ErrPermission) {
		return nil, fmt.Errorf("%w; run it as root", err)
	}
	return resp, err
}

func resolve(ctx context.Context, path string, addrs []string, verbose, local, jsonOut bool, stdout, stderr io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	var res []control.ResolveResult
	from := "running daemon"
	if !local {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		resp, err := callDaemon(cctx, path, control.Request{Cmd: "resolve", Args: addrs})
		cancel()
		switch {
		case errors.Is(err, control.ErrPermission):
			return fmt.Errorf("%w, or use --local to resolve in this process", err)
		case err == nil && !resp.OK:
			return errors.New(resp.Error)
		case err == nil:
			res = resp.Resolved
		default:
			fmt.Fprintf(stderr, "lmtpgate: no running daemon (%v); resolving in this process\n", err)
			local = true
		}
	}
	if local {
		from = "this process (no daemon asked)"
		log := newCLILogger(stderr)
		if res, err = service.ResolveLocal(ctx, cfg, addrs, log); err != nil {
			return err
		}
	}
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		printResolved(stdout, res, verbose, from)
	}
	return resolveExit(res)
}

func printResolved(w io.Writer, res []control.ResolveResult, verbose bool, from string) {
	for _, r := range res {
		fmt.Fprintf(w, "%s\n", r.Address)
		if r.Mailbox != "" {
			fmt.Fprintf(w, "  mailbox:  %s\n", r.Mailbox)
			fmt.Fprintf(w, "  forward:  %s   (the address sent to the backend)\n", r.Forward)
		}
		if r.Server != "" {
			fmt.Fprintf(w, "  server:   %s (answered by %s)\n", r.Server, r.Source)
		}
		if r.Backend != "" {
			fmt.Fprintf(w, "  backend:  %s\n", r.Backend)
		}
		fmt.Fprintf(w, "  RCPT:     %s\n", r.Verdict)
		if r.Error != "" {
			fmt.Fprintf(w, "  because:  %s\n", r.Error)
		}
		if verbose {
			for _, t := range r.Trace {
				fmt.Fprintf(w, "  %-15s %-50s %8.3f ms\n", t.Source+":", t.Answer, float64(t.Micros)/1000)
			}
			for _, s := range r.Sources {
				fmt.Fprintf(w, "  [%s %s] %s\n", s.Name, sourceWord(s.Health), s.Detail)
			}
			fmt.Fprintf(w, "  (resolved by %s)\n", from)
		}
	}
}

// resolveExit is 0 when every address would be accepted, exitDeferred when
// one would be deferred, exitRejected when one would be refused.
func resolveExit(res []control.ResolveResult) error {
	code := 0
	for _, r := range res {
		switch {
		case r.Code >= 500:
			code = exitRejected
		case r.Code >= 400 && code == 0:
			code = exitDeferred
		}
	}
	if code == 0 {
		return nil
	}
	return &exitError{code: code}
}

// sourceWord is a source's health in one word: ok, stale (answering from
// a list it cannot bring up to date) or DOWN.
func sourceWord(h lookup.Health) string {
	if h.Healthy && h.Stale {
		return "stale"
	}
	return okDown(h.Healthy)
}

func okDown(ok bool) string {
	if ok {
		return "ok"
	}
	return "DOWN"
}

// reload asks the daemon over its control socket and waits for the
// outcome. Without a control socket it falls back to SIGHUP to $MAINPID
// (set by systemd for ExecReload), whose outcome it cannot see.
func reload(ctx context.Context, path string, stdout io.Writer) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	resp, err := callDaemon(cctx, path, control.Request{Cmd: "reload"})
	if err == nil {
		if !resp.OK {
			return fmt.Errorf("reload rejected, the daemon keeps its previous configuration: %s", resp.Error)
		}
		fmt.Fprintln(stdout, resp.Message)
		return nil
	}
	if pid, perr := strconv.Atoi(os.Getenv("MAINPID")); perr == nil && pid > 0 {
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			return fmt.Errorf("signal %d: %w", pid, err)
		}
		fmt.Fprintf(stdout, "sent SIGHUP to %d (control socket %s unavailable: %v); see the journal for the outcome\n", pid, controlSocket(path), err)
		return nil
	}
	return &errNoDaemon{sock: controlSocket(path), err: err}
}

type errNoDaemon struct {
	sock string
	err  error
}

func (e *errNoDaemon) Error() string {
	return fmt.Sprintf("no running daemon at %s (%v); the change takes effect when it starts (the socket unit starts it on the first delivery)", e.sock, e.err)
}

func (e *errNoDaemon) Unwrap() error { return e.err }

// mode shows or sets the mode. A new mode is checked against the
// configuration before the file is written, so a mode the daemon would
// refuse never lands on disk; and if the running daemon still rejects the
// reload, the previous file is put back.
func mode(ctx context.Context, path, want string, stdout io.Writer) error {
	_, stateDir := config.Locate(path)
	if want == "" {
		cfg, err := config.Load(path)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s (from %s)\n", cfg.Mode, cfg.ModeFrom)
		if cfg.ModeProblem != "" {
			fmt.Fprintf(stdout, "error: %s\n", cfg.ModeProblem)
		}
		if cfg.ModeFrom != "config" && cfg.ConfigMode != cfg.Mode {
			fmt.Fprintf(stdout, "the configuration says %s; `lmtpgate mode clear` returns to it\n", cfg.ConfigMode)
		}
		return nil
	}
	prev, hadPrev := os.ReadFile(config.ModeFile(stateDir))
	restore := func() {
		if hadPrev == nil {
			os.WriteFile(config.ModeFile(stateDir), prev, 0o644)
		} else {
			config.ClearModeFile(stateDir)
		}
	}
	if want == "clear" {
		if err := config.ClearModeFile(stateDir); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed %s; the mode is mode: in %s again\n", config.ModeFile(stateDir), path)
	} else {
		m, err := config.ParseMode(want)
		if err != nil {
			return err
		}
		if err := config.WriteModeFile(stateDir, m); err != nil {
			return err
		}
		cfg, err := config.Load(path)
		switch {
		case err != nil:
			restore()
			return fmt.Errorf("mode not changed: %w", err)
		case cfg.ModeProblem != "":
			restore()
			return fmt.Errorf("mode not changed: %s", cfg.ModeProblem)
		}
		fmt.Fprintf(stdout, "mode %s written to %s\n", m, config.ModeFile(stateDir))
	}
	err := reload(ctx, path, stdout)
	var nd *errNoDaemon
	if err != nil && !errors.As(err, &nd) {
		restore()
		return fmt.Errorf("the daemon refused the new mode, the previous one is back in place: %w", err)
	}
	return err
}

func status(ctx context.Context, path string, jsonOut bool, stdout io.Writer) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := callDaemon(cctx, path, control.Request{Cmd: "status"})
	if err != nil {
		if errors.Is(err, control.ErrPermission) {
			return err
		}
		return fmt.Errorf("no running daemon at %s: %w", controlSocket(path), err)
	}
	if !resp.OK || resp.Status == nil {
		return errors.New(resp.Error)
	}
	s := resp.Status
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	fmt.Fprintf(stdout, "lmtpgate %s, config %s, up since %s\n", s.Version, s.Config, s.Started.Format(time.RFC3339))
	fmt.Fprintf(stdout, "mode:     %s (from %s), lookup order %s\n", s.Mode, s.ModeFrom, strings.Join(s.Order, ", "))
	if s.ModeFrom != "config" && s.ConfigMode != s.Mode {
		fmt.Fprintf(stdout, "          the configuration says %s; `lmtpgate mode clear` returns to it\n", s.ConfigMode)
	}
	if s.ModeProblem != "" {
		fmt.Fprintf(stdout, "MODE FILE IGNORED: %s\n", s.ModeProblem)
	}
	for _, src := range s.Sources {
		fmt.Fprintf(stdout, "source:   %-15s %-5s %s\n", src.Name, sourceWord(src.Health), src.Detail)
	}
	for _, be := range s.Backends {
		state := "ok"
		if !be.Up {
			state = "DOWN"
		}
		fmt.Fprintf(stdout, "backend:  %-15s %-4s %d in flight, %d idle, since %s", be.Server, state, be.InFlight, be.Idle, be.Since.Format(time.RFC3339))
		if be.LastError != "" {
			fmt.Fprintf(stdout, "; last error %s: %s", be.LastErrorAt.Format(time.RFC3339), be.LastError)
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprintf(stdout, "sessions: %d open, %d since start, %d refused; %d messages\n", s.Stats.Active, s.Stats.Sessions, s.Stats.Refused, s.Stats.Transactions)
	fmt.Fprintf(stdout, "recipients: %d delivered, %d deferred (4xx), %d rejected (5xx)\n", s.Stats.Delivered, s.Stats.Deferred, s.Stats.Rejected)
	for _, p := range s.Problems {
		fmt.Fprintf(stdout, "problem:  %s\n", p)
	}
	if !s.LastReload.IsZero() {
		fmt.Fprintf(stdout, "last reload: %s", s.LastReload.Format(time.RFC3339))
		if s.LastReloadError != "" {
			fmt.Fprintf(stdout, " FAILED: %s", s.LastReloadError)
		}
		fmt.Fprintln(stdout)
	}
	return nil
}
