package mupdate_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/mupdate/fakemupdate"
)

// selfSigned returns a server config with a certificate for 127.0.0.1 and a
// client config that trusts only it.
func selfSigned(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mupdate.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		&tls.Config{RootCAs: pool}
}

// The credentials must only ever cross the wire inside TLS when the
// configuration asks for it: implicit TLS, and STARTTLS before AUTHENTICATE
// as Cyrus's own clients do (cyrus-interop §10.6).
func TestTLSModes(t *testing.T) {
	serverTLS, clientTLS := selfSigned(t)
	for _, mode := range []string{"tls", "starttls"} {
		t.Run(mode, func(t *testing.T) {
			srv := fakemupdate.New(t)
			srv.SetTLS(serverTLS, mode)
			srv.Set("user.alice", "127.0.0.2!default", "alice\tlrswipkxtecdan\t")
			cfg := testConfig(srv.Addr())
			cfg.TLS, cfg.TLSConfig = mode, clientTLS
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
		cfg.TLS, cfg.TLSConfig = "starttls", clientTLS
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
		cfg.TLS, cfg.TLSConfig = "starttls", &tls.Config{}
		c, _ := newClient(t, cfg)
		_, err := c.Lookup(t.Context(), "user.alice")
		wantUnavailable(t, err)
		if srv.Finds() != 0 {
			t.Fatal("the client trusted an unknown certificate")
		}
	})
}
