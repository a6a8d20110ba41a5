// Package config loads lmtpgate's YAML configuration, fills what it leaves
// unset from the frontend's Cyrus imapd.conf, validates the result and hands
// out an immutable snapshot. A reload builds a new snapshot; the daemon swaps
// it in only if Load succeeded, so a broken file never replaces a good one.
//
// Each setting is defined once: the packages that use a group of settings
// own its type and its defaults (backend.Config and backend.DefaultConfig,
// mupdate.Config, mboxlist.Config, lookup.CacheConfig, front.Config,
// address.Settings), and Config holds those types. This package only maps
// the YAML keys onto them, applies the imapd.conf fallbacks and validates,
// naming the key at fault; no package re-defaults a zero.
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

	"github.com/lmtpgate/lmtpgate/internal/address"
	"github.com/lmtpgate/lmtpgate/internal/backend"
	"github.com/lmtpgate/lmtpgate/internal/cyrusdb"
	"github.com/lmtpgate/lmtpgate/internal/front"
	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/mboxlist"
	"github.com/lmtpgate/lmtpgate/internal/mupdate"
	"github.com/lmtpgate/lmtpgate/internal/replica"
)

// Defaults for where things live; the packages and units use the same.
const (
	DefaultPath          = "/etc/lmtpgate/lmtpgate.yaml"
	DefaultStateDir      = "/var/lib/lmtpgate"
	DefaultControlSocket = "/run/lmtpgate/control.sock"
	DefaultListen        = "unix:/run/lmtpgate/lmtp.sock"
)

// MaxShutdownTimeout is the largest shutdown_timeout accepted: the packaged
// unit's TimeoutStopSec= (45s) less the few seconds a stop needs around the
// drain. A longer one would have systemd kill the daemon mid-stop.
const MaxShutdownTimeout = 40 * time.Second

// Lookup source names, as used in lookup.order.
const (
	SourceMailboxesDB   = "mailboxes-db"
	SourceLocalMupdate  = "local-mupdate"
	SourceMasterMupdate = "master-mupdate"
	// SourceMasterReplica is lmtpgate's own replica of the master's
	// mailbox list, streamed from lookup.master_mupdate.
	SourceMasterReplica = replica.Name
)

// Sources lists the lookup source names in the order the docs give them.
var Sources = []string{SourceMailboxesDB, SourceLocalMupdate, SourceMasterMupdate, SourceMasterReplica}

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

// LogConfig holds the log.* keys.
type LogConfig struct {
	Level  slog.Level
	Format string // auto, journal, text, json
}

// AddressConfig holds the address.* keys: how Cyrus maps a recipient to a
// mailbox, and the reply policies that go with it.
type AddressConfig struct {
	address.Settings
	OverQuotaPermFailure bool
	// DeletedPrefix is imapd.conf's deletedprefix: Cyrus renames a
	// deleted mailbox to <prefix>.<name>.<hex> (delayed delete), and such
	// a copy never takes mail. Not a YAML key: it is Cyrus's.
	DeletedPrefix string
}

// LookupConfig holds the lookup.* keys.
type LookupConfig struct {
	Order []string // as configured; see Config.Order
	// Timeout is the time one source may take for one question before
	// the next source is asked.
	Timeout     time.Duration
	MailboxesDB mboxlist.Config
	Cache       lookup.CacheConfig
	Local       mupdate.Config
	Master      mupdate.Config
	// Replica is the master-replica source: its connection comes from
	// Master (address, credentials, TLS, dial and query timeouts,
	// backoff), the rest from lookup.master_replica.
	Replica replica.Config
}

// MetricsConfig holds the metrics.* keys.
type MetricsConfig struct {
	// Listen is the host:port of the Prometheus endpoint (/metrics); empty:
	// none.
	Listen string
}

// Problem is something that will surely fail: `lmtpgate check` fails on it
// and the daemon logs it at error, but it does not stop the daemon (which
// may still serve in part).
type Problem struct {
	Key string
	Msg string
}

func (p Problem) String() string { return p.Key + ": " + p.Msg }

// Config is an immutable, validated configuration snapshot.
type Config struct {
	Path      string
	Hostname  string
	Listen    []Listen
	ImapdConf string
	// Mode is the mode in force: ConfigMode, or the mode file's.
	Mode Mode
	// ModeFrom is "config" or the path of the mode file that set Mode.
	ModeFrom string
	// ConfigMode is the mode the YAML says.
	ConfigMode Mode
	// ModeProblem says why a mode file was ignored ("" if none was).
	ModeProblem     string
	StateDir        string
	ControlSocket   string
	WatchConfig     bool
	ShutdownTimeout time.Duration

	Log      LogConfig
	LMTP     front.Config
	Address  AddressConfig
	Lookup   LookupConfig
	Backends backend.Config
	Metrics  MetricsConfig

	// SecretFiles are the password files named, by key.
	SecretFiles map[string]string

	// Problems will surely fail; Warnings only might. Both are printed by
	// `lmtpgate check` and logged at start and reload.
	Problems []Problem
	Warnings []string
}

// Order returns the lookup sources in effect: lookup.order without
// master-mupdate in no-master mode.
func (c *Config) Order() []string { return c.orderFor(c.Mode) }

