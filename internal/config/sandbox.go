package config

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Sandbox is what the installed lmtpgate.service (with its drop-ins) lets
// the daemon see and write.
type Sandbox struct {
	// Unit is the unit file read, for messages.
	Unit string
	// Hidden are invisible to the service: ProtectHome=yes hides /root,
	// /home and /run/user; PrivateTmp=yes gives it its own empty /tmp and
	// /var/tmp.
	Hidden []string
	// Writable are the only places it may write when ProtectSystem=strict:
	// StateDirectory=, RuntimeDirectory=, ReadWritePaths= and its private
	// /tmp. Nil when the file system is writable.
	Writable []string
	// Credentials are the files the unit hands over with LoadCredential=
	// (read by systemd as root, so their own location and mode do not
	// matter to the sandbox).
	Credentials []string
}

// UnitPaths are where the packaged unit is installed, Debian's then
// Red Hat's; LMTPGATE_UNIT overrides them (tests).
func UnitPaths() []string {
	if p, ok := os.LookupEnv("LMTPGATE_UNIT"); ok {
		return []string{p}
	}
	return []string{"/lib/systemd/system/lmtpgate.service", "/usr/lib/systemd/system/lmtpgate.service"}
}

// LoadSandbox reads the first unit of paths that exists, then its drop-ins
// in /etc/systemd/system/<name>.d/, as systemd would (a later assignment
// wins; an empty one resets a list). It returns nil when no unit is
// installed: the daemon then does not run under the packaged sandbox.
func LoadSandbox(paths []string) (*Sandbox, error) {
	var unit string
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			unit = p
			break
		}
	}
	if unit == "" {
		return nil, nil
	}
	files := []string{unit}
	dropins, _ := filepath.Glob(filepath.Join("/etc/systemd/system", filepath.Base(unit)+".d", "*.conf"))
	sort.Strings(dropins)
	kv, err := serviceSettings(append(files, dropins...))
	if err != nil {
		return nil, err
	}
	last := func(k string) string {
		if v := kv[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	sb := &Sandbox{Unit: unit}
	switch last("ProtectHome") {
	case "yes", "true", "1", "on":
		sb.Hidden = append(sb.Hidden, "/root", "/home", "/run/user")
	}
	private := false
	switch last("PrivateTmp") {
	case "yes", "true", "1", "on":
		sb.Hidden = append(sb.Hidden, "/tmp", "/var/tmp")
		private = true
	}
	if last("ProtectSystem") == "strict" {
		sb.Writable = []string{}
		for _, d := range kv["StateDirectory"] {
			sb.Writable = append(sb.Writable, filepath.Join("/var/lib", d))
		}
		for _, d := range kv["RuntimeDirectory"] {
			sb.Writable = append(sb.Writable, filepath.Join("/run", d))
		}
		for _, d := range kv["ReadWritePaths"] {
			sb.Writable = append(sb.Writable, strings.TrimLeft(d, "-+"))
		}
		if private {
			sb.Writable = append(sb.Writable, "/tmp", "/var/tmp")
		}
	}
	for _, c := range kv["LoadCredential"] {
		if _, path, ok := strings.Cut(c, ":"); ok {
			sb.Credentials = append(sb.Credentials, path)
		}
	}
	return sb, nil
}

// SandboxProblems lists the paths the configuration needs that the
// sandbox hides or keeps read-only: the daemon would fail on them under
// systemd even though `lmtpgate check`, run as root outside the sandbox,
// reads them fine. A nil sandbox has none.
func SandboxProblems(c *Config, sb *Sandbox) []Problem {
	if sb == nil {
		return nil
	}
	var out []Problem
	read := func(key, path string) {
		if path != "" && under(path, sb.Hidden) {
			out = append(out, Problem{Key: key, Msg: fmt.Sprintf("%s is hidden from the service by its sandbox (ProtectHome=, PrivateTmp= in %s): move it, or relax the unit with a drop-in", path, sb.Unit)})
		}
	}
	write := func(key, path string) {
		if path == "" || sb.Writable == nil {
			return
		}
		if !under(path, sb.Writable) {
			out = append(out, Problem{Key: key, Msg: fmt.Sprintf("%s is read-only for the service (ProtectSystem=strict in %s): use a directory under %s, or add ReadWritePaths= in a drop-in", path, sb.Unit, strings.Join(sb.Writable, ", "))})
		}
	}
	read("imapd_conf", c.ImapdConf)
	if contains(c.Order(), SourceMailboxesDB) {
		read("lookup.mailboxes_db", c.Lookup.MailboxesDB.Path)
		read("lookup.replica_socket", c.Lookup.MailboxesDB.ReplicaSocket)
	}
	read("backends.tls_ca_file", c.Backends.TLSCAFile)
	read("lookup.master_mupdate.tls_ca_file", c.Lookup.Master.TLSCAFile)
	read("lookup.local_mupdate.tls_ca_file", c.Lookup.Local.TLSCAFile)
	for key, path := range c.SecretFiles {
		if !contains(sb.Credentials, path) {
			read(key, path)
		}
	}
	if contains(c.Order(), SourceMasterReplica) && c.Lookup.Replica.SnapshotPath != "" {
		write("lookup.master_replica.snapshot", filepath.Dir(c.Lookup.Replica.SnapshotPath))
	}
	write("lmtp.spool_dir", c.LMTP.SpoolDir)
	write("state_dir", c.StateDir)
	if c.ControlSocket != "" {
		write("control_socket", filepath.Dir(c.ControlSocket))
	}
	return out
}

// serviceSettings reads the [Service] assignments of unit files in order,
// as systemd merges a unit and its drop-ins: values accumulate, and an
// empty assignment resets the key.
func serviceSettings(files []string) (map[string][]string, error) {
	kv := map[string][]string{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		section := ""
		for _, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			switch {
			case line == "" || line[0] == '#' || line[0] == ';':
			case line[0] == '[':
				section = strings.Trim(line, "[]")
			case section == "Service":
				k, v, ok := strings.Cut(line, "=")
				if !ok {
					continue
				}
				k, v = strings.TrimSpace(k), strings.TrimSpace(v)
				if v == "" {
					delete(kv, k)
					continue
				}
				kv[k] = append(kv[k], strings.Fields(v)...)
			}
		}
	}
	return kv, nil
}

// under reports whether path is one of dirs or inside one.
func under(path string, dirs []string) bool {
	p := filepath.Clean(path)
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
