// Package control is the protocol of lmtpgate's control socket, through
// which `lmtpgate reload`, `mode`, `status` and `resolve` talk to the
// running daemon: one JSON request line, one JSON response line. It lets
// `systemctl reload` (ExecReload=lmtpgate reload) report a rejected
// configuration, which a bare SIGHUP cannot.
//
// The socket is created mode 0600: root and the daemon's user only. A
// request is bounded (MaxRequest) and never echoed back whole.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/front"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// MaxRequest bounds one request line.
const MaxRequest = 1 << 20

// Request is one control command.
type Request struct {
	Cmd  string   `json:"cmd"` // "reload", "status", "resolve"
	Args []string `json:"args,omitempty"`
}

// Response is the daemon's answer.
type Response struct {
	OK       bool            `json:"ok"`
	Error    string          `json:"error,omitempty"`
	Message  string          `json:"message,omitempty"`
	Status   *Status         `json:"status,omitempty"`
	Resolved []ResolveResult `json:"resolved,omitempty"`
}

// Status is the daemon's state as `lmtpgate status` and STATUS= show it.
type Status struct {
	Version         string           `json:"version"`
	Config          string           `json:"config"`
	Mode            string           `json:"mode"`
	ModeFrom        string           `json:"mode_from"`
	ConfigMode      string           `json:"config_mode"`
	ModeProblem     string           `json:"mode_problem,omitempty"`
	Order           []string         `json:"order"`
	Started         time.Time        `json:"started"`
	LastReload      time.Time        `json:"last_reload,omitzero"`
	LastReloadError string           `json:"last_reload_error,omitempty"`
	Problems        []string         `json:"problems,omitempty"`
	Sources         []SourceStatus   `json:"sources"`
	Backends        []backend.Health `json:"backends"`
	Stats           front.Stats      `json:"stats"`
}

// SourceStatus is one lookup source's health.
type SourceStatus struct {
	Name string `json:"name"`
	lookup.Health
}

// ResolveResult is what `lmtpgate resolve` prints for one address.
type ResolveResult struct {
	Address string `json:"address"`
	Mailbox string `json:"mailbox,omitempty"`
	Forward string `json:"forward,omitempty"`
	Server  string `json:"server,omitempty"`
	Source  string `json:"source,omitempty"`
	// Code is the RCPT reply code the MTA would get (250 when accepted);
	// Verdict is the whole reply.
	Code    int            `json:"code"`
	Verdict string         `json:"verdict"`
	Error   string         `json:"error,omitempty"`
	Backend string         `json:"backend,omitempty"` // the backend's health, in words
	Trace   []TraceAnswer  `json:"trace,omitempty"`
	Sources []SourceStatus `json:"sources,omitempty"`
}

// TraceAnswer is one source's answer.
type TraceAnswer struct {
	Source string `json:"source"`
	Answer string `json:"answer"`
	Micros int64  `json:"us"`
}

// ErrPermission is returned by Call when the socket exists but this user
// may not use it.
var ErrPermission = errors.New("permission denied")

// Call sends one request to the control socket at path.
func Call(ctx context.Context, path string, req Request) (*Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.EACCES) || errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("control socket %s: %w (it is for root and the daemon's user)", path, ErrPermission)
		}
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, err
	}
	var resp Response
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&resp); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return &resp, nil
}

// Listen binds the control socket, replacing a stale one left by a previous
// run (the runtime directory survives restarts), and makes it 0600.
func Listen(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, errors.New("another lmtpgate is serving " + path)
		}
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// Reload and mode changes are for the daemon's own user and root.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod 0600 %s: %w", path, err)
	}
	return l, nil
}

// Serve answers requests on l with handle until l is closed.
func Serve(l net.Listener, log *slog.Logger, handle func(Request) Response) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(2 * time.Minute))
			req, err := readRequest(conn)
			if err != nil {
				log.Debug("bad control request", "err", err.Error())
				json.NewEncoder(conn).Encode(Response{Error: "bad request: " + err.Error()})
				return
			}
			json.NewEncoder(conn).Encode(handle(req))
		}()
	}
}

// readRequest reads one JSON line of at most MaxRequest bytes.
func readRequest(r io.Reader) (Request, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, MaxRequest+1), 64<<10)
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > MaxRequest {
			return Request{}, fmt.Errorf("request longer than %d bytes", MaxRequest)
		}
		if err == nil {
			break
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && len(line) > 0 {
			break
		}
		return Request{}, err
	}
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return Request{}, errors.New(clip(err.Error()))
	}
	return req, nil
}

// clip keeps an error about outside bytes short.
func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// UnknownCommand is the error for a command the daemon does not know; the
// command is quoted only in part.
func UnknownCommand(cmd string) Response {
	return Response{Error: fmt.Sprintf("unknown command %q", clip(cmd))}
}