func (c *Config) orderFor(m Mode) []string {
	if m != ModeNoMaster {
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

// Locate returns control_socket and state_dir from the file at path even
// when the file as a whole does not load (an unknown key, a bad value):
// that is exactly when `lmtpgate reload` must still reach the running
// daemon to report the error, and when `lmtpgate mode` must still find the
// mode file.
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
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Error{File: path, Msg: cleanYAMLError(err)}
	}
	if err := checkKeys(path, &doc); err != nil {
		return nil, err
	}
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

// cleanYAMLError turns yaml.v3's "yaml: unmarshal errors:\n  line 3: cannot
// unmarshal !!seq into int" into one line.
func cleanYAMLError(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "yaml: unmarshal errors:\n")
	s = strings.TrimPrefix(s, "yaml: ")
	s = strings.ReplaceAll(s, "\n ", ";")
	return strings.TrimSpace(s)
}

// checkKeys refuses a key the parser does not know, by its dotted name and
// line, with the known key it most resembles.
func checkKeys(path string, doc *yaml.Node) error {
	known := map[string]bool{}
	for _, k := range Keys() {
		known[k] = true
	}
	var walk func(prefix string, n *yaml.Node) error
	walk = func(prefix string, n *yaml.Node) error {
		if n.Kind == yaml.DocumentNode {
			for _, c := range n.Content {
				if err := walk(prefix, c); err != nil {
					return err
				}
			}
			return nil
		}
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := prefix + n.Content[i].Value
			if known[k] {
				continue
			}
			if isSection(k) {
				if err := walk(k+".", n.Content[i+1]); err != nil {
					return err
				}
				continue
			}
			msg := fmt.Sprintf("line %d: unknown key", n.Content[i].Line)
			if s := suggest(k, known); s != "" {
				msg += " (did you mean " + s + "?)"
			}
			return &Error{File: path, Key: k, Msg: msg}
		}
		return nil
	}
	return walk("", doc)
}

