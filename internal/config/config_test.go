package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseErrorsNameTheKey(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, yaml, wantKey string
	}{
		{"unknown top key", "hostnme: x\n", "hostnme"},
		{"unknown nested key", "lookup:\n  ordr: [mailboxes-db]\n", "ordr"},
		{"bad mode", "mode: slave\n", "mode"},
		{"bad source", "lookup:\n  order: [mailboxes-db, ldap]\n  mailboxes_db: /x\n", "lookup.order[1]"},
		{"duplicate source", "lookup:\n  order: [mailboxes-db, mailboxes-db]\n  mailboxes_db: /x\n", "lookup.order[1]"},
		{"master without address", "lookup:\n  order: [master-mupdate]\n", "lookup.master_mupdate.address"},
		{"db without path", "lookup:\n  order: [mailboxes-db]\n", "lookup.mailboxes_db"},
		{"no-master leaves nothing", "mode: no-master\nlookup:\n  order: [master-mupdate]\n  master_mupdate: {address: 'h:3905'}\n", "mode"},
		{"bad duration", "shutdown_timeout: soon\n", "shutdown_timeout: \"soon\""},
		{"bad nested duration", "lookup:\n  master_mupdate: {query_timeout: banana}\n", "lookup.master_mupdate.query_timeout: \"banana\""},
		{"negative duration", "shutdown_timeout: -1s\n", "shutdown_timeout"},
		{"bad listen", "listen: [\"udp:1.2.3.4:5\"]\nlookup: {order: [mailboxes-db], mailboxes_db: /x}\n", "listen[0]"},
		{"relative unix", "listen: [\"unix:lmtp.sock\"]\nlookup: {order: [mailboxes-db], mailboxes_db: /x}\n", "listen[0]"},
		{"bad virtdomains", "address: {virtdomains: maybe}\nlookup: {order: [mailboxes-db], mailboxes_db: /x}\n", "address.virtdomains"},
		{"bad port", "backends: {port: 70000}\nlookup: {order: [mailboxes-db], mailboxes_db: /x}\n", "backends.port"},
		{"missing password file", "backends: {password_file: /nonexistent/pw}\nlookup: {order: [mailboxes-db], mailboxes_db: /x}\n", "backends.password_file"},
		{"bad log level", "log: {level: loud}\nlookup: {order: [mailboxes-db], mailboxes_db: /x}\n", "log.level"},
		{"missing imapd.conf", "imapd_conf: /nonexistent/imapd.conf\n", "imapd_conf"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, dir, "c.yaml", tc.yaml+"state_dir: "+dir+"\n")
			_, err := Load(p)
			if err == nil {
				t.Fatalf("Load accepted a bad config")
			}
			if !strings.Contains(err.Error(), tc.wantKey) {
				t.Fatalf("error %q does not name %q", err, tc.wantKey)
			}
		})
	}
}

func TestImapdConfFallbacks(t *testing.T) {
	dir := t.TempDir()
	im := writeFile(t, dir, "imapd.conf", `# a frontend
configdirectory: /var/lib/cyrus
servername: fe1.example.org
mupdate_server: mupdate.example.org
mupdate_authname: mupduser
mupdate_password: mupdpw
proxy_authname: mailproxy
proxy_password: proxypw
lmtp_downcase_rcpt: no
unixhierarchysep: no
virtdomains: userid
defaultdomain: Example.ORG
postuser: bb
lmtp_over_quota_perm_failure: yes
maxmessagesize: 1048576
`)
	p := writeFile(t, dir, "c.yaml", "imapd_conf: "+im+"\nstate_dir: "+dir+"\nlookup:\n  order: [mailboxes-db, local-mupdate, master-mupdate]\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"hostname", c.Hostname, "fe1.example.org"},
		{"mailboxes_db", c.Lookup.MailboxesDB.Path, "/var/lib/cyrus/mailboxes.db"},
		{"replica_socket", c.Lookup.MailboxesDB.ReplicaSocket, "/var/lib/cyrus/socket/mupdate.target"},
		{"deletedprefix default", c.Address.DeletedPrefix, "DELETED"},
		{"master address", c.Lookup.Master.Address, "mupdate.example.org:3905"},
		{"master authname", c.Lookup.Master.AuthName, "mupduser"},
		{"master password", c.Lookup.Master.Password, "mupdpw"},
		{"local defaults to master creds", c.Lookup.Local.AuthName, "mupduser"},
		{"local address", c.Lookup.Local.Address, "127.0.0.1:3905"},
		{"backend authname", c.Backends.AuthName, "mailproxy"},
		{"backend password", c.Backends.Password, "proxypw"},
		{"downcase", c.Address.Downcase, false},
		{"unixhierarchysep", c.Address.UnixHierarchySep, false},
		{"virtdomains", c.Address.VirtDomains, "userid"},
		{"defaultdomain", c.Address.DefaultDomain, "example.org"},
		{"postuser", c.Address.PostUser, "bb"},
		{"overquota", c.Address.OverQuotaPermFailure, true},
		{"maxmessagesize", c.LMTP.MaxMessageSize, int64(1048576)},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
	// The only warning: the master's password would cross the network in
	// clear (no /tls on mupdate_server).
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "in clear text") {
		t.Errorf("warnings %v, want the clear-text one", c.Warnings)
	}
}

