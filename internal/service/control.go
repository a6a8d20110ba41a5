package service

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// The control socket is how `lmtpgate reload`, `mode`, `status` and
// `resolve` talk to the running daemon: one JSON request line, one JSON
// response line. It lets `systemctl reload` (ExecReload=lmtpgate reload)
// report a rejected configuration, which a bare SIGHUP cannot.

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

// Call sends one request to the control socket at path.
func Call(ctx context.Context, path string, req Request) (*Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
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

// listenControl binds the control socket, replacing a stale one left by a
// previous run (the runtime directory survives restarts).
func listenControl(path string) (net.Listener, error) {
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
	os.Chmod(path, 0o600)
	return l, nil
}

func (d *Daemon) serveControl(l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(2 * time.Minute))
			var req Request
			if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&req); err != nil {
				json.NewEncoder(conn).Encode(Response{Error: "bad request: " + err.Error()})
				return
			}
			json.NewEncoder(conn).Encode(d.handleControl(req))
		}()
	}
}

func (d *Daemon) handleControl(req Request) Response {
	switch req.Cmd {
	case "reload":
		if err := d.reload("control socket"); err != nil {
			return Response{Error: err.Error()}
		}
		st := d.Status()
		return Response{OK: true, Message: "reloaded; mode " + st.Mode, Status: &st}
	case "status":
		st := d.Status()
		return Response{OK: true, Status: &st}
	case "resolve":
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rt, release := d.holder.Acquire()
		defer release()
		st := d.cur.Load()
		var out []ResolveResult
		for _, a := range req.Args {
			out = append(out, Resolve(ctx, rt, st, a))
		}
		return Response{OK: true, Resolved: out}
	}
	return Response{Error: fmt.Sprintf("unknown command %q", req.Cmd)}
}
