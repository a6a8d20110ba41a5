package backend

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// Config says how to reach and talk to backends. Every field means what
// its comment says, zero included; the defaults are DefaultConfig's and
// nowhere else.
type Config struct {
	// DefaultPort is used when a server string has no port (default 2003,
	// the usual lmtpd port of murder backends; Debian's /etc/services has
	// no "lmtp" entry, so it is not looked up there).
	DefaultPort int
	// Addresses maps a Cyrus server name to "host:port" or an absolute
	// socket path, overriding what the server string says.
	Addresses map[string]string
	// HeloName is the LHLO argument.
	HeloName string
	// AuthName is the SASL authcid (Cyrus proxy_authname); empty: do not
	// authenticate.
	AuthName string
	// Password is AuthName's password (Cyrus proxy_password).
	Password string
	// TLSCAFile is a PEM bundle of the CAs that backend certificates must
	// chain to; empty: the system's roots.
	TLSCAFile string
	// TLSSkipVerify accepts any backend certificate. Only for tests.
	TLSSkipVerify bool
	// RequireTLS makes every backend connection use STARTTLS, whatever its
	// server string says; a backend that does not offer it is unreachable.
	RequireTLS bool
	// AllowedHosts, when not empty, are the only hosts (names, addresses or
	// CIDR prefixes such as 10.1.0.0/16) a server string may name; any
	// other is refused before dialling, so a directory entry cannot send
	// the proxy password somewhere else.
	AllowedHosts []string
	// ConnectTimeout bounds dial, greeting, LHLO, STARTTLS and AUTH
	// together (Cyrus client_timeout). Must be positive.
	ConnectTimeout time.Duration
	// CommandTimeout bounds the wait for each reply, and each step of
	// progress while the body is sent. Must be positive.
	CommandTimeout time.Duration
	// TxnTimeout bounds the backend's part of a transaction from DATA to
	// the last final reply. Must be positive.
	TxnTimeout time.Duration
	// IdleTimeout closes pooled connections idle for longer (a backend
	// lmtpd drops idle clients after 360 s). Must be positive.
	IdleTimeout time.Duration
	// MaxIdle is the number of idle connections kept per backend; 0 keeps
	// none (every transaction dials).
	MaxIdle int
	// MaxTransactions bounds the transactions one backend runs at once;
	// the excess waits up to QueueTimeout and is then deferred. 0: no
	// bound.
	MaxTransactions int
	// QueueTimeout is how long a transaction waits for a free slot on a
	// busy backend; 0 defers it at once.
	QueueTimeout time.Duration
	// BackoffMin and BackoffMax bound how long a backend that failed is
	// taken out of service (its recipients get 4xx at once) before a
	// background probe tries it again; the wait doubles from min to max.
	// Both must be positive.
	BackoffMin, BackoffMax time.Duration
	// VerifyRcpt makes the front end wait for the backend's answer to each
	// RCPT and give it to the MTA at RCPT time, instead of answering from
	// the directory and reporting the backend's refusal after DATA.
	VerifyRcpt bool
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{
		DefaultPort:    2003,
		HeloName:       "lmtpgate",
		AuthName:       "proxy",
		ConnectTimeout: 10 * time.Second,
		CommandTimeout: time.Minute,
		TxnTimeout:     5 * time.Minute,
		IdleTimeout:    5 * time.Minute,
		// As many as an MTA typically runs LMTP connections at once
		// (Postfix's default_destination_concurrency_limit is 20):
		// fewer means re-dialling and re-authenticating under load.
		MaxIdle:         20,
		MaxTransactions: 64,
		QueueTimeout:    5 * time.Second,
		BackoffMin:      time.Second,
		BackoffMax:      30 * time.Second,
	}
}

// Validate reports the first setting that cannot work, naming its field.
func (c *Config) Validate() error {
	switch {
	case c.DefaultPort < 1 || c.DefaultPort > 65535:
		return fmt.Errorf("DefaultPort %d is not a port", c.DefaultPort)
	case c.ConnectTimeout <= 0:
		return errors.New("ConnectTimeout must be positive")
	case c.CommandTimeout <= 0:
		return errors.New("CommandTimeout must be positive")
	case c.TxnTimeout <= 0:
		return errors.New("TxnTimeout must be positive")
	case c.IdleTimeout <= 0:
		return errors.New("IdleTimeout must be positive")
	case c.MaxIdle < 0:
		return errors.New("MaxIdle must not be negative")
	case c.MaxTransactions < 0:
		return errors.New("MaxTransactions must not be negative")
	case c.QueueTimeout < 0:
		return errors.New("QueueTimeout must not be negative")
	case c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin:
		return errors.New("BackoffMin must be positive and BackoffMax at least BackoffMin")
	}
	for _, h := range c.AllowedHosts {
		if strings.Contains(h, "/") {
			if _, _, err := net.ParseCIDR(h); err != nil {
				return fmt.Errorf("AllowedHosts: %q is not a host or CIDR prefix", h)
			}
		} else if err := checkHost(strings.Trim(h, "[]")); err != nil && net.ParseIP(strings.Trim(h, "[]")) == nil {
			return fmt.Errorf("AllowedHosts: %q: %v", h, err)
		}
	}
	_, err := c.TLSConfig()
	return err
}

// TLSConfig returns the TLS client configuration for STARTTLS to backends
// (ServerName is filled in per host).
func (c *Config) TLSConfig() (*tls.Config, error) {
	tc := &tls.Config{InsecureSkipVerify: c.TLSSkipVerify, MinVersion: tls.VersionTLS12} // #nosec G402 -- an operator's explicit choice, warned about
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("TLSCAFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLSCAFile: no PEM certificate in %s", c.TLSCAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// allowed reports whether the server string's host may be dialled.
func (c *Config) allowed(t Target) bool {
	if len(c.AllowedHosts) == 0 || t.Network == "unix" {
		return true
	}
	host := t.host()
	ip := net.ParseIP(host)
	for _, a := range c.AllowedHosts {
		if _, n, err := net.ParseCIDR(a); err == nil {
			if ip != nil && n.Contains(ip) {
				return true
			}
			continue
		}
		a = strings.Trim(a, "[]")
		if strings.EqualFold(a, host) {
			return true
		}
		if aip := net.ParseIP(a); aip != nil && ip != nil && aip.Equal(ip) {
			return true
		}
	}
	return false
}

// Cleartext reports whether AUTH to t would send the password unencrypted
// across a network: no TLS, a password to send, and a host that is not
// loopback (a unix socket never authenticates).
func (c *Config) Cleartext(t Target) bool {
	if t.TLS || c.RequireTLS || t.NoAuth || t.Network == "unix" || c.AuthName == "" {
		return false
	}
	return !isLoopback(t.host())
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
