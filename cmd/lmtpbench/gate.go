package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/control"
	"go.yaml.in/yaml/v3"
)

// gate is an lmtpgate daemon started for one run, as its own process so
// that its CPU and memory can be sampled apart from the load generator.
type gate struct {
	cmd     *exec.Cmd
	dir     string
	LMTP    string
	Control string
	done    chan struct{}
	logf    *os.File
}

// freeAddr returns a free loopback TCP address.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startGate writes yaml (without listen, control_socket and state_dir) to
// dir/lmtpgate.yaml and runs `bin serve` on it until its LMTP port
// answers. Its output goes to dir/lmtpgate.log.
func startGate(ctx context.Context, bin, dir, yaml string) (*gate, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	g := &gate{dir: dir, LMTP: addr, Control: filepath.Join(dir, "control.sock"), done: make(chan struct{})}
	full := fmt.Sprintf("listen: [\"tcp:%s\"]\ncontrol_socket: %s\nstate_dir: %s\n%s", addr, g.Control, dir, yaml)
	cfg := filepath.Join(dir, "lmtpgate.yaml")
	if err := os.WriteFile(cfg, []byte(full), 0o600); err != nil {
		return nil, err
	}
	if g.logf, err = os.Create(filepath.Join(dir, "lmtpgate.log")); err != nil {
		return nil, err
	}
	g.cmd = exec.Command(bin, "serve", "-c", cfg)
	g.cmd.Stdout, g.cmd.Stderr = g.logf, g.logf
	// Keep the daemon out of the terminal's process group, so that ^C
	// reaches lmtpbench, which then stops it in order.
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := g.cmd.Start(); err != nil {
		g.logf.Close()
		return nil, err
	}
	go func() { g.cmd.Wait(); close(g.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return g, nil
		}
		select {
		case <-g.done:
			return nil, fmt.Errorf("lmtpgate exited at start; see %s", g.logf.Name())
		case <-ctx.Done():
			g.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			g.Stop()
			return nil, fmt.Errorf("lmtpgate did not listen on %s within 30s; see %s", addr, g.logf.Name())
		}
	}
}

// PID is the daemon's process id.
func (g *gate) PID() int { return g.cmd.Process.Pid }

// Resolve asks the daemon over its control socket where addr goes.
func (g *gate) Resolve(ctx context.Context, addr string) (control.ResolveResult, error) {
	resp, err := control.Call(ctx, g.Control, control.Request{Cmd: "resolve", Args: []string{addr}})
	if err != nil {
		return control.ResolveResult{}, err
	}
	if !resp.OK || len(resp.Resolved) != 1 {
		return control.ResolveResult{}, errors.New("resolve: " + resp.Error)
	}
	return resp.Resolved[0], nil
}

// Stop sends SIGTERM and waits (then SIGKILL after 40 s).
func (g *gate) Stop() {
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(40 * time.Second):
		g.cmd.Process.Kill()
		<-g.done
	}
	g.logf.Close()
}

// mergeYAML merges the mapping extra into the mapping base, key by key
// and into nested mappings, extra winning, and returns the result as YAML.
// Appending the text instead would repeat top-level keys such as
// backends, which a YAML parser refuses.
func mergeYAML(base, extra string) (string, error) {
	var b, e map[string]any
	if err := yaml.Unmarshal([]byte(base), &b); err != nil {
		return "", fmt.Errorf("base configuration: %w", err)
	}
	if err := yaml.Unmarshal([]byte(extra), &e); err != nil {
		return "", fmt.Errorf("extra configuration: %w", err)
	}
	if e == nil {
		return "", errors.New("extra configuration: want a YAML mapping")
	}
	if b == nil {
		b = map[string]any{}
	}
	mergeMaps(b, e)
	out, err := yaml.Marshal(b)
	if err != nil {
		return "", err
	}
	return string(out), nil
}

func mergeMaps(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				mergeMaps(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}
