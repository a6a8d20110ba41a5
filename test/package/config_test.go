package packagetest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	s := string(data)
	for old, repl := range map[string]string{
		"imapd_conf: /etc/imapd.conf":  "imapd_conf: " + imapd,
		"state_dir: /var/lib/lmtpgate": "state_dir: " + t.TempDir(),
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
		{"lookup.mailboxes_db", c.Lookup.MailboxesDB, "/var/lib/cyrus/mailboxes.db"},
		{"mode", c.Mode, config.ModeMaster},
		// Debian's imapd.conf says "unixhierarchysep: no"; the shipped
		// file must not override it.
		{"address.unixhierarchysep", c.Address.UnixHierarchySep, false},
		{"address.downcase_rcpt", c.Address.DowncaseRcpt, true},
		{"address.virtdomains", c.Address.VirtDomains, "off"},
		{"address.defaultdomain", c.Address.DefaultDomain, "internal"},
		{"backends.authname", c.Backends.AuthName, "proxy"},
		{"backends.port", c.Backends.Port, 2003},
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
