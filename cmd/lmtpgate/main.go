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
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/config"
	"github.com/lmtpgate/lmtpgate/internal/cyrusdb"
	"github.com/lmtpgate/lmtpgate/internal/journal"
	"github.com/lmtpgate/lmtpgate/internal/service"
)

// version is stamped at build time: -ldflags "-X main.version=...".
var version = "devel"

const usage = `usage: lmtpgate <command> [options]

commands:
  serve   [-c FILE]                      run the daemon
  check   [-c FILE]                      validate the configuration
  resolve [-c FILE] [-v] [--local] ADDRESS...
                                         show where mail for each address goes
  reload  [-c FILE]                      make the running daemon reload; fails if the new configuration is rejected
  mode    [-c FILE] [master|no-master]   show or set master / no-master mode (and reload)
  status  [-c FILE]                      show the running daemon's status
  version                                print the version
`

// errUsage makes main exit 2.
var errUsage = errors.New("usage")

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case err == nil:
	case errors.Is(err, errUsage):
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
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
		return check(*cfgPath, stdout)
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
		return status(ctx, *cfgPath, *jsonOut, stdout)
	}
	return errUsage
}

func check(path string, stdout io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stdout, "warning:", w)
	}
	// The daemon runs on without a readable mailboxes.db (the source is
	// "unavailable" until the file appears), so this is a warning, not an
	// error; but an operator checking a new setup wants to hear it now.
	if slices.Contains(cfg.Order(), config.SourceMailboxesDB) {
		if info, err := cyrusdb.Stat(cfg.Lookup.MailboxesDB); err != nil {
			fmt.Fprintf(stdout, "warning: lookup.mailboxes_db: %v\n", err)
		} else {
			fmt.Fprintf(stdout, "%s: %s format, %d bytes\n", cfg.Lookup.MailboxesDB, info.Format, info.FileSize)
		}
	}
	fmt.Fprintf(stdout, "%s: OK (mode %s from %s; lookup order %s)\n", path, cfg.Mode, cfg.ModeFrom, strings.Join(cfg.Order(), ", "))
	return nil
}

// controlSocket is the daemon's control socket, found even when the file
// on disk is broken.
func controlSocket(path string) string {
	sock, _ := config.Locate(path)
	return sock
}

func resolve(ctx context.Context, path string, addrs []string, verbose, local, jsonOut bool, stdout, stderr io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	var res []service.ResolveResult
	from := "running daemon"
	if !local {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		resp, err := service.Call(cctx, cfg.ControlSocket, service.Request{Cmd: "resolve", Args: addrs})
		cancel()
		switch {
		case err == nil && !resp.OK:
			return errors.New(resp.Error)
		case err == nil:
			res = resp.Resolved
		default:
			local = true
		}
	}
	if local {
		from = "this process (no daemon asked)"
		log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		if res, err = service.ResolveLocal(ctx, cfg, addrs, log); err != nil {
			return err
		}
	}
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	for _, r := range res {
		fmt.Fprintf(stdout, "%s\n", r.Address)
		if r.Mailbox != "" {
			fmt.Fprintf(stdout, "  mailbox:  %s\n", r.Mailbox)
			fmt.Fprintf(stdout, "  forward:  %s\n", r.Forward)
		}
		if r.Server != "" {
			fmt.Fprintf(stdout, "  server:   %s (answered by %s)\n", r.Server, r.Source)
		}
		fmt.Fprintf(stdout, "  RCPT:     %s\n", r.Verdict)
		if r.Error != "" {
			fmt.Fprintf(stdout, "  because:  %s\n", r.Error)
		}
		if verbose {
			for _, t := range r.Trace {
				fmt.Fprintf(stdout, "  %-15s %-50s %8.3f ms\n", t.Source+":", t.Answer, float64(t.Micros)/1000)
			}
			for _, s := range r.Sources {
				h := "ok"
				if !s.Healthy {
					h = "DOWN"
				}
				fmt.Fprintf(stdout, "  [%s %s] %s\n", s.Name, h, s.Detail)
			}
			fmt.Fprintf(stdout, "  (resolved by %s)\n", from)
		}
	}
	return nil
}

// reload asks the daemon over its control socket and waits for the
// outcome. Without a control socket it falls back to SIGHUP to $MAINPID
// (set by systemd for ExecReload), whose outcome it cannot see.
func reload(ctx context.Context, path string, stdout io.Writer) error {
	sock := controlSocket(path)
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	resp, err := service.Call(cctx, sock, service.Request{Cmd: "reload"})
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
		fmt.Fprintf(stdout, "sent SIGHUP to %d (control socket %s unavailable: %v); see the journal for the outcome\n", pid, sock, err)
		return nil
	}
	return fmt.Errorf("no running daemon at %s: %w", sock, err)
}

func mode(ctx context.Context, path, want string, stdout io.Writer) error {
	cfg, err := config.Load(path)
	if want == "" {
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s (from %s)\n", cfg.Mode, cfg.ModeFrom)
		return nil
	}
	m, perr := config.ParseMode(want)
	if perr != nil {
		return perr
	}
	_, stateDir := config.Locate(path)
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	// Write and rename, so a crash never leaves a half-written mode.
	file := filepath.Join(stateDir, "mode")
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(string(m)+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, file); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "mode %s written to %s\n", m, file)
	return reload(ctx, path, stdout)
}

func status(ctx context.Context, path string, jsonOut bool, stdout io.Writer) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := service.Call(cctx, controlSocket(path), service.Request{Cmd: "status"})
	if err != nil {
		return fmt.Errorf("no running daemon: %w", err)
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
	for _, src := range s.Sources {
		h := "ok"
		if !src.Healthy {
			h = "DOWN"
		}
		fmt.Fprintf(stdout, "source:   %-15s %-4s %s\n", src.Name, h, src.Detail)
	}
	fmt.Fprintf(stdout, "sessions: %d open, %d since start; %d messages\n", s.Stats.Active, s.Stats.Sessions, s.Stats.Transactions)
	fmt.Fprintf(stdout, "recipients: %d delivered, %d deferred (4xx), %d rejected (5xx)\n", s.Stats.Delivered, s.Stats.TempFailed, s.Stats.PermFailed)
	if !s.LastReload.IsZero() {
		fmt.Fprintf(stdout, "last reload: %s", s.LastReload.Format(time.RFC3339))
		if s.LastReloadError != "" {
			fmt.Fprintf(stdout, " FAILED: %s", s.LastReloadError)
		}
		fmt.Fprintln(stdout)
	}
	return nil
}