func TestYAMLOverridesImapdConf(t *testing.T) {
	dir := t.TempDir()
	im := writeFile(t, dir, "imapd.conf", "configdirectory: /var/lib/cyrus\nmupdate_server: m:1234/tls\nproxy_password: fromimapd\n")
	pw := writeFile(t, dir, "proxy.pw", "fromfile\n")
	p := writeFile(t, dir, "c.yaml", `imapd_conf: `+im+`
state_dir: `+dir+`
lookup:
  order: [master-mupdate, mailboxes-db]
  mailboxes_db: /srv/mailboxes.db
  master_mupdate: {authname: other, password: secret, query_timeout: 2s}
backends:
  password_file: `+pw+`
  addresses: {backend1: "10.1.0.11:2003"}
`)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Lookup.MailboxesDB.Path != "/srv/mailboxes.db" || c.Backends.Password != "fromfile" ||
		c.Lookup.Master.Address != "m:1234" || c.Lookup.Master.TLS != "starttls" ||
		c.Lookup.Master.AuthName != "other" || c.Lookup.Master.Password != "secret" ||
		c.Lookup.Master.QueryTimeout != 2*time.Second || c.Backends.Addresses["backend1"] != "10.1.0.11:2003" {
		t.Fatalf("unexpected config: %+v", c)
	}
}

func TestModeStateFileOverridesAndOrder(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", "state_dir: "+dir+"\nlookup:\n  order: [master-mupdate, mailboxes-db]\n  mailboxes_db: /x\n  master_mupdate: {address: 'm:3905'}\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != ModeMaster || strings.Join(c.Order(), ",") != "master-mupdate,mailboxes-db" {
		t.Fatalf("mode %s order %v", c.Mode, c.Order())
	}
	writeFile(t, dir, "mode", "no-master\n")
	c, err = Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != ModeNoMaster || c.ModeFrom != filepath.Join(dir, "mode") || strings.Join(c.Order(), ",") != "mailboxes-db" {
		t.Fatalf("mode %s from %s order %v", c.Mode, c.ModeFrom, c.Order())
	}
	// A damaged mode file never stops the daemon: the configuration's
	// mode is used and the problem is reported.
	writeFile(t, dir, "mode", "sideways\n")
	c, err = Load(p)
	if err != nil {
		t.Fatalf("a damaged mode file made the configuration unloadable: %v", err)
	}
	if c.Mode != ModeMaster || c.ModeFrom != "config" || !strings.Contains(c.ModeProblem, "sideways") {
		t.Fatalf("damaged mode file: mode %s from %s, problem %q", c.Mode, c.ModeFrom, c.ModeProblem)
	}
}

// A mode file that names a mode the configuration cannot run in (no-master
// with only master-mupdate) is ignored with a reason, so that a restart
// (an upgrade restarts the service) still comes up.
func TestModeFileThatLeavesNoSourceIsIgnored(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", "state_dir: "+dir+"\nlookup:\n  order: [master-mupdate]\n  master_mupdate: {address: 'm:3905'}\n")
	if err := WriteModeFile(dir, ModeNoMaster); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Mode != ModeMaster || !strings.Contains(c.ModeProblem, "leaves no lookup source") {
		t.Fatalf("mode %s, problem %q", c.Mode, c.ModeProblem)
	}
	if err := ClearModeFile(dir); err != nil {
		t.Fatal(err)
	}
	if c, err := Load(p); err != nil || c.ModeProblem != "" || c.ModeFrom != "config" {
		t.Fatalf("after clear: %+v, %v", c, err)
	}
}

func TestMissingBackendPasswordWarns(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", "state_dir: "+dir+"\nlookup: {order: [mailboxes-db], mailboxes_db: /x}\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Problems) != 1 || c.Problems[0].Key != "backends.password" {
		t.Fatalf("problems = %v", c.Problems)
	}
}

func TestImapdConfSyntaxError(t *testing.T) {
	_, err := ParseImapdConf("imapd.conf", []byte("configdirectory: /x\nthis is not an option\n"))
	if err == nil || !strings.Contains(err.Error(), "imapd.conf:2") {
		t.Fatalf("err = %v", err)
	}
}

