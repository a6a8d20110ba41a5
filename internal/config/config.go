// Package config loads lmtpgate's YAML configuration, fills what it leaves
// unset from the frontend's Cyrus imapd.conf, validates the result and hands
// out an immutable snapshot. A reload builds a new snapshot; the daemon swaps
// it in only if Load succeeded, so a broken file never replaces a good one.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Defaults for where things live; the packages and units use the same.
const (
	DefaultPath          = "/etc/lmtpgate/lmtpgate.yaml"
	DefaultStateDir      = "/var/lib/lmtpgate"
	DefaultControlSocket = "/run/lmtpgate/control.sock"
)

// Locate returns control_socket and state_dir from the file at path even
// when the file as a whole does not load (an unknown key, a bad value, a
// damaged mode file): that is exactly when `lmtpgate reload` must still
// reach the running daemon to report the error, and when `lmtpgate mode`
// must still be able to rewrite the mode file.
func Locate(path string) (controlSocket, stateDir string) {
	var r struct {
		ControlSocket *string `yaml:"control_socket"`
		StateDir      *string `yaml:"state_dir"`
	}
	controlSocket, stateDir = DefaultControlSocket, DefaultStateDir
	data, err := os.ReadFile(path)
	if err != nil || yaml.Unmarshal(data, &r) != nil {
		return
	}
	if r.ControlSocket != nil {
		controlSocket = *r.ControlSocket
	}
	if r.StateDir != nil {
		stateDir = *r.StateDir
	}
	return
}

// Lookup source names, as used in lookup.order.
const (
	SourceMailboxesDB   = "mailboxes-db"
	SourceLocalMupdate  = "local-mupdate"
	SourceMasterMupdate = "master-mupdate"
)

// Mode is master or no-master.
type Mode string

const (
	ModeMaster   Mode = "master"
	ModeNoMaster Mode = "no-master"
)

// ParseMode parses "master" or "no-master".
func ParseMode(s string) (Mode, error) {
	switch Mode(strings.TrimSpace(s)) {
	case ModeMaster:
		return ModeMaster, nil
	case ModeNoMaster:
		return ModeNoMaster, nil
	}
	return "", fmt.Errorf("%q is not a mode (want master or no-master)", s)
}

// Listen is one listening address.
type Listen struct {
	Network string // "tcp" or "unix"
	Address string
}

func (l Listen) String() string { return l.Network + ":" + l.Address }

// Mupdate is the resolved configuration of one MUPDATE server.
type Mupdate struct {
	Address      string
	AuthName     string
	AuthzID      string
	Password     string
	TLS          string // none, starttls, tls
	DialTimeout  time.Duration
	QueryTimeout time.Duration
	KeepAlive    time.Duration
	BackoffMin   time.Duration
	BackoffMax   time.Duration
}

// Config is an immutable, validated configuration snapshot.
type Config struct {
	Path            string
	Hostname        string
	Listen          []Listen
	ImapdConf       string
	Mode            Mode
	ModeFrom        string // "config" or the path of the state file that set it
	StateDir        string
	ControlSocket   string
	WatchConfig     bool
	ShutdownTimeout time.Duration

	Log struct {
		Level  slog.Level
		Format string // auto, journal, text, json
	}

	LMTP struct {
		MaxMessageSize   int64
		MaxRecipients    int
		ReadTimeout      time.Duration
		WriteTimeout     time.Duration
		SpoolDir         string
		SpoolMemoryLimit int64
	}

	Address struct {
		DowncaseRcpt         bool
		UnixHierarchySep     bool
		VirtDomains          string
		DefaultDomain        string
		PostUser             string
		OverQuotaPermFailure bool
		// DeletedPrefix is imapd.conf's deletedprefix: Cyrus renames a
		// deleted mailbox to <prefix>.<name>.<hex> (delayed delete), and
		// such a copy never takes mail. Not a YAML key: it is Cyrus's.
		DeletedPrefix string
	}

	Lookup struct {
		Order             []string // as configured
		Timeout           time.Duration
		MailboxesDB       string
		MailboxesDBFormat string
		ReplicaSocket     string
		PollInterval      time.Duration
		ForcePolling      bool
		Cache             struct {
			PositiveTTL time.Duration
			NegativeTTL time.Duration
			MaxEntries  int
		}
		Local  Mupdate
		Master Mupdate
	}

	Backends struct {
		Port           int
		Addresses      map[string]string
		AuthName       string
		Password       string
		TLSCAFile      string
		TLSSkipVerify  bool
		ConnectTimeout time.Duration
		CommandTimeout time.Duration
		TxnTimeout     time.Duration
		IdleTimeout    time.Duration
		MaxIdle        int
	}

	// Warnings are problems that do not stop the daemon but that an
	// operator should hear about (printed by `lmtpgate check`, logged at
	// start and reload).
	Warnings []string
}

