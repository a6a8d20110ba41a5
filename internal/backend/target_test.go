package backend

import (
	"strings"
	"testing"
)

func TestParseServer(t *testing.T) {
	cfg := &Config{
		DefaultPort: 2003,
		Addresses: map[string]string{
			"backend1":     "10.0.0.1:24",
			"backend2/tls": "10.0.0.2:2004",
			"local":        "/run/cyrus/socket/lmtp",
			"badmap":       "host:1/tls",
		},
	}
	tests := []struct {
		in      string
		want    Target
		wantErr bool
	}{
		{in: "backend3", want: Target{Network: "tcp", Address: "backend3:2003"}},
		{in: "backend3:24", want: Target{Network: "tcp", Address: "backend3:24"}},
		{in: "10.0.0.9", want: Target{Network: "tcp", Address: "10.0.0.9:2003"}},
		{in: "10.0.0.9:2004/tls", want: Target{Network: "tcp", Address: "10.0.0.9:2004", TLS: true}},
		{in: "host/TLS", want: Target{Network: "tcp", Address: "host:2003", TLS: true}},
		{in: "host:2003/noauth", want: Target{Network: "tcp", Address: "host:2003", NoAuth: true}},
		{in: "host/tls/noauth", want: Target{Network: "tcp", Address: "host:2003", TLS: true, NoAuth: true}},
		{in: "[::1]:2003", want: Target{Network: "tcp", Address: "[::1]:2003"}},
		{in: "[::1]", want: Target{Network: "tcp", Address: "[::1]:2003"}},
		{in: "[2001:db8::2]:24/tls", want: Target{Network: "tcp", Address: "[2001:db8::2]:24", TLS: true}},
		{in: "2001:db8::2", want: Target{Network: "tcp", Address: "[2001:db8::2]:2003"}},
		{in: "/var/run/cyrus/socket/lmtp", want: Target{Network: "unix", Address: "/var/run/cyrus/socket/lmtp", NoAuth: true}},
		// Addresses: by whole string, or by host part keeping options.
		{in: "backend1", want: Target{Network: "tcp", Address: "10.0.0.1:24"}},
		{in: "backend1/tls", want: Target{Network: "tcp", Address: "10.0.0.1:24", TLS: true}},
		{in: "backend2/tls", want: Target{Network: "tcp", Address: "10.0.0.2:2004", TLS: true}},
		{in: "local", want: Target{Network: "unix", Address: "/run/cyrus/socket/lmtp", NoAuth: true}},
		{in: "badmap", wantErr: true},
		// Garbage.
		{in: "", wantErr: true},
		{in: "host name", wantErr: true},
		{in: "host\n", wantErr: true},
		{in: "host:", wantErr: true},
		{in: "host:0", wantErr: true},
		{in: "host:65536", wantErr: true},
		{in: "host:http", wantErr: true},
		{in: "host:-1", wantErr: true},
		{in: "host/ssl", wantErr: true},
		{in: "host/", wantErr: true},
		{in: ":2003", wantErr: true},
		{in: "[::1", wantErr: true},
		{in: "[::1]x", wantErr: true},
		{in: "[host]:2003", wantErr: true},
		{in: "[10.0.0.1]:2003", wantErr: true},
		{in: "a:b:c", wantErr: true},
		{in: "h@st", wantErr: true},
		{in: "/", wantErr: true},
		{in: "/run/dir/", wantErr: true},
		{in: strings.Repeat("a", 300), wantErr: true},
	}
	for _, tc := range tests {
		got, err := ParseServer(tc.in, cfg)
		if tc.wantErr {
			if err == nil {
				t.Errorf("ParseServer(%q) = %+v, want error", tc.in, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseServer(%q): %v", tc.in, err)
			continue
		}
		tc.want.Name = tc.in
		if got != tc.want {
			t.Errorf("ParseServer(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseServerDefaults(t *testing.T) {
	def := DefaultConfig()
	for _, cfg := range []*Config{nil, &def} {
		got, err := ParseServer("backend1", cfg)
		if err != nil || got.Address != "backend1:2003" {
			t.Errorf("ParseServer with %v = %+v, %v; want port 2003", cfg, got, err)
		}
	}
	// A zero port is not silently replaced by a default.
	if got, err := ParseServer("backend1", &Config{}); err == nil {
		t.Errorf("DefaultPort 0: %+v, want an error", got)
	}
	got, err := ParseServer("backend1", &Config{DefaultPort: 24})
	if err != nil || got.Address != "backend1:24" {
		t.Errorf("DefaultPort 24: %+v, %v", got, err)
	}
}

// FuzzParseServer: server strings come from mailboxes.db and the MUPDATE
// master. Parsing must never panic, and what it accepts must be dialable.
func FuzzParseServer(f *testing.F) {
	for _, s := range []string{"backend1", "10.0.0.2:2003/tls", "[::1]:24/noauth", "/run/lmtp", "h:", "[::1"} {
		f.Add(s)
	}
	cfg := &Config{Addresses: map[string]string{"m": "[::1]:25"}}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseServer(s, cfg)
		if err != nil {
			return
		}
		if got.Name != s {
			t.Fatalf("Name = %q, want %q", got.Name, s)
		}
		switch got.Network {
		case "unix":
			if !strings.HasPrefix(got.Address, "/") || !got.NoAuth {
				t.Fatalf("bad unix target %+v", got)
			}
		case "tcp":
			if strings.ContainsAny(got.Address, " \r\n\x00/") || got.host() == "" {
				t.Fatalf("bad tcp target %+v", got)
			}
		default:
			t.Fatalf("network %q", got.Network)
		}
	})
}