// suggest returns the known key closest to k, if it is close.
func suggest(k string, known map[string]bool) string {
	best, bestD := "", 3
	for c := range known {
		if d := editDistance(k, c); d < bestD || (d == bestD && c < best) {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
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

// The YAML file's syntax. Every field names, in its cfg tag, the Config
// field it sets (Value reads it back for the documentation tests).
type raw struct {
	Hostname        *string     `yaml:"hostname" cfg:"Hostname"`
	Listen          []string    `yaml:"listen" cfg:"Listen"`
	ImapdConf       *string     `yaml:"imapd_conf" cfg:"ImapdConf"`
	Mode            *string     `yaml:"mode" cfg:"ConfigMode"`
	StateDir        *string     `yaml:"state_dir" cfg:"StateDir"`
	ControlSocket   *string     `yaml:"control_socket" cfg:"ControlSocket"`
	WatchConfig     *bool       `yaml:"watch_config" cfg:"WatchConfig"`
	ShutdownTimeout *Duration   `yaml:"shutdown_timeout" cfg:"ShutdownTimeout"`
	Log             rawLog      `yaml:"log"`
	LMTP            rawLMTP     `yaml:"lmtp"`
	Address         rawAddress  `yaml:"address"`
	Lookup          rawLookup   `yaml:"lookup"`
	Backends        rawBackends `yaml:"backends"`
	Metrics         rawMetrics  `yaml:"metrics"`
}

type rawMetrics struct {
	Listen *string `yaml:"listen" cfg:"Metrics.Listen"`
}

type rawLog struct {
	Level  *string `yaml:"level" cfg:"Log.Level"`
	Format *string `yaml:"format" cfg:"Log.Format"`
}

type rawLMTP struct {
	MaxMessageSize   *int64    `yaml:"max_message_size" cfg:"LMTP.MaxMessageSize"`
	MaxRecipients    *int      `yaml:"max_recipients" cfg:"LMTP.MaxRecipients"`
	MaxConnections   *int      `yaml:"max_connections" cfg:"LMTP.MaxConnections"`
	ReadTimeout      *Duration `yaml:"read_timeout" cfg:"LMTP.ReadTimeout"`
	WriteTimeout     *Duration `yaml:"write_timeout" cfg:"LMTP.WriteTimeout"`
	SpoolDir         *string   `yaml:"spool_dir" cfg:"LMTP.SpoolDir"`
	SpoolMemoryLimit *int64    `yaml:"spool_memory_limit" cfg:"LMTP.SpoolMemoryLimit"`
	TrustAuth        []string  `yaml:"trust_auth" cfg:"LMTP.TrustAuth"`
}

type rawAddress struct {
	DowncaseRcpt         *bool   `yaml:"downcase_rcpt" cfg:"Address.Downcase"`
	UnixHierarchySep     *bool   `yaml:"unixhierarchysep" cfg:"Address.UnixHierarchySep"`
	VirtDomains          *string `yaml:"virtdomains" cfg:"Address.VirtDomains"`
	DefaultDomain        *string `yaml:"defaultdomain" cfg:"Address.DefaultDomain"`
	PostUser             *string `yaml:"postuser" cfg:"Address.PostUser"`
	OverQuotaPermFailure *bool   `yaml:"over_quota_perm_failure" cfg:"Address.OverQuotaPermFailure"`
}

type rawCache struct {
	PositiveTTL *Duration `yaml:"positive_ttl" cfg:"Lookup.Cache.PositiveTTL"`
	NegativeTTL *Duration `yaml:"negative_ttl" cfg:"Lookup.Cache.NegativeTTL"`
	MaxEntries  *int      `yaml:"max_entries" cfg:"Lookup.Cache.MaxEntries"`
}

// rawMupdate is one MUPDATE server block; the cfg tags are relative to
// the mupdate.Config it fills.
type rawMupdate struct {
	Address      *string   `yaml:"address" cfg:"Address"`
	AuthName     *string   `yaml:"authname" cfg:"AuthName"`
	AuthzID      *string   `yaml:"authzid" cfg:"AuthzID"`
	Password     *string   `yaml:"password" cfg:"-"`
	PasswordFile *string   `yaml:"password_file" cfg:"-"`
	TLS          *string   `yaml:"tls" cfg:"TLS"`
	TLSCAFile    *string   `yaml:"tls_ca_file" cfg:"TLSCAFile"`
	DialTimeout  *Duration `yaml:"dial_timeout" cfg:"DialTimeout"`
	QueryTimeout *Duration `yaml:"query_timeout" cfg:"QueryTimeout"`
	KeepAlive    *Duration `yaml:"keepalive" cfg:"KeepAlive"`
	BackoffMin   *Duration `yaml:"backoff_min" cfg:"BackoffMin"`
	BackoffMax   *Duration `yaml:"backoff_max" cfg:"BackoffMax"`
}

type rawLookup struct {
	Order             []string   `yaml:"order" cfg:"Lookup.Order"`
	Timeout           *Duration  `yaml:"timeout" cfg:"Lookup.Timeout"`
	MailboxesDB       *string    `yaml:"mailboxes_db" cfg:"Lookup.MailboxesDB.Path"`
	MailboxesDBFormat *string    `yaml:"mailboxes_db_format" cfg:"Lookup.MailboxesDB.Format"`
	ReplicaSocket     *string    `yaml:"replica_socket" cfg:"Lookup.MailboxesDB.ReplicaSocket"`
	PollInterval      *Duration  `yaml:"poll_interval" cfg:"Lookup.MailboxesDB.PollInterval"`
	ForcePolling      *bool      `yaml:"force_polling" cfg:"Lookup.MailboxesDB.ForcePolling"`
	Cache             rawCache   `yaml:"cache"`
	LocalMupdate      rawMupdate `yaml:"local_mupdate" cfg:"Lookup.Local"`
	MasterMupdate     rawMupdate `yaml:"master_mupdate" cfg:"Lookup.Master"`
	MasterReplica     rawReplica `yaml:"master_replica" cfg:"Lookup.Replica"`
}

type rawReplica struct {
	Snapshot             *string   `yaml:"snapshot" cfg:"SnapshotPath"`
	SnapshotInterval     *Duration `yaml:"snapshot_interval" cfg:"SnapshotInterval"`
	MissWait             *Duration `yaml:"miss_wait" cfg:"MissWait"`
	KeepAlive            *Duration `yaml:"keepalive" cfg:"KeepAlive"`
	DumpIdleTimeout      *Duration `yaml:"dump_idle_timeout" cfg:"DumpIdleTimeout"`
	Compress             *bool     `yaml:"compress" cfg:"Compress"`
	StaleMissUnavailable *bool     `yaml:"stale_miss_unavailable" cfg:"StaleMissUnavailable"`
}

type rawBackends struct {
	Port            *int              `yaml:"port" cfg:"Backends.DefaultPort"`
	Addresses       map[string]string `yaml:"addresses" cfg:"Backends.Addresses"`
	AuthName        *string           `yaml:"authname" cfg:"Backends.AuthName"`
	Password        *string           `yaml:"password" cfg:"-"`
	PasswordFile    *string           `yaml:"password_file" cfg:"-"`
	TLSCAFile       *string           `yaml:"tls_ca_file" cfg:"Backends.TLSCAFile"`
	TLSSkipVerify   *bool             `yaml:"tls_skip_verify" cfg:"Backends.TLSSkipVerify"`
	RequireTLS      *bool             `yaml:"require_tls" cfg:"Backends.RequireTLS"`
	AllowedHosts    []string          `yaml:"allowed_hosts" cfg:"Backends.AllowedHosts"`
	ConnectTimeout  *Duration         `yaml:"connect_timeout" cfg:"Backends.ConnectTimeout"`
	CommandTimeout  *Duration         `yaml:"command_timeout" cfg:"Backends.CommandTimeout"`
	TxnTimeout      *Duration         `yaml:"txn_timeout" cfg:"Backends.TxnTimeout"`
	IdleTimeout     *Duration         `yaml:"idle_timeout" cfg:"Backends.IdleTimeout"`
	MaxIdle         *int              `yaml:"max_idle" cfg:"Backends.MaxIdle"`
	MaxTransactions *int              `yaml:"max_transactions" cfg:"Backends.MaxTransactions"`
	QueueTimeout    *Duration         `yaml:"queue_timeout" cfg:"Backends.QueueTimeout"`
	BackoffMin      *Duration         `yaml:"backoff_min" cfg:"Backends.BackoffMin"`
	BackoffMax      *Duration         `yaml:"backoff_max" cfg:"Backends.BackoffMax"`
	VerifyRcpt      *bool             `yaml:"verify_rcpt" cfg:"Backends.VerifyRcpt"`
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

func (b *builder) problem(key, format string, args ...any) {
	b.c.Problems = append(b.c.Problems, Problem{Key: key, Msg: fmt.Sprintf(format, args...)})
}

// str sets *dst from the YAML value, else the imapd.conf option, and
// leaves the default otherwise.
func (b *builder) str(dst *string, v *string, imapdKey string) {
	if v != nil {
		*dst = *v
		return
	}
	if imapdKey != "" {
		if s, ok := b.im.String(imapdKey); ok {
			*dst = s
		}
	}
}

func (b *builder) boolean(dst *bool, key string, v *bool, imapdKey string) {
	if v != nil {
		*dst = *v
		return
	}
	if imapdKey != "" {
		val, set, err := b.im.Bool(imapdKey)
		if err != nil {
			b.fail(key, "%v", err)
			return
		}
		if set {
			*dst = val
		}
	}
}

// Rules for numbers and durations: what zero means is each field's own
// business (its comment says); these refuse what cannot work.
type rule int

const (
	nonNegative rule = iota // 0 allowed, and means what the field says
	positive                // 0 refused
)

func (b *builder) dur(dst *time.Duration, key string, v *Duration, r rule) {
	if v == nil {
		return
	}
	if v.bad != "" {
		b.fail(key, "%q is not a duration (e.g. 30s, 5m)", v.bad)
		return
	}
	switch {
	case v.D < 0:
		b.fail(key, "must not be negative")
	case v.D == 0 && r == positive:
		b.fail(key, "must be positive")
	default:
		*dst = v.D
	}
}

func (b *builder) integer(dst *int, key string, v *int, minimum int) {
	if v == nil {
		return
	}
	if *v < minimum {
		b.fail(key, "must be at least %d", minimum)
		return
	}
	*dst = *v
}

func (b *builder) int64(dst *int64, key string, v *int64) {
	if v == nil {
		return
	}
	if *v < 0 {
		b.fail(key, "must not be negative")
		return
	}
	*dst = *v
}

func (b *builder) build(r *raw) {
	c := b.c
	// imapd.conf first: everything else may fall back to it.
	b.str(&c.ImapdConf, r.ImapdConf, "")
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

	c.Hostname, _ = os.Hostname()
	b.str(&c.Hostname, r.Hostname, "servername")
	if c.Hostname == "" {
		c.Hostname = "localhost"
	}
	if strings.ContainsAny(c.Hostname, " \t\r\n") {
		b.fail("hostname", "%q contains white space", c.Hostname)
	}
	b.buildListen(r.Listen)

	c.StateDir, c.ControlSocket = DefaultStateDir, DefaultControlSocket
	b.str(&c.StateDir, r.StateDir, "")
	b.str(&c.ControlSocket, r.ControlSocket, "")
	b.boolean(&c.WatchConfig, "watch_config", r.WatchConfig, "")
	c.ShutdownTimeout = 30 * time.Second
	b.dur(&c.ShutdownTimeout, "shutdown_timeout", r.ShutdownTimeout, positive)
	if c.ShutdownTimeout > MaxShutdownTimeout {
		b.fail("shutdown_timeout", "%v is longer than %v: the packaged unit's TimeoutStopSec=45s would kill a stop in progress", c.ShutdownTimeout, MaxShutdownTimeout)
	}

	c.Log = LogConfig{Level: slog.LevelInfo, Format: "auto"}
	if r.Log.Level != nil {
		if err := c.Log.Level.UnmarshalText([]byte(*r.Log.Level)); err != nil {
			b.fail("log.level", "%q: want debug, info, warn or error", *r.Log.Level)
		}
	}
	b.str(&c.Log.Format, r.Log.Format, "")
	if !slices.Contains([]string{"auto", "journal", "text", "json"}, c.Log.Format) {
		b.fail("log.format", "%q: want auto, journal, text or json", c.Log.Format)
	}

	b.parseMode(r.Mode)
	b.buildLMTP(&r.LMTP)
	b.buildAddress(&r.Address)
	b.buildLookup(&r.Lookup)
	b.buildBackends(&r.Backends)
	b.str(&b.c.Metrics.Listen, r.Metrics.Listen, "")
	if l := b.c.Metrics.Listen; l != "" {
		if _, _, err := net.SplitHostPort(l); err != nil {
			b.fail("metrics.listen", "%q: want host:port, e.g. 127.0.0.1:9425", l)
		}
	}
	b.applyModeFile()
}

func (b *builder) buildListen(listen []string) {
	if listen == nil {
		listen = []string{DefaultListen}
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
		b.c.Listen = append(b.c.Listen, Listen{Network: network, Address: addr})
	}
}

func (b *builder) parseMode(v *string) {
	c := b.c
	c.ConfigMode = ModeMaster
	if v != nil {
		m, err := ParseMode(*v)
		if err != nil {
			b.fail("mode", "%v", err)
		}
		c.ConfigMode = m
	}
}

// applyModeFile decides the mode in force. A mode file that cannot be read,
// holds garbage, or names a mode the configuration cannot run in is never
// a reason not to start: the daemon then runs in the configuration's mode
// and says why loudly (ModeProblem). Only a configuration whose own mode
// leaves no lookup source is an error.
func (b *builder) applyModeFile() {
	c := b.c
	c.Mode, c.ModeFrom = c.ConfigMode, "config"
	file := ModeFile(c.StateDir)
	override, exists, err := ReadModeFile(c.StateDir)
	switch {
	case err != nil:
		c.ModeProblem = fmt.Sprintf("%s is ignored (%v); running in mode %s from the configuration; fix or remove it with `lmtpgate mode clear`", file, err, c.ConfigMode)
	case exists && len(c.orderFor(override)) == 0 && len(c.Lookup.Order) > 0:
		c.ModeProblem = fmt.Sprintf("%s says %s, which leaves no lookup source in lookup.order; it is ignored and the daemon runs in mode %s from the configuration; remove it with `lmtpgate mode clear`", file, override, c.ConfigMode)
	case exists:
		c.Mode, c.ModeFrom = override, file
		if override != c.ConfigMode {
			b.warn("mode: %s overrides mode: %s in the configuration; later edits of mode: have no effect until `lmtpgate mode clear`", file, c.ConfigMode)
		}
	}
	if len(c.Order()) == 0 && len(c.Lookup.Order) > 0 {
		b.fail("mode", "no-master mode leaves no lookup source: add mailboxes-db or local-mupdate to lookup.order")
	}
}

func (b *builder) buildLMTP(r *rawLMTP) {
	l := &b.c.LMTP
	*l = front.DefaultConfig()
	if r.MaxMessageSize != nil {
		b.int64(&l.MaxMessageSize, "lmtp.max_message_size", r.MaxMessageSize)
	} else if v, set, err := b.im.Int("maxmessagesize"); err != nil {
		b.fail("lmtp.max_message_size", "%v", err)
	} else if set && v >= 0 {
		l.MaxMessageSize = v
	}
	b.integer(&l.MaxRecipients, "lmtp.max_recipients", r.MaxRecipients, 1)
	b.integer(&l.MaxConnections, "lmtp.max_connections", r.MaxConnections, 0)
	b.dur(&l.ReadTimeout, "lmtp.read_timeout", r.ReadTimeout, positive)
	b.dur(&l.WriteTimeout, "lmtp.write_timeout", r.WriteTimeout, positive)
	b.str(&l.SpoolDir, r.SpoolDir, "")
	b.int64(&l.SpoolMemoryLimit, "lmtp.spool_memory_limit", r.SpoolMemoryLimit)
	if r.TrustAuth != nil {
		l.TrustAuth = r.TrustAuth
	}
}

func (b *builder) buildAddress(r *rawAddress) {
	a := &b.c.Address
	a.Settings = address.DefaultSettings()
	a.DeletedPrefix = "DELETED"
	b.boolean(&a.Downcase, "address.downcase_rcpt", r.DowncaseRcpt, "lmtp_downcase_rcpt")
	b.boolean(&a.UnixHierarchySep, "address.unixhierarchysep", r.UnixHierarchySep, "unixhierarchysep")
	b.str(&a.VirtDomains, r.VirtDomains, "virtdomains")
	// Cyrus accepts the usual boolean spellings for virtdomains too:
	// "yes"/"on" mean "userid", "no"/"off" mean "off" (lib/imapoptions).
	switch a.VirtDomains = strings.ToLower(a.VirtDomains); a.VirtDomains {
	case "off", "no", "0", "false":
		a.VirtDomains = "off"
	case "userid", "yes", "1", "true":
		a.VirtDomains = "userid"
	case "on":
	default:
		b.fail("address.virtdomains", "%q: want off, userid or on", a.VirtDomains)
	}
	b.str(&a.DefaultDomain, r.DefaultDomain, "defaultdomain")
	a.DefaultDomain = strings.ToLower(a.DefaultDomain)
	b.str(&a.PostUser, r.PostUser, "postuser")
	b.boolean(&a.OverQuotaPermFailure, "address.over_quota_perm_failure", r.OverQuotaPermFailure, "lmtp_over_quota_perm_failure")
	b.str(&a.DeletedPrefix, nil, "deletedprefix")
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
		if !slices.Contains(Sources, s) {
			b.fail(fmt.Sprintf("lookup.order[%d]", i), "unknown source %q (want mailboxes-db, local-mupdate, master-mupdate or master-replica)", s)
		}
		if slices.Index(l.Order, s) != i {
			b.fail(fmt.Sprintf("lookup.order[%d]", i), "source %q listed twice", s)
		}
	}
	l.Timeout = 10 * time.Second
	b.dur(&l.Timeout, "lookup.timeout", r.Timeout, positive)

	db := &l.MailboxesDB
	*db = mboxlist.DefaultConfig()
	configDir, _ := b.im.String("configdirectory")
	if configDir != "" {
		db.Path = filepath.Join(configDir, "mailboxes.db")
		// Cyrus's lmtpd pokes the local mupdate replica through this
		// socket before it declares a mailbox unknown (imap/lmtpd.c,
		// the kick of <configdirectory>/socket/mupdate.target).
		db.ReplicaSocket = filepath.Join(configDir, "socket", "mupdate.target")
	}
	b.str(&db.Path, r.MailboxesDB, "mboxlist_db_path")
	b.str(&db.ReplicaSocket, r.ReplicaSocket, "")
	if r.MailboxesDBFormat != nil {
		f, err := cyrusdb.ParseFormat(*r.MailboxesDBFormat)
		if err != nil {
			b.fail("lookup.mailboxes_db_format", "%q: want auto, twoskip, skiplist or flat", *r.MailboxesDBFormat)
		}
		db.Format = f
	}
	if slices.Contains(l.Order, SourceMailboxesDB) && db.Path == "" {
		b.fail("lookup.mailboxes_db", "required when mailboxes-db is in lookup.order (or set imapd_conf to an imapd.conf with configdirectory)")
	}
	b.dur(&db.PollInterval, "lookup.poll_interval", r.PollInterval, positive)
	b.boolean(&db.ForcePolling, "lookup.force_polling", r.ForcePolling, "")

	l.Cache = lookup.DefaultCacheConfig()
	b.dur(&l.Cache.PositiveTTL, "lookup.cache.positive_ttl", r.Cache.PositiveTTL, nonNegative)
	b.dur(&l.Cache.NegativeTTL, "lookup.cache.negative_ttl", r.Cache.NegativeTTL, nonNegative)
	b.integer(&l.Cache.MaxEntries, "lookup.cache.max_entries", r.Cache.MaxEntries, 0)

	// The master's settings come from imapd.conf's mupdate_* options, as
	// Cyrus's own frontend services use them.
	master := mupdate.DefaultConfig()
	b.str(&master.Address, nil, "mupdate_server")
	b.str(&master.AuthName, nil, "mupdate_authname")
	b.str(&master.AuthzID, nil, "mupdate_username")
	b.str(&master.Password, nil, "mupdate_password")
	usesMaster := slices.Contains(l.Order, SourceMasterMupdate) || slices.Contains(l.Order, SourceMasterReplica)
	l.Master = b.mupdate("lookup.master_mupdate", &r.MasterMupdate, master, usesMaster)
	// The local replica accepts only imapd.conf admins; the master's
	// identity is usually one, so it is the default.
	local := mupdate.DefaultConfig()
	local.Address = "127.0.0.1:3905"
	local.AuthName, local.AuthzID, local.Password = l.Master.AuthName, l.Master.AuthzID, l.Master.Password
	l.Local = b.mupdate("lookup.local_mupdate", &r.LocalMupdate, local, slices.Contains(l.Order, SourceLocalMupdate))
	if usesMaster && l.Master.Address == "" {
		b.fail("lookup.master_mupdate.address", "required when master-mupdate or master-replica is in lookup.order (or set mupdate_server in imapd.conf)")
	}
	b.buildReplica(&r.MasterReplica)
	if slices.Contains(l.Order, SourceLocalMupdate) && slices.Contains(l.Order, SourceMasterMupdate) && sameHostPort(l.Local.Address, l.Master.Address) {
		b.problem("lookup.local_mupdate.address", "%s is the master's own address: no-master mode would still reach the master through local-mupdate; point it at the frontend's own mupdate replica", l.Local.Address)
	}
}

// buildReplica resolves lookup.master_replica over replica's defaults;
// the connection is lookup.master_mupdate's.
func (b *builder) buildReplica(r *rawReplica) {
	l := &b.c.Lookup
	rc := replica.DefaultConfig()
	m := l.Master
	rc.Server = m.Server
	rc.BackoffMin, rc.BackoffMax = m.BackoffMin, m.BackoffMax
	rc.SnapshotPath = filepath.Join(b.c.StateDir, replica.DefaultSnapshotName)
	b.str(&rc.SnapshotPath, r.Snapshot, "")
	b.dur(&rc.SnapshotInterval, "lookup.master_replica.snapshot_interval", r.SnapshotInterval, nonNegative)
	b.dur(&rc.MissWait, "lookup.master_replica.miss_wait", r.MissWait, nonNegative)
	b.dur(&rc.KeepAlive, "lookup.master_replica.keepalive", r.KeepAlive, positive)
	b.dur(&rc.DumpIdleTimeout, "lookup.master_replica.dump_idle_timeout", r.DumpIdleTimeout, positive)
	b.boolean(&rc.Compress, "lookup.master_replica.compress", r.Compress, "")
	b.boolean(&rc.StaleMissUnavailable, "lookup.master_replica.stale_miss_unavailable", r.StaleMissUnavailable, "")
	if rc.SnapshotPath != "" && !filepath.IsAbs(rc.SnapshotPath) {
		b.fail("lookup.master_replica.snapshot", "%q: want an absolute path, or \"\" for no snapshot", rc.SnapshotPath)
	}
	if !slices.Contains(l.Order, SourceMasterReplica) {
		l.Replica = rc
		return
	}
	if rc.MissWait >= l.Timeout {
		b.warn("lookup.master_replica.miss_wait: %v is not shorter than lookup.timeout (%v): a miss may use up the whole lookup", rc.MissWait, l.Timeout)
	}
	if slices.Contains(l.Order, SourceMasterMupdate) && slices.Index(l.Order, SourceMasterMupdate) < slices.Index(l.Order, SourceMasterReplica) {
		b.warn("lookup.order: master-mupdate before master-replica asks the master for every message; put master-replica first")
	}
	l.Replica = rc
}

// mupdate resolves one MUPDATE server block over def, which carries the
// defaults and imapd.conf fallbacks. A Cyrus mupdate_server may be "host",
// "host:port" or carry "/tls" or "/noauth" suffixes.
func (b *builder) mupdate(key string, r *rawMupdate, def mupdate.Config, used bool) mupdate.Config {
	m := def
	b.str(&m.Address, r.Address, "")
	if i := strings.IndexByte(m.Address, '/'); i >= 0 {
		for _, flag := range strings.Split(m.Address[i+1:], "/") {
			switch flag {
			case "tls":
				m.TLS = "starttls"
			case "noauth":
			default:
				b.fail(key+".address", "%q: unknown flag /%s", m.Address, flag)
			}
		}
		m.Address = m.Address[:i]
	}
	if m.Address != "" {
		if _, _, err := net.SplitHostPort(m.Address); err != nil {
			// Cyrus's default MUPDATE port when the server string has none.
			m.Address = net.JoinHostPort(strings.Trim(m.Address, "[]"), "3905")
		}
	}
	b.str(&m.AuthName, r.AuthName, "")
	b.str(&m.AuthzID, r.AuthzID, "")
	if pw, set := b.secret(key+".password", r.Password, r.PasswordFile, used); set {
		m.Password = pw
	}
	b.str(&m.TLS, r.TLS, "")
	if !slices.Contains([]string{"none", "starttls", "tls"}, m.TLS) {
		b.fail(key+".tls", "%q: want none, starttls or tls", m.TLS)
	}
	b.str(&m.TLSCAFile, r.TLSCAFile, "")
	b.dur(&m.DialTimeout, key+".dial_timeout", r.DialTimeout, positive)
	b.dur(&m.QueryTimeout, key+".query_timeout", r.QueryTimeout, positive)
	b.dur(&m.KeepAlive, key+".keepalive", r.KeepAlive, nonNegative)
	b.dur(&m.BackoffMin, key+".backoff_min", r.BackoffMin, positive)
	b.dur(&m.BackoffMax, key+".backoff_max", r.BackoffMax, positive)
	if m.BackoffMax < m.BackoffMin {
		b.fail(key+".backoff_max", "must not be less than backoff_min")
	}
	if !used {
		return m
	}
	if m.TLSCAFile != "" {
		if err := m.Validate(); err != nil && strings.Contains(err.Error(), "TLSCAFile") {
			b.fail(key+".tls_ca_file", "%v", err)
		}
	}
	if budget := m.Budget(); budget >= b.c.Lookup.Timeout {
		// Not an error: the client's breaker also opens when the
		// caller's deadline ends a query. But a slow answer the
		// client would still wait for is cut off, and a hung server
		// costs the whole lookup budget before the next source in
		// lookup.order is asked.
		b.warn("lookup.timeout: %v is not longer than %s's dial_timeout + 2 x query_timeout (%v): a hung %s uses up the whole lookup before the next source is asked", b.c.Lookup.Timeout, key, budget, key)
	}
	if m.AuthName != "" && m.Password == "" {
		b.problem(key+".password", "empty: the MUPDATE server will refuse the login of %q; set %s.password_file (or mupdate_password in imapd.conf)", m.AuthName, key)
	}
	if m.AuthName != "" && m.TLS == "none" && !isLoopbackAddr(m.Address) {
		b.warn("%s: the password for %q goes to %s in clear text; set %s.tls: starttls (or a \"/tls\" mupdate_server)", key, m.AuthName, m.Address, key)
	}
	return m
}

func (b *builder) buildBackends(r *rawBackends) {
	be := &b.c.Backends
	*be = backend.DefaultConfig()
	be.HeloName = b.c.Hostname
	b.integer(&be.DefaultPort, "backends.port", r.Port, 1)
	if be.DefaultPort > 65535 {
		b.fail("backends.port", "%d is not a port", be.DefaultPort)
	}
	be.Addresses = map[string]string{}
	for name, a := range r.Addresses {
		if _, _, err := net.SplitHostPort(a); err != nil && !filepath.IsAbs(a) {
			b.fail("backends.addresses."+name, "%q: want host:port or an absolute unix socket path", a)
		}
		be.Addresses[name] = a
	}
	b.str(&be.AuthName, r.AuthName, "proxy_authname")
	if pw, set := b.secret("backends.password", r.Password, r.PasswordFile, true); set {
		be.Password = pw
	} else {
		b.str(&be.Password, nil, "proxy_password")
	}
	if be.AuthName != "" && be.Password == "" {
		b.problem("backends.password", "empty: backends that require AUTH (Cyrus lmtpd over TCP) will refuse every delivery; put the password of %q in backends.password_file, or proxy_password in imapd.conf", be.AuthName)
	}
	b.str(&be.TLSCAFile, r.TLSCAFile, "")
	b.boolean(&be.TLSSkipVerify, "backends.tls_skip_verify", r.TLSSkipVerify, "")
	if be.TLSSkipVerify {
		b.warn("backends.tls_skip_verify is on: backend certificates are not checked at all, so TLS protects nothing against an attacker on the path")
	}
	b.boolean(&be.RequireTLS, "backends.require_tls", r.RequireTLS, "")
	if r.AllowedHosts != nil {
		be.AllowedHosts = r.AllowedHosts
	}
	b.dur(&be.ConnectTimeout, "backends.connect_timeout", r.ConnectTimeout, positive)
	b.dur(&be.CommandTimeout, "backends.command_timeout", r.CommandTimeout, positive)
	b.dur(&be.TxnTimeout, "backends.txn_timeout", r.TxnTimeout, positive)
	b.dur(&be.IdleTimeout, "backends.idle_timeout", r.IdleTimeout, positive)
	b.integer(&be.MaxIdle, "backends.max_idle", r.MaxIdle, 0)
	b.integer(&be.MaxTransactions, "backends.max_transactions", r.MaxTransactions, 0)
	b.dur(&be.QueueTimeout, "backends.queue_timeout", r.QueueTimeout, nonNegative)
	b.dur(&be.BackoffMin, "backends.backoff_min", r.BackoffMin, positive)
	b.dur(&be.BackoffMax, "backends.backoff_max", r.BackoffMax, positive)
	if be.BackoffMax < be.BackoffMin {
		b.fail("backends.backoff_max", "must not be less than backoff_min")
	}
	b.boolean(&be.VerifyRcpt, "backends.verify_rcpt", r.VerifyRcpt, "")
	if err := be.Validate(); err != nil {
		key := "backends"
		switch {
		case strings.HasPrefix(err.Error(), "TLSCAFile"):
			key = "backends.tls_ca_file"
		case strings.HasPrefix(err.Error(), "AllowedHosts"):
			key = "backends.allowed_hosts"
		}
		b.fail(key, "%v", err)
	}
	if !be.RequireTLS && be.AuthName != "" && len(be.Addresses) > 0 {
		for name, a := range be.Addresses {
			if host, _, err := net.SplitHostPort(a); err == nil && !isLoopbackHost(host) && !strings.HasSuffix(name, "/tls") {
				b.warn("backends.addresses.%s: the proxy password goes to %s in clear text unless its server string ends in /tls; consider backends.require_tls", name, a)
			}
		}
	}
}

// secret returns a password from password or password_file, and whether
// either was set. A password file is read from systemd's credentials
// directory when the unit passed it there (LoadCredential=, named after the
// file), so the file itself can stay readable by root alone.
func (b *builder) secret(key string, pw, file *string, used bool) (string, bool) {
	fileKey := strings.TrimSuffix(key, "password") + "password_file"
	if pw != nil && file != nil && *pw != "" && *file != "" {
		b.fail(key, "set password or password_file, not both")
	}
	if file != nil && *file != "" {
		if b.c.SecretFiles == nil {
			b.c.SecretFiles = map[string]string{}
		}
		b.c.SecretFiles[fileKey] = *file
		data, from, err := readSecret(*file)
		if err != nil {
			if used {
				b.fail(fileKey, "%v", err)
			}
			return "", true
		}
		if from == *file && used {
			b.checkSecretMode(fileKey, *file)
		}
		if from != *file && used && changedSince(*file, from) {
			b.warn("%s: %s changed after the service started; systemd passed the old one (LoadCredential=): `systemctl restart lmtpgate` to use it", fileKey, *file)
		}
		// A password file holds one line; a trailing newline from an
		// editor is not part of the password.
		secret := strings.TrimRight(string(data), "\r\n")
		if secret == "" {
			// An empty file is a placeholder (the package ships
			// them so, and names them in its configuration): it
			// does not override imapd.conf. If nothing else gives
			// a password, the caller's problem says where to put
			// one.
			return "", false
		}
		return secret, true
	}
	if pw != nil && *pw != "" {
		return *pw, true
	}
	return "", false
}

// readSecret reads a password file, from $CREDENTIALS_DIRECTORY when the
// service manager put a credential of the file's name there.
func readSecret(path string) ([]byte, string, error) {
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
		cred := filepath.Join(dir, filepath.Base(path))
		if data, err := os.ReadFile(cred); err == nil {
			return data, cred, nil
		}
	}
	data, err := os.ReadFile(path)
	return data, path, err
}

// changedSince reports whether file was modified after the credential copy
// of it was made.
func changedSince(file, cred string) bool {
	fi, err1 := os.Stat(file)
	ci, err2 := os.Stat(cred)
	return err1 == nil && err2 == nil && fi.ModTime().After(ci.ModTime())
}

// checkSecretMode warns about a password file that others can read.
func (b *builder) checkSecretMode(key, path string) {
	fi, err := os.Stat(path)
	if err != nil {
		return
	}
	switch perm := fi.Mode().Perm(); {
	case perm&0o004 != 0:
		b.warn("%s: %s is readable by every user (mode %04o): chmod 0600 it (the packaged unit passes it to the daemon with LoadCredential=)", key, path, perm)
	case perm&0o040 != 0:
		b.warn("%s: %s is readable by its group (mode %04o): every member, an MTA added to that group included, can read the password; chmod 0600 it (the packaged unit passes it to the daemon with LoadCredential=)", key, path, perm)
	}
}

func sameHostPort(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb {
		return false
	}
	if strings.EqualFold(ha, hb) {
		return true
	}
	ia, ib := net.ParseIP(ha), net.ParseIP(hb)
	return ia != nil && ib != nil && ia.Equal(ib)
}

func isLoopbackAddr(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	return isLoopbackHost(host)
}

func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}
