package backend

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Target is where a Cyrus server string says to deliver.
type Target struct {
	// Network is "tcp" or "unix".
	Network string
	// Address is "host:port" (IPv6 hosts bracketed) or a socket path.
	Address string
	// TLS asks for STARTTLS before authenticating ("/tls").
	TLS bool
	// NoAuth skips SASL ("/noauth", and always for UNIX sockets, where
	// lmtpd treats the peer as pre-authenticated).
	NoAuth bool
	// Name is the server string as given, used in logs and as pool key.
	Name string
}

// host is the part of Address a TLS certificate is checked against.
func (t Target) host() string {
	h, _, err := net.SplitHostPort(t.Address)
	if err != nil {
		return t.Address
	}
	return h
}

var errEmptyServer = errors.New("empty server string")

// ParseServer parses a Cyrus server string (the "S" field of a mailboxes.db
// entry or a MUPDATE reply) into a dial target. Cyrus's backend_connect
// accepts "host", "host:port", either followed by "/tls" or "/noauth", and
// an absolute UNIX socket path (Cyrus imap/backend.c, backend_connect). We also accept
// "[v6addr]:port" and a bare IPv6 literal, which Cyrus itself cannot parse.
//
// cfg.Addresses may map the whole server string, or its host[:port] part
// without options, to another "host:port" or socket path; this is how a
// deployment points a Cyrus server name at the address lmtpd listens on.
// Without a port, cfg.DefaultPort is used rather than Cyrus's
// "lmtp" service lookup, because murder backends listen on 2003 by
// convention. Anything else is an error: the string comes from outside
// (the mailboxes database or the MUPDATE master) and must not be guessed at.
// A nil cfg means DefaultConfig.
func ParseServer(server string, cfg *Config) (Target, error) {
	if cfg == nil {
		d := DefaultConfig()
		cfg = &d
	}
	t := Target{Network: "tcp", Name: server}
	if server == "" {
		return Target{}, errEmptyServer
	}
	for _, r := range server {
		if r <= ' ' || r == 0x7f {
			return Target{}, fmt.Errorf("server string %q: contains space or control character", server)
		}
	}
	if server[0] == '/' {
		return unixTarget(t, server, cfg)
	}
	hostport, opts, hasOpts := strings.Cut(server, "/")
	if hasOpts {
		for _, o := range strings.Split(opts, "/") {
			switch strings.ToLower(o) {
			case "tls":
				t.TLS = true
			case "noauth":
				t.NoAuth = true
			default:
				return Target{}, fmt.Errorf("server string %q: unknown option %q", server, o)
			}
		}
	}
	mapped, ok := cfg.Addresses[server]
	if !ok {
		mapped, ok = cfg.Addresses[hostport]
	}
	if ok {
		if strings.HasPrefix(mapped, "/") {
			return unixTarget(t, mapped, cfg)
		}
		if strings.Contains(mapped, "/") {
			return Target{}, fmt.Errorf("address for %q: %q is neither host:port nor an absolute socket path", server, mapped)
		}
		hostport = mapped
	}
	host, port, err := splitHostPort(hostport)
	if err != nil {
		return Target{}, fmt.Errorf("server string %q: %w", server, err)
	}
	if port == "" {
		if cfg.DefaultPort < 1 || cfg.DefaultPort > 65535 {
			return Target{}, fmt.Errorf("server string %q has no port and no default port is configured", server)
		}
		port = strconv.Itoa(cfg.DefaultPort)
	}
	t.Address = net.JoinHostPort(host, port)
	return t, nil
}

func unixTarget(t Target, path string, _ *Config) (Target, error) {
	if path == "/" || strings.HasSuffix(path, "/") {
		return Target{}, fmt.Errorf("server string %q: not a socket path", t.Name)
	}
	t.Network = "unix"
	t.Address = path
	t.NoAuth = true
	t.TLS = false
	return t, nil
}

// splitHostPort splits "host", "host:port", "[v6]", "[v6]:port" or a bare
// IPv6 literal; port is "" when absent.
func splitHostPort(s string) (host, port string, err error) {
	if s == "" {
		return "", "", errors.New("empty host")
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", errors.New("missing ']'")
		}
		host = s[1:end]
		if ip := net.ParseIP(host); ip == nil || !strings.Contains(host, ":") {
			return "", "", fmt.Errorf("%q is not an IPv6 address", host)
		}
		rest := s[end+1:]
		switch {
		case rest == "":
		case rest[0] == ':':
			port = rest[1:]
			if err := checkPort(port); err != nil {
				return "", "", err
			}
		default:
			return "", "", fmt.Errorf("unexpected %q after ']'", rest)
		}
		return host, port, nil
	}
	switch strings.Count(s, ":") {
	case 0:
		host = s
	case 1:
		host, port, _ = strings.Cut(s, ":")
		if err := checkPort(port); err != nil {
			return "", "", err
		}
	default:
		if net.ParseIP(s) == nil {
			return "", "", errors.New("too many ':' (bracket IPv6 addresses)")
		}
		return s, "", nil
	}
	if err := checkHost(host); err != nil {
		return "", "", err
	}
	return host, port, nil
}

func checkPort(p string) error {
	if p == "" || len(p) > 5 {
		return fmt.Errorf("bad port %q", p)
	}
	n := 0
	for _, c := range p {
		if c < '0' || c > '9' {
			return fmt.Errorf("bad port %q", p)
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > 65535 {
		return fmt.Errorf("port %q out of range", p)
	}
	return nil
}

// checkHost accepts host names and IPv4 literals: letters, digits, '-',
// '.', '_' (the last appears in real internal host names).
func checkHost(h string) error {
	if h == "" {
		return errors.New("empty host")
	}
	if len(h) > 253 {
		return errors.New("host name too long")
	}
	for _, c := range h {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.', c == '_':
		default:
			return fmt.Errorf("bad character %q in host %q", c, h)
		}
	}
	return nil
}
