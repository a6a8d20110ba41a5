package fakelmtp_test

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/lmtpgate/lmtpgate/internal/backend/fakelmtp"
)

func dial(t *testing.T, s *fakelmtp.Server) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := smtp.NewClientLMTP(conn)
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("test"); err != nil {
		t.Fatal(err)
	}
	return c
}

func code(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// Like Cyrus lmtpd on TCP: MAIL before AUTH is refused with 430, a
// non-admin is refused, the admin gets in.
func TestAuthLikeCyrus(t *testing.T) {
	s := fakelmtp.New(t)
	c := dial(t, s)
	if ok, mechs := c.Extension("AUTH"); !ok || !strings.Contains(mechs, "PLAIN") {
		t.Fatalf("AUTH PLAIN not advertised: %v %q", ok, mechs)
	}
	if err := c.Mail("s@example.org", nil); code(err) != 430 {
		t.Fatalf("MAIL before AUTH: %v, want 430", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "alice", "pw")); code(err) != 535 {
		t.Fatalf("AUTH as non-admin: %v, want 535", err)
	}
	c = dial(t, s)
	if err := c.Auth(sasl.NewPlainClient("", fakelmtp.User, fakelmtp.Password)); err != nil {
		t.Fatalf("AUTH as admin: %v", err)
	}
	if err := c.Mail("s@example.org", nil); err != nil {
		t.Fatalf("MAIL after AUTH: %v", err)
	}
	if s.Connections() != 2 || s.Transactions() != 1 {
		t.Errorf("connections %d transactions %d, want 2 and 1", s.Connections(), s.Transactions())
	}
}

func TestScriptedRepliesAndRestart(t *testing.T) {
	s := fakelmtp.New(t, fakelmtp.WithoutAuth())
	s.SetRcptReply("nobody@x", fakelmtp.UserUnknown)
	s.SetDataReply("full@x", fakelmtp.OverQuotaTemp)
	addr := s.Addr()
	s.Stop()
	if _, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		t.Fatal("stopped server still accepts")
	}
	s.Start()
	if s.Addr() != addr {
		t.Fatalf("address changed across restart: %s -> %s", addr, s.Addr())
	}
	c := dial(t, s)
	if err := c.Mail("", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("nobody@x", nil); code(err) != 550 {
		t.Fatalf("RCPT nobody: %v, want 550", err)
	}
	for _, r := range []string{"a@x", "full@x"} {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: x\r\n\r\nhi\r\n"))
	resp, err := w.CloseWithLMTPResponse()
	var le smtp.LMTPDataError
	if !errors.As(err, &le) || le["full@x"] == nil || le["full@x"].Code != 452 || resp["a@x"] == nil {
		t.Fatalf("final replies: %v %v", resp, err)
	}
	m := s.Messages()
	if len(m) != 1 || !m[0].DeliveredTo("a@x") || m[0].DeliveredTo("full@x") || string(m[0].Body) != "Subject: x\r\n\r\nhi\r\n" {
		t.Fatalf("messages = %+v", m)
	}
}