// Order returns the lookup sources in effect: lookup.order without
// master-mupdate in no-master mode.
func (c *Config) Order() []string {
	if c.Mode != ModeNoMaster {
		return c.Lookup.Order
	}
	out := make([]string, 0, len(c.Lookup.Order))
	for _, s := range c.Lookup.Order {
		if s != SourceMasterMupdate {
			out = append(out, s)
		}
	}
	return out
}

// ModeFile is the path of the `lmtpgate mode` override file.
func (c *Config) ModeFile() string { return filepath.Join(c.StateDir, "mode") }

// Error is a configuration error that names the key at fault.
type Error struct {
	File string
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	if e.Key == "" {
		return e.File + ": " + e.Msg
	}
	return e.File + ": " + e.Key + ": " + e.Msg
}

// Load reads, completes and validates the configuration at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse is Load on bytes already read. Relative paths inside the file are
// taken as they are (relative to the daemon's working directory).
func Parse(path string, data []byte) (*Config, error) {
	var r raw
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&r); err != nil && !errors.Is(err, io.EOF) {
		return nil, &Error{File: path, Msg: cleanYAMLError(err)}
	}
	b := builder{path: path, c: &Config{Path: path}}
	b.build(&r)
	if len(b.errs) > 0 {
		return nil, b.errs[0]
	}
	return b.c, nil
}

// cleanYAMLError turns yaml.v3's "yaml: unmarshal errors:\n  line 3: field
// foo not found in type config.raw" into something an operator can act on.
func cleanYAMLError(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "yaml: unmarshal errors:\n")
	s = strings.ReplaceAll(s, "\n ", ";")
	for _, t := range []string{"config.raw", "config.rawLog", "config.rawLMTP", "config.rawAddress", "config.rawLookup", "config.rawCache", "config.rawMupdate", "config.rawBackends"} {
		s = strings.ReplaceAll(s, " in type "+t, "")
	}
	s = strings.ReplaceAll(s, "field ", "unknown key ")
	s = strings.ReplaceAll(s, " not found", "")
	return strings.TrimSpace(s)
}

// Duration is a YAML duration ("30s", "5m"). A value that does not parse
// is kept as an error and reported by the builder, which knows the key's
// full name: "shutdown_timeout: \"soon\" is not a duration".
type Duration struct {
	D   time.Duration
	bad string
}

// UnmarshalYAML parses a Go duration string; a bare integer means seconds,
// as in Cyrus's configuration.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		d.D = time.Duration(v) * time.Second
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		d.bad = s
		return nil
	}
	d.D = v
	return nil
}

type raw struct {
	Hostname        *string     `yaml:"hostname"`
	Listen          []string    `yaml:"listen"`
	ImapdConf       *string     `yaml:"imapd_conf"`
	Mode            *string     `yaml:"mode"`
	StateDir        *string     `yaml:"state_dir"`
	ControlSocket   *string     `yaml:"control_socket"`
	WatchConfig     *bool       `yaml:"watch_config"`
	ShutdownTimeout *Duration   `yaml:"shutdown_timeout"`
	Log             rawLog      `yaml:"log"`
	LMTP            rawLMTP     `yaml:"lmtp"`
	Address         rawAddress  `yaml:"address"`
	Lookup          rawLookup   `yaml:"lookup"`
	Backends        rawBackends `yaml:"backends"`
}

type rawLog struct {
	Level  *string `yaml:"level"`
	Format *string `yaml:"format"`
}

