package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", "state_dir: "+dir+"\nlookup: {order: [mailboxes-db], mailboxes_db: "+dir+"/missing.db}\nbackends: {password: x}\n")
	out, err := runCmd(t, "check", "-c", good)
	if err != nil {
		t.Fatalf("check failed: %v\n%s", err, out)
	}
	if !strings.Contains(out, "warning: lookup.mailboxes_db") || !strings.Contains(out, "OK") {
		t.Fatalf("check output lacks the mailboxes.db warning or OK:\n%s", out)
	}
	bad := write("bad.yaml", "state_dir: "+dir+"\nlookup: {order: [mailboxes-db, ldap], mailboxes_db: /x}\n")
	if _, err := runCmd(t, "check", "-c", bad); err == nil || !strings.Contains(err.Error(), "lookup.order[1]") {
		t.Fatalf("bad config: err = %v, want it to name lookup.order[1]", err)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}, {"serve", "extra"}, {"resolve"}, {"mode", "a", "b"}, {"check", "-x"}} {
		if _, err := runCmd(t, args...); !errors.Is(err, errUsage) {
			t.Errorf("%q: err = %v, want a usage error", args, err)
		}
	}
	out, err := runCmd(t, "version")
	if err != nil || !strings.HasPrefix(out, "lmtpgate ") {
		t.Errorf("version: %q %v", out, err)
	}
}

func TestModeWritesStateFile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("state_dir: "+dir+"\ncontrol_socket: "+dir+"/none.sock\nlookup: {order: [mailboxes-db, master-mupdate], mailboxes_db: /x, master_mupdate: {address: 'm:3905'}}\n"), 0o600)
	t.Setenv("MAINPID", "")
	// No daemon runs, so the reload fails; the mode is written all the same
	// and takes effect at the next start or reload.
	out, err := runCmd(t, "mode", "-c", cfg, "no-master")
	if err == nil {
		t.Fatalf("mode reported success without a daemon:\n%s", out)
	}
	b, rerr := os.ReadFile(filepath.Join(dir, "mode"))
	if rerr != nil || strings.TrimSpace(string(b)) != "no-master" {
		t.Fatalf("state file: %q %v", b, rerr)
	}
	out, err = runCmd(t, "mode", "-c", cfg)
	if err != nil || !strings.HasPrefix(out, "no-master (from "+filepath.Join(dir, "mode")) {
		t.Fatalf("mode: %q %v", out, err)
	}
	if _, err := runCmd(t, "mode", "-c", cfg, "sideways"); err == nil {
		t.Fatal("mode accepted sideways")
	}
}

// A damaged mode file makes the whole configuration fail to load; `lmtpgate
// mode` must still find the configured state_dir and put it right.
func TestModeRepairsADamagedModeFile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("state_dir: "+dir+"\ncontrol_socket: "+dir+"/none.sock\nlookup: {order: [mailboxes-db], mailboxes_db: /x}\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "mode"), []byte("sideways\n"), 0o644)
	t.Setenv("MAINPID", "")
	if _, err := runCmd(t, "check", "-c", cfg); err == nil {
		t.Fatal("check accepted a damaged mode file")
	}
	runCmd(t, "mode", "-c", cfg, "master") // the reload fails: no daemon
	if out, err := runCmd(t, "check", "-c", cfg); err != nil {
		t.Fatalf("mode did not repair the state file: %v\n%s", err, out)
	}
}
