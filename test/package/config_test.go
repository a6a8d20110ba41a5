package packagetest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/lmtpgate/lmtpgate/internal/config"
)

// shippedConfig returns the packaged default configuration with the paths
// that point at the host (imapd.conf, state_dir) replaced by test copies,
// so the test sees the same file but not this machine's Cyrus.
func shippedConfig(t *testing.T) (string, []byte) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "etc", "lmtpgate", "lmtpgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	imapd, err := filepath.Abs(filepath.Join("testdata", "debian12-imapd.conf"))
	if err != nil {
		t.Fatal(err)
	}
	// The password files as a fresh install creates them: empty, 0600.
	etc := t.TempDir()
	for _, f := range []string{"proxy.pw", "mupdate.pw"} {
		if err := os.WriteFile(filepath.Join(etc, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := string(data)
	for old, repl := range map[string]string{
		"imapd_conf: /etc/imapd.conf":             "imapd_conf: " + imapd,
		"state_dir: /var/lib/lmtpgate":            "state_dir: " + t.TempDir(),
		"password_file: /etc/lmtpgate/proxy.pw":   "password_file: " + filepath.Join(etc, "proxy.pw"),
		"password_file: /etc/lmtpgate/mupdate.pw": "password_file: " + filepath.Join(etc, "mupdate.pw"),
	} {
		if !strings.Contains(s, old) {
			t.Fatalf("shipped config lacks %q", old)
		}
		s = strings.Replace(s, old, repl, 1)
	}
	return filepath.Join(repoRoot(t), "etc", "lmtpgate", "lmtpgate.yaml"), []byte(s)
}

// TestShippedConfigLoads checks that the configuration a fresh install gets
// is accepted and means what its comments say on a Debian 12 Cyrus
// frontend: routing from the local mailboxes.db, address options taken from
// imapd.conf rather than overridden.
func TestShippedConfigLoads(t *testing.T) {
	path, data := shippedConfig(t)
	c, err := config.Parse(path, data)
	if err != nil {
		t.Fatalf("shipped config rejected: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"lookup.order", strings.Join(c.Lookup.Order, ","), "mailboxes-db"},
		{"lookup.mailboxes_db", c.Lookup.MailboxesDB.Path, "/var/lib/cyrus/mailboxes.db"},
		{"mode", c.Mode, config.ModeMaster},
		// Debian's imapd.conf says "unixhierarchysep: no"; the shipped
		// file must not override it.
		{"address.unixhierarchysep", c.Address.UnixHierarchySep, false},
		{"address.downcase_rcpt", c.Address.Downcase, true},
		{"address.virtdomains", c.Address.VirtDomains, "off"},
		{"address.defaultdomain", c.Address.DefaultDomain, "internal"},
		{"backends.authname", c.Backends.AuthName, "proxy"},
		{"backends.port", c.Backends.DefaultPort, 2003},
		{"lookup.local_mupdate.address", c.Lookup.Local.Address, "127.0.0.1:3905"},
		{"listen", len(c.Listen), 1},
		{"control_socket", c.ControlSocket, "/run/lmtpgate/control.sock"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

// mergeYAML sets every key of src in dst, recursing into mappings present
// in both: the edits a reader makes when told to "set" keys in a file.
func mergeYAML(dst, src *yaml.Node) {
	if dst.Kind == yaml.DocumentNode {
		dst = dst.Content[0]
	}
	if src.Kind == yaml.DocumentNode {
		src = src.Content[0]
	}
	for i := 0; i+1 < len(src.Content); i += 2 {
		k, v := src.Content[i], src.Content[i+1]
		found := false
		for j := 0; j+1 < len(dst.Content); j += 2 {
			if dst.Content[j].Value != k.Value {
				continue
			}
			found = true
			if v.Kind == yaml.MappingNode && dst.Content[j+1].Kind == yaml.MappingNode {
				mergeYAML(dst.Content[j+1], v)
			} else {
				dst.Content[j+1] = v
			}
		}
		if !found {
			dst.Content = append(dst.Content, k, v)
		}
	}
}

// TestWithoutCyrus: on a host without Cyrus the shipped configuration
// fails `lmtpgate check` with a message that points at lmtpgate.yaml(5)'s
// HOSTS WITHOUT CYRUS, and the edits given there make it pass.
func TestWithoutCyrus(t *testing.T) {
	root := repoRoot(t)
	data, err := os.ReadFile(filepath.Join(root, "etc", "lmtpgate", "lmtpgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(data), "state_dir: /var/lib/lmtpgate", "state_dir: "+t.TempDir(), 1)
	missing := filepath.Join(t.TempDir(), "imapd.conf")
	_, err = config.Parse("lmtpgate.yaml", []byte(strings.Replace(s, "imapd_conf: /etc/imapd.conf", "imapd_conf: "+missing, 1)))
	if err == nil || !strings.Contains(err.Error(), "HOSTS WITHOUT CYRUS") {
		t.Fatalf("shipped config without imapd.conf: err = %v, want a pointer to HOSTS WITHOUT CYRUS", err)
	}

	man, err := os.ReadFile(filepath.Join(root, "man", "lmtpgate.yaml.5"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(man), "\n.Sh HOSTS WITHOUT CYRUS\n")
	if !ok {
		t.Fatal("lmtpgate.yaml(5) has no section HOSTS WITHOUT CYRUS")
	}
	section, _, _ = strings.Cut(section, "\n.Sh ")
	_, example, ok := strings.Cut(section, ".Bd -literal -offset indent\n")
	if !ok {
		t.Fatal("HOSTS WITHOUT CYRUS has no example")
	}
	example, _, _ = strings.Cut(example, "\n.Ed")
	// The password files the example names exist after an install.
	dir := t.TempDir()
	for _, f := range []string{"mupdate.pw", "proxy.pw"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	example = strings.ReplaceAll(example, "/etc/lmtpgate/", dir+"/")

	var doc, edit yaml.Node
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(example), &edit); err != nil {
		t.Fatalf("example in HOSTS WITHOUT CYRUS: %v\n%s", err, example)
	}
	mergeYAML(&doc, &edit)
	merged, err := yaml.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse("lmtpgate.yaml", merged)
	if err != nil {
		t.Fatalf("shipped config with the HOSTS WITHOUT CYRUS edits: %v\n%s", err, merged)
	}
	if c.ImapdConf != "" || strings.Join(c.Order(), ",") != "master-replica" || c.Backends.Password != "secret" || c.Lookup.Master.Password != "secret" {
		t.Errorf("edited config: imapd_conf %q, order %v, passwords %q %q", c.ImapdConf, c.Order(), c.Backends.Password, c.Lookup.Master.Password)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("edited config warns: %v", c.Warnings)
	}
}
