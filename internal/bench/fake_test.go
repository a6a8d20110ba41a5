package bench

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

// scriptBackend is a go-smtp LMTP server whose replies depend on the
// recipient's local part: "rtemp…" is refused at RCPT with 451, "rperm…"
// with 550; "dtemp…" gets 452 after DATA, "dperm…" 554; anything else 250.
// A sender starting with "mailfail" is refused at MAIL with 451. It checks
// the client against an independent LMTP implementation.
type scriptBackend struct {
	mu       sync.Mutex
	messages int
	authed   int
}

type scriptSession struct {
	be    *scriptBackend
	rcpts []string
}

func (be *scriptBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &scriptSession{be: be}, nil
}

func (s *scriptSession) Reset()        { s.rcpts = nil }
func (s *scriptSession) Logout() error { return nil }
func (s *scriptSession) Mail(from string, _ *smtp.MailOptions) error {
	if strings.HasPrefix(from, "mailfail") {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	}
	return nil
}
func (s *scriptSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	switch {
	case strings.HasPrefix(to, "rtemp"):
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "busy"}
	case strings.HasPrefix(to, "rperm"):
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "unknown"}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}
func (s *scriptSession) Data(r io.Reader) error { panic("LMTPData is used") }
func (s *scriptSession) LMTPData(r io.Reader, st smtp.StatusCollector) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	s.be.mu.Lock()
	s.be.messages++
	s.be.mu.Unlock()
	for _, to := range s.rcpts {
		switch {
		case strings.HasPrefix(to, "dtemp"):
			st.SetStatus(to, &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "over quota"})
		case strings.HasPrefix(to, "dperm"):
			st.SetStatus(to, &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "rejected"})
		default:
			st.SetStatus(to, nil)
		}
	}
	return nil
}

func startScript(t *testing.T) (string, *scriptBackend) {
	t.Helper()
	be := &scriptBackend{}
	s := smtp.NewServer(be)
	s.LMTP = true
	s.Domain = "script.test"
	s.AllowInsecureAuth = true
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return l.Addr().String(), be
}

// startNull starts a NullBackend on n loopback ports.
func startNull(t testing.TB, n int) (*NullBackend, []string) {
	t.Helper()
	nb := &NullBackend{}
	var addrs []string
	for range n {
		a, err := nb.Listen(context.Background(), "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, a.String())
	}
	t.Cleanup(func() { nb.Close() })
	return nb, addrs
}