type rawLMTP struct {
	MaxMessageSize   *int64    `yaml:"max_message_size"`
	MaxRecipients    *int      `yaml:"max_recipients"`
	ReadTimeout      *Duration `yaml:"read_timeout"`
	WriteTimeout     *Duration `yaml:"write_timeout"`
	SpoolDir         *string   `yaml:"spool_dir"`
	SpoolMemoryLimit *int64    `yaml:"spool_memory_limit"`
}

type rawAddress struct {
	DowncaseRcpt         *bool   `yaml:"downcase_rcpt"`
	UnixHierarchySep     *bool   `yaml:"unixhierarchysep"`
	VirtDomains          *string `yaml:"virtdomains"`
	DefaultDomain        *string `yaml:"defaultdomain"`
	PostUser             *string `yaml:"postuser"`
	OverQuotaPermFailure *bool   `yaml:"over_quota_perm_failure"`
}

type rawCache struct {
	PositiveTTL *Duration `yaml:"positive_ttl"`
	NegativeTTL *Duration `yaml:"negative_ttl"`
	MaxEntries  *int      `yaml:"max_entries"`
}

type rawMupdate struct {
	Address      *string   `yaml:"address"`
	AuthName     *string   `yaml:"authname"`
	AuthzID      *string   `yaml:"authzid"`
	Password     *string   `yaml:"password"`
	PasswordFile *string   `yaml:"password_file"`
	TLS          *string   `yaml:"tls"`
	DialTimeout  *Duration `yaml:"dial_timeout"`
	QueryTimeout *Duration `yaml:"query_timeout"`
	KeepAlive    *Duration `yaml:"keepalive"`
	BackoffMin   *Duration `yaml:"backoff_min"`
	BackoffMax   *Duration `yaml:"backoff_max"`
}

type rawLookup struct {
	Order             []string   `yaml:"order"`
	Timeout           *Duration  `yaml:"timeout"`
	MailboxesDB       *string    `yaml:"mailboxes_db"`
	MailboxesDBFormat *string    `yaml:"mailboxes_db_format"`
	ReplicaSocket     *string    `yaml:"replica_socket"`
	PollInterval      *Duration  `yaml:"poll_interval"`
	ForcePolling      *bool      `yaml:"force_polling"`
	Cache             rawCache   `yaml:"cache"`
	LocalMupdate      rawMupdate `yaml:"local_mupdate"`
	MasterMupdate     rawMupdate `yaml:"master_mupdate"`
}

type rawBackends struct {
	Port           *int              `yaml:"port"`
	Addresses      map[string]string `yaml:"addresses"`
	AuthName       *string           `yaml:"authname"`
	Password       *string           `yaml:"password"`
	PasswordFile   *string           `yaml:"password_file"`
	TLSCAFile      *string           `yaml:"tls_ca_file"`
	TLSSkipVerify  *bool             `yaml:"tls_skip_verify"`
	ConnectTimeout *Duration         `yaml:"connect_timeout"`
	CommandTimeout *Duration         `yaml:"command_timeout"`
	TxnTimeout     *Duration         `yaml:"txn_timeout"`
	IdleTimeout    *Duration         `yaml:"idle_timeout"`
	MaxIdle        *int              `yaml:"max_idle"`
}

type builder struct {
	path string
	c    *Config
	im   *ImapdConf
	errs []error
}

