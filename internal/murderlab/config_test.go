package murderlab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHasLMTPService(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"debian default", "imap2\t\t143/tcp\t\timap\nsieve\t\t4190/tcp\n", false},
		{"added", "imap2 143/tcp imap\nlmtp\t\t2003/tcp\n", true},
		{"alias", "foo 24/tcp lmtp\n", true},
		{"commented", "#lmtp 2003/tcp\n", false},
		{"udp only", "lmtp 2003/udp\n", false},
		{"prefix name", "lmtps 2004/tcp\n", false},
		{"in comment after entry", "imap 143/tcp # lmtp\n", false},
		{"empty", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := hasLMTPService(tc.in); got != tc.want {
				t.Errorf("hasLMTPService(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

// confMap parses the "key: value" lines of an imapd.conf.
func confMap(t *testing.T, s string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, ln := range strings.Split(strings.TrimSpace(s), "\n") {
		k, v, ok := strings.Cut(ln, ": ")
		if !ok {
			t.Fatalf("bad line %q", ln)
		}
		if _, dup := m[k]; dup {
			t.Fatalf("duplicate option %q", k)
		}
		m[k] = v
	}
	return m
}

func TestImapdConfRoles(t *testing.T) {
	const master = "127.9.9.1:3905"
	sl := []string{"127.9.9.2", "127.9.9.3"}
	tests := []struct {
		name    string
		r       role
		want    map[string]string
		without []string
	}{
		{"master", roleMaster, map[string]string{"servername": "127.9.9.1", "admins": "admin mupdate"},
			[]string{"mupdate_server", "proxyservers", "proxy_authname"}},
		// A backend's proxy_authname is what XFER logs in to the other
		// backend as: an admin there.
		{"backend", roleBackend, map[string]string{"servername": "127.9.9.2", "proxyservers": "proxy",
			"lmtp_admins": "proxy admin", "mupdate_server": master, "mupdate_authname": "mupdate",
			"proxy_authname": "admin", "allowusermoves": "yes"},
			[]string{"serverlist", "mupdate_username"}},
		// A frontend must never have proxyservers: its presence turns a
		// server into a backend.
		{"frontend", roleFrontend, map[string]string{"servername": "127.9.9.1", "proxy_authname": "proxy",
			"proxy_password": proxyPass, "serverlist": "127.9.9.2 127.9.9.3", "mupdate_server": master},
			[]string{"proxyservers", "lmtp_admins"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := confMap(t, imapdConf(tc.r, "/lab/x", tc.want["servername"], "/lab/sasldb2", master, sl))
			for k, v := range tc.want {
				if m[k] != v {
					t.Errorf("%s = %q, want %q", k, m[k], v)
				}
			}
			for _, k := range tc.without {
				if _, ok := m[k]; ok {
					t.Errorf("%s set on %s", k, tc.name)
				}
			}
			// Per-instance sockets and locks stay inside the instance dir.
			for _, k := range []string{"configdirectory", "lmtpsocket", "idlesocket", "notifysocket", "mboxname_lockpath"} {
				if !strings.HasPrefix(m[k], "/lab/x/") {
					t.Errorf("%s = %q, not inside the instance dir", k, m[k])
				}
			}
		})
	}
}

func TestCyrusConfRoles(t *testing.T) {
	tests := []struct {
		name      string
		r         role
		proxy     bool
		want, not []string
	}{
		{"master", roleMaster, false, []string{`cmd="mupdate -m -C /c"`, `listen="127.1.1.1:3905"`}, []string{"lmtpd", "ctl_mboxlist"}},
		{"backend", roleBackend, false, []string{`cmd="ctl_mboxlist -m -C /c"`, `cmd="lmtpd -C /c" listen="127.1.1.1:2003"`, `listen="127.1.1.1:143"`}, []string{"lmtpd -a", `cmd="mupdate`}},
		{"frontend", roleFrontend, false, []string{`cmd="mupdate -C /c" listen="127.1.1.1:13905"`, `listen="127.1.1.1:10143"`}, []string{"lmtpd", "-m"}},
		{"frontend with proxy", roleFrontend, true, []string{`cmd="lmtpd -a -C /c" listen="127.1.1.1:10024"`}, []string{"mupdate -m"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := cyrusConf(tc.r, "127.1.1.1", "/c", tc.proxy)
			for _, w := range tc.want {
				if !strings.Contains(s, w) {
					t.Errorf("missing %q in\n%s", w, s)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(s, n) {
					t.Errorf("unexpected %q in\n%s", n, s)
				}
			}
		})
	}
}

func TestStartNeedsDir(t *testing.T) {
	if _, err := Start(t.Context(), Options{}); err == nil {
		t.Error("Start without Dir succeeded")
	}
	if _, err := Start(t.Context(), Options{Dir: t.TempDir(), Backends: -1}); err == nil {
		t.Error("Start with Backends -1 succeeded")
	}
}

func TestStartRefusesUsedDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "master"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "master", "imapd.conf"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(t.Context(), Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "already holds a lab") {
		t.Errorf("Start on a used Dir: %v", err)
	}
}
