package murderlab

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Fixed credentials of the lab. They are loopback-only test identities; the
// realm of every user is the servername of the instance it logs in to (Cyrus
// passes the servername as the SASL realm), so each user exists once per realm
// in the one shared sasldb.
const (
	adminUser    = "admin"
	adminPass    = "adminpw"
	proxyUser    = "proxy"
	proxyPass    = "proxypw"
	mupdateUser  = "mupdate"
	mupdatePass  = "mupdatepw"
	userPassword = "userpw"
)

// TestUsers are ordinary users created in the sasldb (password UserPassword).
// Their mailboxes are not created; use CreateMailbox.
var TestUsers = []string{"alice", "bob", "carol", "dave"}

// UserPassword is the password of every TestUsers entry.
const UserPassword = userPassword

// Ports. Backends get their own loopback address each so that the standard
// ports can be used: Cyrus's frontend connects to the host of a mailbox's
// server string on the port of the "lmtp" or "imap" service, so a ":port" in
// the servername would apply to every proxied protocol at once.
const (
	portMasterMupdate  = 3905
	portReplicaMupdate = 13905
	portFrontendIMAP   = 10143
	portCyrusProxyLMTP = 10024
	portBackendIMAP    = 143
	portBackendLMTP    = 2003
)

type role int

const (
	roleMaster role = iota
	roleBackend
	roleFrontend
)

// commonConf is shared by every instance. The per-instance sockets and lock
// path must live in the instance's own directory, or instances on one
// machine trample each other's sockets (Cyrus's defaults are under
// configdirectory for some, /var/run/cyrus for others).
func commonConf(dir, servername, sasldb string) string {
	var b strings.Builder
	kv := func(k, v string) { fmt.Fprintf(&b, "%s: %s\n", k, v) }
	kv("configdirectory", filepath.Join(dir, "conf"))
	kv("partition-default", filepath.Join(dir, "spool"))
	kv("servername", servername)
	kv("sasl_pwcheck_method", "auxprop")
	kv("sasl_auxprop_plugin", "sasldb")
	kv("sasl_sasldb_path", sasldb)
	kv("sasl_mech_list", "PLAIN LOGIN")
	kv("allowplaintext", "yes")
	kv("lmtpsocket", filepath.Join(dir, "run", "lmtp"))
	kv("idlesocket", filepath.Join(dir, "run", "idle"))
	kv("notifysocket", filepath.Join(dir, "run", "notify"))
	kv("mboxname_lockpath", filepath.Join(dir, "run", "lock"))
	kv("proc_path", filepath.Join(dir, "run", "proc"))
	kv("sievedir", filepath.Join(dir, "sieve"))
	// Syslog lines then say which instance logged them ("backend2/lmtp"
	// instead of "cyrus/lmtp"): the backends run the same services, and
	// even generate the same mailbox uniqueids.
	kv("syslog_prefix", filepath.Base(dir))
	// Cyrus 3 defaults, spelled out because every name in the lab's API
	// depends on them: external names use "/" ("user/alice/Sub") and the
	// alternate namespace.
	kv("unixhierarchysep", "yes")
	kv("altnamespace", "yes")
	return b.String()
}

// imapdConf renders the imapd.conf of one instance, with the settings of
// murder-lab practice: backends are made backends by proxyservers, push their
// list to the master via ctl_mboxlist -m and accept the frontend's LMTP AUTH
// identity as an lmtp admin; the frontend has the proxy credentials and the
// serverlist and never proxyservers.
func imapdConf(r role, dir, servername, sasldb, masterAddr string, serverlist []string) string {
	var b strings.Builder
	b.WriteString(commonConf(dir, servername, sasldb))
	kv := func(k, v string) { fmt.Fprintf(&b, "%s: %s\n", k, v) }
	mupdateClient := func() {
		// mupdate_port is ignored by the 3.6 client code: the port goes
		// into mupdate_server. mupdate_authname is the SASL login; an
		// empty mupdate_username means no authorization id.
		kv("mupdate_server", masterAddr)
		kv("mupdate_authname", mupdateUser)
		kv("mupdate_password", mupdatePass)
		// The replica pings the master this often; a short delay makes
		// it notice an outage (and reconnect after one) quickly.
		kv("mupdate_retry_delay", "2")
	}
	switch r {
	case roleMaster:
		// The MUPDATE server lets only admins authenticate.
		kv("admins", adminUser+" "+mupdateUser)
	case roleBackend:
		kv("admins", adminUser)
		kv("proxyservers", proxyUser)
		kv("lmtp_admins", proxyUser+" "+adminUser)
		// XFER (moving a mailbox to another backend) logs in to the
		// destination backend's IMAP as proxy_authname, which must be an
		// admin there; moving a user's mailboxes needs allowusermoves.
		kv("proxy_authname", adminUser)
		kv("proxy_password", adminPass)
		kv("allowusermoves", "yes")
		mupdateClient()
	case roleFrontend:
		// The replica, like the master, accepts only admins; mupdate is
		// an admin here so one identity serves for both MUPDATE sources.
		kv("admins", adminUser+" "+mupdateUser)
		kv("proxy_authname", proxyUser)
		kv("proxy_password", proxyPass)
		kv("serverlist", strings.Join(serverlist, " "))
		mupdateClient()
	}
	return b.String()
}

// cyrusConf renders cyrus.conf. Cyrus 3 has no separate proxyd/lmtpproxyd:
// imapd and lmtpd act as proxies when mupdate_server is set and proxyservers
// is not. Every cmd carries -C explicitly so that no
// service ever falls back to /etc/imapd.conf.
func cyrusConf(r role, ip, conf string, cyrusProxy bool) string {
	var b strings.Builder
	c := " -C " + conf
	b.WriteString("START {\n")
	if r == roleBackend {
		// Push this backend's mailbox list to the master. If the master is
		// down this fails and Cyrus master exits: start the master first.
		fmt.Fprintf(&b, "  mupdatepush cmd=\"ctl_mboxlist -m%s\"\n", c)
	}
	b.WriteString("}\nSERVICES {\n")
	switch r {
	case roleMaster:
		fmt.Fprintf(&b, "  mupdate cmd=\"mupdate -m%s\" listen=\"%s:%d\" prefork=1\n", c, ip, portMasterMupdate)
	case roleBackend:
		fmt.Fprintf(&b, "  imap cmd=\"imapd%s\" listen=\"%s:%d\" prefork=0\n", c, ip, portBackendIMAP)
		// No -a: TCP clients must AUTH as an lmtp admin, as in production.
		fmt.Fprintf(&b, "  lmtp cmd=\"lmtpd%s\" listen=\"%s:%d\" prefork=1\n", c, ip, portBackendLMTP)
	case roleFrontend:
		fmt.Fprintf(&b, "  mupdate cmd=\"mupdate%s\" listen=\"%s:%d\" prefork=1\n", c, ip, portReplicaMupdate)
		fmt.Fprintf(&b, "  imap cmd=\"imapd%s\" listen=\"%s:%d\" prefork=0\n", c, ip, portFrontendIMAP)
		if cyrusProxy {
			// -a: the MTA side needs no AUTH, as Cyrus's LMTP proxy is
			// usually deployed.
			fmt.Fprintf(&b, "  lmtp cmd=\"lmtpd -a%s\" listen=\"%s:%d\" prefork=1\n", c, ip, portCyrusProxyLMTP)
		}
	}
	b.WriteString("}\nEVENTS {\n}\n")
	return b.String()
}
