package mupdate_test

import (
	"crypto/tls"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/mupdate/fakemupdate"
	"github.com/lmtpgate/lmtpgate/internal/testcert"
)

// selfSigned returns a server config with a certificate for 127.0.0.1 and a
// CA file that trusts only it.
func selfSigned(t *testing.T) (server *tls.Config, caFile string) {
	cert, _ := testcert.New(t, "mupdate.test")
	return &tls.Config{Certificates: []tls.Certificate{cert}}, testcert.CAFile(t, cert)
}

// The credentials must only ever cross the wire inside TLS when the
// configuration asks for it: implicit TLS, and STARTTLS before AUTHENTICATE
// as Cyrus's own clients do (Cyrus imap/mupdate-client.c).
func TestTLSModes(t *testing.T) {
	serverTLS, clientTLS := selfSigned(t)
	for _, mode := range []string{"tls", "starttls"} {
		t.Run(mode, func(t *testing.T) {
			srv := fakemupdate.New(t)
			srv.SetTLS(serverTLS, mode)
			srv.Set("user.alice", "127.0.0.2!default", "alice\tlrswipkxtecdan\t")
			cfg := testConfig(srv.Addr())
			cfg.TLS, cfg.TLSCAFile = mode, clientTLS
			c, _ := newClient(t, cfg)
			if e := lookupOK(t, c, "user.alice"); e.Server != "127.0.0.2" {
				t.Fatalf("entry %+v", e)
			}
		})
	}
	t.Run("starttls not offered", func(t *testing.T) {
		srv := fakemupdate.New(t)
		srv.Set("user.alice", "127.0.0.2!default", "")
		cfg := testConfig(srv.Addr())
		cfg.TLS, cfg.TLSCAFile = "starttls", clientTLS
		c, _ := newClient(t, cfg)
		_, err := c.Lookup(t.Context(), "user.alice")
		wantUnavailable(t, err)
		if srv.Finds() != 0 {
			t.Fatal("the client went on without TLS")
		}
	})
	t.Run("untrusted certificate", func(t *testing.T) {
		srv := fakemupdate.New(t)
		srv.SetTLS(serverTLS, "starttls")
		srv.Set("user.alice", "127.0.0.2!default", "")
		cfg := testConfig(srv.Addr())
		cfg.TLS = "starttls"
		c, _ := newClient(t, cfg)
		_, err := c.Lookup(t.Context(), "user.alice")
		wantUnavailable(t, err)
		if srv.Finds() != 0 {
			t.Fatal("the client trusted an unknown certificate")
		}
	})
}
