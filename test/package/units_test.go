package packagetest

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/config"
)

// unitFile is a parsed systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

func readUnit(t *testing.T, name string) unitFile {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: cannot parse %q", name, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// one returns the single value of section.key, failing if it is not set
// exactly once.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s= set %d times, want once: %q", section, key, len(v), v)
	}
	return v[0]
}

// TestUnitsAgreeWithConfig checks that the units and the configuration
// point at the same places: the control socket and the LMTP socket lie in
// the service's RuntimeDirectory, the mode file in its StateDirectory,
// ExecReload= talks to the daemon ExecStart= runs (same configuration
// file), the daemon runs as cyrus:mail, and Cyrus's files the shipped
// configuration reads are visible in the sandbox.
func TestUnitsAgreeWithConfig(t *testing.T) {
	svc := readUnit(t, "lmtpgate.service")
	sock := readUnit(t, "lmtpgate.socket")

	// The defaults, as the parser fills them in when the file is silent.
	def, err := config.Parse("defaults.yaml", []byte("lookup: {order: [mailboxes-db], mailboxes_db: /x}\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, data := shippedConfig(t)
	shipped, err := config.Parse("lmtpgate.yaml", data)
	if err != nil {
		t.Fatal(err)
	}

	if got := svc.one(t, "Service", "User"); got != "cyrus" {
		t.Errorf("User=%s, want cyrus (the owner of Cyrus's mailboxes.db)", got)
	}
	if got := svc.one(t, "Service", "Group"); got != "mail" {
		t.Errorf("Group=%s, want mail", got)
	}

	runDir := "/run/" + svc.one(t, "Service", "RuntimeDirectory")
	stateDir := "/var/lib/" + svc.one(t, "Service", "StateDirectory")
	for name, c := range map[string]*config.Config{"default": def, "shipped": shipped} {
		if filepath.Dir(c.ControlSocket) != runDir {
			t.Errorf("%s control_socket %s is not in the service's RuntimeDirectory %s", name, c.ControlSocket, runDir)
		}
	}
	if def.StateDir != stateDir {
		t.Errorf("default state_dir %s is not the service's StateDirectory %s", def.StateDir, stateDir)
	}
	// shippedConfig replaced state_dir by a temporary directory; look at
	// the file itself.
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "etc", "lmtpgate", "lmtpgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), "\nstate_dir: "+stateDir+"\n") {
		t.Errorf("shipped lmtpgate.yaml does not set state_dir: %s", stateDir)
	}
	if svc.one(t, "Service", "RuntimeDirectoryPreserve") != "yes" {
		t.Error("RuntimeDirectoryPreserve= must be yes: the socket unit's LMTP socket lives in the runtime directory")
	}
	if a, b := svc.one(t, "Service", "RuntimeDirectoryMode"), sock.one(t, "Socket", "DirectoryMode"); a != b {
		t.Errorf("RuntimeDirectoryMode=%s but the socket's DirectoryMode=%s: whichever runs last changes the MTA's access", a, b)
	}

	// The LMTP socket systemd binds is the one listen: names without
	// socket activation, so both setups look alike to the MTA.
	stream := sock.one(t, "Socket", "ListenStream")
	if filepath.Dir(stream) != runDir {
		t.Errorf("ListenStream=%s is not in %s", stream, runDir)
	}
	for _, c := range []*config.Config{def, shipped} {
		if len(c.Listen) != 1 || c.Listen[0].String() != "unix:"+stream {
			t.Errorf("listen = %v, want [unix:%s] as in lmtpgate.socket", c.Listen, stream)
		}
	}

	// ExecStart= and ExecReload= name the same file, the one the package
	// installs; the reload command runs as User= (same unit) and so can
	// use the daemon's 0600 control socket.
	for _, k := range []struct{ key, cmd string }{{"ExecStart", "serve"}, {"ExecReload", "reload"}} {
		f := strings.Fields(svc.one(t, "Service", k.key))
		want := []string{"/usr/sbin/lmtpgate", k.cmd, "-c", config.DefaultPath}
		if !slices.Equal(f, want) {
			t.Errorf("%s=%s, want %s", k.key, strings.Join(f, " "), strings.Join(want, " "))
		}
	}

	// ProtectSystem=strict: the daemon writes only its runtime and state
	// directories and the private /tmp, where the shipped spool_dir ("",
	// meaning $TMPDIR or /tmp) puts large messages.
	if got := svc.one(t, "Service", "ProtectSystem"); got != "strict" {
		t.Errorf("ProtectSystem=%s, want strict", got)
	}
	if got := svc.one(t, "Service", "PrivateTmp"); got != "yes" {
		t.Errorf("PrivateTmp=%s, want yes (the default spool directory)", got)
	}
	if shipped.LMTP.SpoolDir != "" {
		t.Errorf("shipped lmtp.spool_dir = %q: not writable under ProtectSystem=strict without ReadWritePaths=", shipped.LMTP.SpoolDir)
	}
	if rw := svc["Service"]["ReadWritePaths"]; len(rw) != 0 {
		t.Errorf("ReadWritePaths=%v: the daemon should need none", rw)
	}
}
