package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestMain runs the commands as on a host without the packaged unit, so
// that check does not apply an installed unit's sandbox to test paths
// under /tmp; TestCheckSandbox sets the unit itself.
func TestMain(m *testing.M) {
	if os.Getenv("LMTPGATE_RUN_MAIN") != "" {
		os.Args = append([]string{"lmtpgate"}, strings.Fields(os.Getenv("LMTPGATE_RUN_MAIN"))...)
		main()
		os.Exit(0)
	}
	os.Setenv("LMTPGATE_UNIT", "/nonexistent/lmtpgate.service")
	os.Exit(m.Run())
}

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
	good := write("good.yaml", "state_dir: "+dir+"\nlookup: {order: [mailboxes-db, master-mupdate], mailboxes_db: "+dir+"/missing.db, master_mupdate: {address: '127.0.0.1:3905'}}\nbackends: {password: x}\n")
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
	// What will surely fail makes check fail, naming the key and the fix.
	for _, tc := range []struct{ name, yaml, want string }{
		{"no source can answer", "lookup: {order: [mailboxes-db], mailboxes_db: " + dir + "/missing.db}\nbackends: {password: x}\n", "lookup.order: no source"},
		{"empty backend password", "lookup: {order: [master-mupdate], master_mupdate: {address: '127.0.0.1:3905', authname: m, password: p}}\n", "backends.password: empty"},
		{"empty MUPDATE password", "lookup: {order: [master-mupdate], master_mupdate: {address: '127.0.0.1:3905', authname: m}}\nbackends: {password: x}\n", "lookup.master_mupdate.password: empty"},
		{"local mupdate is the master", "lookup: {order: [local-mupdate, master-mupdate], master_mupdate: {address: '10.0.0.1:3905', authname: m, password: p}, local_mupdate: {address: '10.0.0.1:3905'}}\nbackends: {password: x}\n", "is the master's own address"},
	} {
		p := write(tc.name+".yaml", "state_dir: "+dir+"\n"+tc.yaml)
		out, err := runCmd(t, "check", "-c", p)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%s: err %v, output:\n%s\nwant a failure naming %q", tc.name, err, out, tc.want)
		}
	}
}

// With the packaged unit's sandbox, a path it hides (here under /tmp,
// which PrivateTmp= replaces) fails check although root can read it.
func TestCheckSandbox(t *testing.T) {
	t.Setenv("LMTPGATE_UNIT", "../../systemd/lmtpgate.service")
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	os.WriteFile(p, []byte("state_dir: /var/lib/lmtpgate\nlookup: {order: [master-mupdate], master_mupdate: {address: '127.0.0.1:3905'}}\nbackends: {password_file: "+dir+"/pw}\nlmtp: {spool_dir: /srv/spool}\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "pw"), []byte("x\n"), 0o600)
	out, err := runCmd(t, "check", "-c", p)
	if err == nil || !strings.Contains(out, "backends.password_file: "+dir+"/pw is hidden from the service") || !strings.Contains(out, "lmtp.spool_dir: /srv/spool is read-only") {
		t.Fatalf("err %v, output:\n%s", err, out)
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
	os.WriteFile(cfg, []byte("state_dir: "+dir+"\ncontrol_socket: "+dir+"/none.sock\nlookup: {order: [mailboxes-db, master-mupdate], mailboxes_db: /x, master_mupdate: {address: 'm:3905'}}\nbackends: {password: x}\n"), 0o600)
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

// A mode the configuration cannot run in is refused before anything is
// written, so no leftover file can break the next start; `mode clear`
// removes an override.
func TestModeRefusedIsNotWritten(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("state_dir: "+dir+"\ncontrol_socket: "+dir+"/none.sock\nlookup: {order: [master-mupdate], master_mupdate: {address: 'm:3905'}}\nbackends: {password: x}\n"), 0o600)
	t.Setenv("MAINPID", "")
	out, err := runCmd(t, "mode", "-c", cfg, "no-master")
	if err == nil || !strings.Contains(err.Error(), "leaves no lookup source") {
		t.Fatalf("mode no-master with only the master: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "mode")); !os.IsNotExist(err) {
		t.Fatalf("a refused mode left %s behind (%v)", filepath.Join(dir, "mode"), err)
	}
	// An override that does apply stays until cleared.
	os.WriteFile(filepath.Join(dir, "mode"), []byte("master\n"), 0o644)
	runCmd(t, "mode", "-c", cfg, "clear")
	if _, err := os.Stat(filepath.Join(dir, "mode")); !os.IsNotExist(err) {
		t.Fatalf("mode clear left the file (%v)", err)
	}
	if out, err := runCmd(t, "mode", "-c", cfg); err != nil || !strings.HasPrefix(out, "master (from config)") {
		t.Fatalf("after clear: %q %v", out, err)
	}
}

func TestErrorLines(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		journal bool
		want    string
	}{
		{"plain", errors.New("bad key"), false, "lmtpgate: bad key\n"},
		{"journal stream", errors.New("bad key"), true, "<3>lmtpgate: bad key\n"},
		{"plain, two lines", errors.New("one\ntwo"), false, "lmtpgate: one\ntwo\n"},
		// journald splits a stream at newlines and reads the prefix of
		// each line: every line needs its own.
		{"journal stream, two lines", errors.New("one\ntwo"), true, "<3>lmtpgate: one\n<3>two\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := errorLines(tc.err, tc.journal); got != tc.want {
				t.Errorf("errorLines = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestMain runs main itself when a test re-executes this binary with
// LMTPGATE_RUN_MAIN set, so that the real stderr, environment and exit
// status can be checked.

// TestFatalErrorPriority runs a failing command with stderr on a file
// and JOURNAL_STREAM naming that file (as systemd names the journal stream
// it connects), another file, or nothing: only the first gets the "<3>"
// priority prefix.
func TestFatalErrorPriority(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.yaml")
	tests := []struct {
		name   string
		stream func(self, other os.FileInfo) string
		prefix bool
	}{
		{"stderr is the journal stream", func(self, _ os.FileInfo) string { return devIno(t, self) }, true},
		{"stderr redirected away from the stream", func(_, other os.FileInfo) string { return devIno(t, other) }, false},
		{"no journal stream", func(_, _ os.FileInfo) string { return "" }, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errPath := filepath.Join(dir, fmt.Sprintf("stderr%d", i))
			f, err := os.Create(errPath)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			other, err := os.Create(errPath + ".other")
			if err != nil {
				t.Fatal(err)
			}
			other.Close()
			self, _ := f.Stat()
			otherInfo, _ := os.Stat(errPath + ".other")
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "LMTPGATE_RUN_MAIN=check -c "+missing, "JOURNAL_STREAM="+tc.stream(self, otherInfo))
			cmd.Stderr = f
			runErr := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(runErr, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("check of a missing file: %v, want exit status 1", runErr)
			}
			out, _ := os.ReadFile(errPath)
			want := "lmtpgate: "
			if tc.prefix {
				want = "<3>" + want
			}
			if !strings.HasPrefix(string(out), want) || !strings.Contains(string(out), missing) {
				t.Errorf("stderr = %q, want it to start with %q and name %s", out, want, missing)
			}
		})
	}
}

func devIno(t *testing.T, fi os.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Skip("no device and inode numbers on this system")
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}
