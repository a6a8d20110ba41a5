package bench

import (
	"bytes"
	"net/mail"
	"strings"
	"testing"
	"time"
)

func TestNewBody(t *testing.T) {
	for _, size := range []int{100, 1 << 10, 16 << 10, 64 << 10, 1 << 20} {
		b := NewBody(size, 7)
		h := Header(nil, "s@example.org", "id1", time.Unix(0, 0), &b)
		whole := append(append([]byte{}, h...), b.Wire...)
		if !bytes.HasSuffix(whole, []byte("\r\n.\r\n")) {
			t.Fatalf("%d: does not end with CRLF.CRLF", size)
		}
		// Within 10% (or 500 bytes for tiny ones) of the nominal size.
		if d := len(whole) - size; d > max(size/10, 500) || -d > max(size/10, 500) {
			t.Errorf("%d: generated %d bytes", size, len(whole))
		}
		msg := whole[:len(whole)-3]
		lines := strings.Split(string(msg), "\r\n")
		for i, l := range lines[:len(lines)-1] {
			if strings.ContainsAny(l, "\r\n") {
				t.Fatalf("%d: bare CR or LF in line %d", size, i)
			}
			if len(l) > 78 {
				t.Fatalf("%d: line %d has %d characters", size, i, len(l))
			}
			if strings.HasPrefix(l, ".") {
				t.Fatalf("%d: line %d starts with a dot", size, i)
			}
		}
		m, err := mail.ReadMessage(bytes.NewReader(msg))
		if err != nil {
			t.Fatalf("%d: not RFC 5322: %v", size, err)
		}
		if m.Header.Get("Message-ID") != "<id1@lmtpbench.invalid>" {
			t.Errorf("%d: Message-ID %q", size, m.Header.Get("Message-ID"))
		}
		if (size > attachmentThreshold) != strings.HasPrefix(m.Header.Get("Content-Type"), "multipart/mixed") {
			t.Errorf("%d: Content-Type %q", size, m.Header.Get("Content-Type"))
		}
		if again := NewBody(size, 7); !bytes.Equal(again.Wire, b.Wire) {
			t.Errorf("%d: same seed, different body", size)
		}
	}
}