func (b *builder) fail(key, format string, args ...any) {
	b.errs = append(b.errs, &Error{File: b.path, Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (b *builder) warn(format string, args ...any) {
	b.c.Warnings = append(b.c.Warnings, fmt.Sprintf(format, args...))
}

// str picks the YAML value, else the imapd.conf option, else def.
func (b *builder) str(v *string, imapdKey, def string) string {
	if v != nil {
		return *v
	}
	if imapdKey != "" {
		if s, ok := b.im.String(imapdKey); ok {
			return s
		}
	}
	return def
}

func (b *builder) boolean(key string, v *bool, imapdKey string, def bool) bool {
	if v != nil {
		return *v
	}
	if imapdKey != "" {
		val, set, err := b.im.Bool(imapdKey)
		if err != nil {
			b.fail(key, "%v", err)
			return def
		}
		if set {
			return val
		}
	}
	return def
}

func (b *builder) dur(key string, v *Duration, def time.Duration) time.Duration {
	if v == nil {
		return def
	}
	if v.bad != "" {
		b.fail(key, "%q is not a duration (e.g. 30s, 5m)", v.bad)
		return def
	}
	if v.D < 0 {
		b.fail(key, "must not be negative")
		return def
	}
	return v.D
}

func (b *builder) secret(key string, pw, file *string, imapdKey string) string {
	if pw != nil && file != nil && *pw != "" && *file != "" {
		b.fail(key, "set password or password_file, not both")
	}
	if file != nil && *file != "" {
		data, err := os.ReadFile(*file)
		if err != nil {
			b.fail(strings.TrimSuffix(key, "password")+"password_file", "%v", err)
			return ""
		}
		// A password file holds one line; a trailing newline from an
		// editor is not part of the password.
		return strings.TrimRight(string(data), "\r\n")
	}
	return b.str(pw, imapdKey, "")
}

func (b *builder) build(r *raw) {
	c := b.c
	// imapd.conf first: everything else may fall back to it.
	c.ImapdConf = b.str(r.ImapdConf, "", "")
	if c.ImapdConf != "" {
		im, err := LoadImapdConf(c.ImapdConf)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// The packaged file names /etc/imapd.conf; on a host without
			// Cyrus the operator needs to know the way out, not just ENOENT.
			b.fail("imapd_conf", "%v (no Cyrus on this host? set imapd_conf: \"\" and give lookup.order, lookup.master_mupdate and backends in this file; see HOSTS WITHOUT CYRUS in lmtpgate.yaml(5))", err)
		case err != nil:
			b.fail("imapd_conf", "%v", err)
		}
		b.im = im
	}

	host, _ := os.Hostname()
	c.Hostname = b.str(r.Hostname, "servername", host)
	if c.Hostname == "" {
		c.Hostname = "localhost"
	}
	if strings.ContainsAny(c.Hostname, " \t\r\n") {
		b.fail("hostname", "%q contains white space", c.Hostname)
	}

	listen := r.Listen
	if listen == nil {
		listen = []string{"unix:/run/lmtpgate/lmtp.sock"}
	}
	for i, l := range listen {
		key := fmt.Sprintf("listen[%d]", i)
		network, addr, ok := strings.Cut(l, ":")
		switch {
		case !ok || addr == "":
			b.fail(key, "%q: want tcp:HOST:PORT or unix:/path", l)
		case network == "unix":
			if !filepath.IsAbs(addr) {
				b.fail(key, "%q: unix socket path must be absolute", l)
			}
		case network == "tcp" || network == "tcp4" || network == "tcp6":
			if _, _, err := net.SplitHostPort(addr); err != nil {
				b.fail(key, "%q: %v", l, err)
			}
		default:
			b.fail(key, "%q: unknown network %q (want tcp or unix)", l, network)
		}
		c.Listen = append(c.Listen, Listen{Network: network, Address: addr})
	}

	modeStr := b.str(r.Mode, "", string(ModeMaster))
	m, err := ParseMode(modeStr)
	if err != nil {
		b.fail("mode", "%v", err)
	}
	c.Mode, c.ModeFrom = m, "config"
	c.StateDir = b.str(r.StateDir, "", DefaultStateDir)
	if data, err := os.ReadFile(filepath.Join(c.StateDir, "mode")); err == nil {
		m, err := ParseMode(string(data))
		if err != nil {
			b.fail("state_dir", "%s: %v", filepath.Join(c.StateDir, "mode"), err)
		} else {
			c.Mode, c.ModeFrom = m, filepath.Join(c.StateDir, "mode")
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		b.fail("state_dir", "%v", err)
	}
	c.ControlSocket = b.str(r.ControlSocket, "", DefaultControlSocket)
	c.WatchConfig = b.boolean("watch_config", r.WatchConfig, "", false)
	c.ShutdownTimeout = b.dur("shutdown_timeout", r.ShutdownTimeout, 30*time.Second)

	lvl := b.str(r.Log.Level, "", "info")
	if err := c.Log.Level.UnmarshalText([]byte(lvl)); err != nil {
		b.fail("log.level", "%q: want debug, info, warn or error", lvl)
	}
	c.Log.Format = b.str(r.Log.Format, "", "auto")
	if !slices.Contains([]string{"auto", "journal", "text", "json"}, c.Log.Format) {
		b.fail("log.format", "%q: want auto, journal, text or json", c.Log.Format)
	}

	b.buildLMTP(&r.LMTP)
	b.buildAddress(&r.Address)
	b.buildLookup(&r.Lookup)
	b.buildBackends(&r.Backends)
}

func (b *builder) buildLMTP(r *rawLMTP) {
	c := b.c
	if r.MaxMessageSize != nil {
		c.LMTP.MaxMessageSize = *r.MaxMessageSize
	} else if v, set, err := b.im.Int("maxmessagesize"); err != nil {
		b.fail("lmtp.max_message_size", "%v", err)
	} else if set {
		c.LMTP.MaxMessageSize = v
	}
	if c.LMTP.MaxMessageSize < 0 {
		b.fail("lmtp.max_message_size", "must not be negative")
	}
	c.LMTP.MaxRecipients = 1000
	if r.MaxRecipients != nil {
		c.LMTP.MaxRecipients = *r.MaxRecipients
	}
	if c.LMTP.MaxRecipients < 1 {
		b.fail("lmtp.max_recipients", "must be at least 1")
	}
	c.LMTP.ReadTimeout = b.dur("lmtp.read_timeout", r.ReadTimeout, 6*time.Minute)
	c.LMTP.WriteTimeout = b.dur("lmtp.write_timeout", r.WriteTimeout, time.Minute)
	c.LMTP.SpoolDir = b.str(r.SpoolDir, "", "")
	c.LMTP.SpoolMemoryLimit = 1 << 20
	if r.SpoolMemoryLimit != nil {
		c.LMTP.SpoolMemoryLimit = *r.SpoolMemoryLimit
	}
	if c.LMTP.SpoolMemoryLimit < 0 {
		b.fail("lmtp.spool_memory_limit", "must not be negative")
	}
}

func (b *builder) buildAddress(r *rawAddress) {
	a := &b.c.Address
	a.DowncaseRcpt = b.boolean("address.downcase_rcpt", r.DowncaseRcpt, "lmtp_downcase_rcpt", true)
	a.UnixHierarchySep = b.boolean("address.unixhierarchysep", r.UnixHierarchySep, "unixhierarchysep", true)
	a.VirtDomains = strings.ToLower(b.str(r.VirtDomains, "virtdomains", "off"))
	// Cyrus accepts the usual boolean spellings for virtdomains too:
	// "yes"/"on" mean "userid", "no"/"off" mean "off" (lib/imapoptions).
	switch a.VirtDomains {
	case "off", "no", "0", "false":
		a.VirtDomains = "off"
	case "userid", "yes", "1", "true":
		a.VirtDomains = "userid"
	case "on":
	default:
		b.fail("address.virtdomains", "%q: want off, userid or on", a.VirtDomains)
	}
	a.DefaultDomain = strings.ToLower(b.str(r.DefaultDomain, "defaultdomain", "internal"))
	a.PostUser = b.str(r.PostUser, "postuser", "")
	a.OverQuotaPermFailure = b.boolean("address.over_quota_perm_failure", r.OverQuotaPermFailure, "lmtp_over_quota_perm_failure", false)
	a.DeletedPrefix = b.str(nil, "deletedprefix", "DELETED")
}

func (b *builder) buildLookup(r *rawLookup) {
	l := &b.c.Lookup
	l.Order = r.Order
	if l.Order == nil {
		l.Order = []string{SourceMasterMupdate}
	}
	if len(l.Order) == 0 {
		b.fail("lookup.order", "must name at least one source")
	}
	for i, s := range l.Order {
		if !slices.Contains([]string{SourceMailboxesDB, SourceLocalMupdate, SourceMasterMupdate}, s) {
			b.fail(fmt.Sprintf("lookup.order[%d]", i), "unknown source %q (want mailboxes-db, local-mupdate or master-mupdate)", s)
		}
		if slices.Index(l.Order, s) != i {
			b.fail(fmt.Sprintf("lookup.order[%d]", i), "source %q listed twice", s)
		}
	}
	l.Timeout = b.dur("lookup.timeout", r.Timeout, 5*time.Second)
	if l.Timeout == 0 {
		b.fail("lookup.timeout", "must be positive")
	}

	l.MailboxesDB = b.str(r.MailboxesDB, "mboxlist_db_path", "")
	if l.MailboxesDB == "" {
		if dir, ok := b.im.String("configdirectory"); ok && dir != "" {
			l.MailboxesDB = filepath.Join(dir, "mailboxes.db")
		}
	}
	// Cyrus's lmtpd pokes the local mupdate replica through this socket
	// before it declares a mailbox unknown (cyrus-interop §10.7).
	l.ReplicaSocket = b.str(r.ReplicaSocket, "", "")
	if r.ReplicaSocket == nil {
		if dir, ok := b.im.String("configdirectory"); ok && dir != "" {
			l.ReplicaSocket = filepath.Join(dir, "socket", "mupdate.target")
		}
	}
	l.MailboxesDBFormat = b.str(r.MailboxesDBFormat, "", "auto")
	if !slices.Contains([]string{"auto", "twoskip", "skiplist", "flat"}, l.MailboxesDBFormat) {
		b.fail("lookup.mailboxes_db_format", "%q: want auto, twoskip, skiplist or flat", l.MailboxesDBFormat)
	}
	if slices.Contains(l.Order, SourceMailboxesDB) && l.MailboxesDB == "" {
		b.fail("lookup.mailboxes_db", "required when mailboxes-db is in lookup.order (or set imapd_conf to an imapd.conf with configdirectory)")
	}
	l.PollInterval = b.dur("lookup.poll_interval", r.PollInterval, time.Second)
	if l.PollInterval == 0 {
		b.fail("lookup.poll_interval", "must be positive")
	}
	l.ForcePolling = b.boolean("lookup.force_polling", r.ForcePolling, "", false)
	l.Cache.PositiveTTL = b.dur("lookup.cache.positive_ttl", r.Cache.PositiveTTL, 30*time.Second)
	l.Cache.NegativeTTL = b.dur("lookup.cache.negative_ttl", r.Cache.NegativeTTL, 5*time.Second)
	l.Cache.MaxEntries = 100000
	if r.Cache.MaxEntries != nil {
		l.Cache.MaxEntries = *r.Cache.MaxEntries
	}
	if l.Cache.MaxEntries < 0 {
		b.fail("lookup.cache.max_entries", "must not be negative")
	}

	// The master's settings come from imapd.conf's mupdate_* options, as
	// Cyrus's own frontend services use them.
	l.Master = b.mupdate("lookup.master_mupdate", &r.MasterMupdate, Mupdate{
		Address:  b.str(nil, "mupdate_server", ""),
		AuthName: b.str(nil, "mupdate_authname", ""),
		AuthzID:  b.str(nil, "mupdate_username", ""),
		Password: b.str(nil, "mupdate_password", ""),
	})
	// The local replica accepts only imapd.conf admins; the master's
	// identity is usually one, so it is the default.
	l.Local = b.mupdate("lookup.local_mupdate", &r.LocalMupdate, Mupdate{
		Address:  "127.0.0.1:3905",
		AuthName: l.Master.AuthName,
		AuthzID:  l.Master.AuthzID,
		Password: l.Master.Password,
	})
	if slices.Contains(l.Order, SourceMasterMupdate) && l.Master.Address == "" {
		b.fail("lookup.master_mupdate.address", "required when master-mupdate is in lookup.order (or set mupdate_server in imapd.conf)")
	}
	if len(b.c.Order()) == 0 && len(l.Order) > 0 {
		b.fail("mode", "no-master mode leaves no lookup source: add mailboxes-db or local-mupdate to lookup.order")
	}
}

// mupdate resolves one MUPDATE server block; def carries the imapd.conf
// fallbacks. A Cyrus mupdate_server may be "host", "host:port" or carry
// "/tls" or "/noauth" suffixes.
func (b *builder) mupdate(key string, r *rawMupdate, def Mupdate) Mupdate {
	m := Mupdate{}
	addr := b.str(r.Address, "", def.Address)
	tlsMode := "none"
	if i := strings.IndexByte(addr, '/'); i >= 0 {
		for _, flag := range strings.Split(addr[i+1:], "/") {
			switch flag {
			case "tls":
				tlsMode = "starttls"
			case "noauth":
			default:
				b.fail(key+".address", "%q: unknown flag /%s", addr, flag)
			}
		}
		addr = addr[:i]
	}
	if addr != "" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			// Cyrus's default MUPDATE port when the server string has none.
			addr = net.JoinHostPort(strings.Trim(addr, "[]"), "3905")
		}
	}
	m.Address = addr
	m.AuthName = b.str(r.AuthName, "", def.AuthName)
	m.AuthzID = b.str(r.AuthzID, "", def.AuthzID)
	m.Password = b.secret(key+".password", r.Password, r.PasswordFile, "")
	if r.Password == nil && (r.PasswordFile == nil || *r.PasswordFile == "") {
		m.Password = def.Password
	}
	m.TLS = b.str(r.TLS, "", tlsMode)
	if !slices.Contains([]string{"none", "starttls", "tls"}, m.TLS) {
		b.fail(key+".tls", "%q: want none, starttls or tls", m.TLS)
	}
	m.DialTimeout = b.dur(key+".dial_timeout", r.DialTimeout, 5*time.Second)
	m.QueryTimeout = b.dur(key+".query_timeout", r.QueryTimeout, 5*time.Second)
	m.KeepAlive = b.dur(key+".keepalive", r.KeepAlive, 60*time.Second)
	m.BackoffMin = b.dur(key+".backoff_min", r.BackoffMin, time.Second)
	m.BackoffMax = b.dur(key+".backoff_max", r.BackoffMax, 30*time.Second)
	if m.BackoffMax < m.BackoffMin {
		b.fail(key+".backoff_max", "must not be less than backoff_min")
	}
	return m
}

func (b *builder) buildBackends(r *rawBackends) {
	be := &b.c.Backends
	be.Port = 2003
	if r.Port != nil {
		be.Port = *r.Port
	}
	if be.Port < 1 || be.Port > 65535 {
		b.fail("backends.port", "%d is not a port", be.Port)
	}
	be.Addresses = map[string]string{}
	for name, a := range r.Addresses {
		if _, _, err := net.SplitHostPort(a); err != nil && !filepath.IsAbs(a) {
			b.fail("backends.addresses."+name, "%q: want host:port or an absolute unix socket path", a)
		}
		be.Addresses[name] = a
	}
	be.AuthName = b.str(r.AuthName, "proxy_authname", "proxy")
	be.Password = b.secret("backends.password", r.Password, r.PasswordFile, "proxy_password")
	if be.AuthName != "" && be.Password == "" {
		b.warn("backends.password is empty: backends that require AUTH (Cyrus lmtpd over TCP) will refuse deliveries; set backends.password_file or proxy_password in imapd.conf")
	}
	be.TLSCAFile = b.str(r.TLSCAFile, "", "")
	be.TLSSkipVerify = b.boolean("backends.tls_skip_verify", r.TLSSkipVerify, "", false)
	be.ConnectTimeout = b.dur("backends.connect_timeout", r.ConnectTimeout, 10*time.Second)
	be.CommandTimeout = b.dur("backends.command_timeout", r.CommandTimeout, time.Minute)
	be.TxnTimeout = b.dur("backends.txn_timeout", r.TxnTimeout, 5*time.Minute)
	be.IdleTimeout = b.dur("backends.idle_timeout", r.IdleTimeout, 5*time.Minute)
	// As many as an MTA typically runs LMTP connections at once (Postfix's
	// default_destination_concurrency_limit): fewer means re-dialling and
	// re-authenticating under load.
	be.MaxIdle = 20
	if r.MaxIdle != nil {
		be.MaxIdle = *r.MaxIdle
	}
	if be.MaxIdle < 0 {
		b.fail("backends.max_idle", "must not be negative")
	}
	for _, k := range []struct {
		key string
		d   time.Duration
	}{{"backends.connect_timeout", be.ConnectTimeout}, {"backends.command_timeout", be.CommandTimeout}, {"backends.txn_timeout", be.TxnTimeout}} {
		if k.d == 0 {
			b.fail(k.key, "must be positive")
		}
	}
}