func TestLocateSurvivesABrokenFile(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", "control_socket: /srv/ctl.sock\nstate_dir: /srv/state\nbogus_key: 1\n")
	if _, err := Load(p); err == nil {
		t.Fatal("the broken file loads")
	}
	if sock, st := Locate(p); sock != "/srv/ctl.sock" || st != "/srv/state" {
		t.Fatalf("Locate = %q %q", sock, st)
	}
	if sock, st := Locate(filepath.Join(dir, "missing.yaml")); sock != DefaultControlSocket || st != DefaultStateDir {
		t.Fatalf("Locate(missing) = %q %q", sock, st)
	}
}

// A password file the unit passes with LoadCredential= is read from
// $CREDENTIALS_DIRECTORY; one that others can read is warned about.
func TestPasswordFiles(t *testing.T) {
	dir := t.TempDir()
	creds := t.TempDir()
	writeFile(t, creds, "proxy.pw", "fromcredential\n")
	pw := writeFile(t, dir, "proxy.pw", "fromfile\n")
	os.Chmod(pw, 0o644)
	p := writeFile(t, dir, "c.yaml", "state_dir: "+dir+"\nlookup: {order: [master-mupdate], master_mupdate: {address: '127.0.0.1:3905'}}\nbackends: {password_file: "+pw+"}\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Backends.Password != "fromfile" || len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "readable by every user") {
		t.Fatalf("password %q warnings %v", c.Backends.Password, c.Warnings)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	c, err = Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Backends.Password != "fromcredential" {
		t.Fatalf("password %q, want the credential's", c.Backends.Password)
	}
}

// A misspelt key is named by its dotted path, with the key it resembles.
func TestUnknownKeySuggestsTheKnownOne(t *testing.T) {
	_, err := Parse("c.yaml", []byte("lookup:\n  timout: 5s\n"))
	if err == nil || !strings.Contains(err.Error(), "lookup.timout") || !strings.Contains(err.Error(), "did you mean lookup.timeout?") || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("err = %v", err)
	}
}

// The budgets nest: a lookup must outlast a MUPDATE source's own timeouts,
// and a stop must fit in the unit's TimeoutStopSec=.
func TestBudgets(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "c.yaml", "state_dir: "+dir+"\nshutdown_timeout: 41s\nlookup: {order: [master-mupdate], master_mupdate: {address: 'm:3905'}}\n")
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "shutdown_timeout") {
		t.Errorf("shutdown_timeout 41s: err %v, want it to name shutdown_timeout", err)
	}
	// A lookup budget shorter than a MUPDATE source's own is allowed
	// (the source's breaker still opens at the caller's deadline), with
	// a warning: an existing configuration keeps loading.
	p = writeFile(t, dir, "c.yaml", "state_dir: "+dir+"\nlookup: {order: [master-mupdate, local-mupdate], timeout: 5s, local_mupdate: {address: '127.0.0.1:3905'}, master_mupdate: {address: 'm:3905'}}\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(c.Warnings, func(w string) bool { return strings.Contains(w, "lookup.timeout: 5s") }) {
		t.Errorf("lookup.timeout 5s against a 9s MUPDATE budget: warnings %q, want one naming lookup.timeout", c.Warnings)
	}
}

// An empty password file (the package ships them so) does not override
// the password in imapd.conf.
func TestEmptyPasswordFileDefersToImapdConf(t *testing.T) {
	dir := t.TempDir()
	imapd := writeFile(t, dir, "imapd.conf", "proxy_authname: proxy\nproxy_password: fromimapd\nmupdate_server: m\n")
	pw := writeFile(t, dir, "proxy.pw", "\n")
	if err := os.Chmod(pw, 0o600); err != nil {
		t.Fatal(err)
	}
	p := writeFile(t, dir, "c.yaml", "state_dir: "+dir+"\nimapd_conf: "+imapd+"\nbackends: {password_file: "+pw+"}\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Backends.Password != "fromimapd" {
		t.Errorf("password %q, want imapd.conf's %q", c.Backends.Password, "fromimapd")
	}
	if len(c.Warnings) != 0 || len(c.Problems) != 0 {
		t.Errorf("warnings %q, problems %v: want none", c.Warnings, c.Problems)
	}
	// Without a password in imapd.conf either, the problem names the key
	// and the file to fill in.
	imapd = writeFile(t, dir, "imapd.conf", "proxy_authname: proxy\nmupdate_server: m\n")
	if c, err = Load(p); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(c.Problems, func(p Problem) bool {
		return p.Key == "backends.password" && strings.Contains(p.Msg, "backends.password_file")
	}) {
		t.Errorf("problems %v, want backends.password naming backends.password_file", c.Problems)
	}
}
