package backend

import (
	"bufio"
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestReadReply(t *testing.T) {
	long := strings.Repeat("x", maxReplyLine+1)
	tests := []struct {
		in   string
		code int
		ec   smtp.EnhancedCode
		msg  string
		err  bool
	}{
		{"250 2.1.5 Ok SESSIONID=<x>\r\n", 250, smtp.EnhancedCode{2, 1, 5}, "Ok SESSIONID=<x>", false},
		{"250-host\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n", 250, smtp.EnhancedCodeNotSet, "host\nPIPELINING\nAUTH PLAIN", false},
		{"550-5.1.1 Mailbox unknown.\r\n550 5.1.1 User unknown\r\n", 550, smtp.EnhancedCode{5, 1, 1}, "Mailbox unknown.\nUser unknown", false},
		{"354\r\n", 354, smtp.EnhancedCodeNotSet, "", false},
		{"452 4.2.2 Over quota\n", 452, smtp.EnhancedCode{4, 2, 2}, "Over quota", false},
		{"250 4.1.5 class mismatch\r\n", 250, smtp.EnhancedCodeNotSet, "4.1.5 class mismatch", false},
		{"250-a\r\n251 b\r\n", 0, smtp.EnhancedCode{}, "", true},
		{"25 short\r\n", 0, smtp.EnhancedCode{}, "", true},
		{"abc def\r\n", 0, smtp.EnhancedCode{}, "", true},
		{"650 out of range\r\n", 0, smtp.EnhancedCode{}, "", true},
		{"250xyz\r\n", 0, smtp.EnhancedCode{}, "", true},
		{"250 " + long + "\r\n", 0, smtp.EnhancedCode{}, "", true},
		{strings.Repeat("250-x\r\n", maxReplyLines+1), 0, smtp.EnhancedCode{}, "", true},
		{"250 no line end", 0, smtp.EnhancedCode{}, "", true},
	}
	for _, tc := range tests {
		rep, err := readReply(bufio.NewReaderSize(strings.NewReader(tc.in), 16))
		if tc.err {
			if err == nil {
				t.Errorf("%q: got %+v, want an error", clip(tc.in), rep)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if rep.Code != tc.code || rep.EnhancedCode != tc.ec || rep.Message != tc.msg {
			t.Errorf("%q: got %d %v %q, want %d %v %q", tc.in, rep.Code, rep.EnhancedCode, rep.Message, tc.code, tc.ec, tc.msg)
		}
	}
}

// FuzzReadReply: replies come from backends; parsing must never panic, and
// what it accepts is a code 200-599 with bounded text.
func FuzzReadReply(f *testing.F) {
	for _, s := range []string{"250 2.1.5 Ok\r\n", "250-a\r\n250 b\r\n", "550-5.1.1 x\r\n550 5.1.1 y\r\n", "354\r\n", "2", "250 9999.1.1 x\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		rep, err := readReply(bufio.NewReaderSize(strings.NewReader(in), 16))
		if err != nil {
			if !errors.Is(err, ErrProtocol) && !strings.Contains(err.Error(), "EOF") {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if rep.Code < 200 || rep.Code > 599 || len(rep.Message) > maxReplyLines*(maxReplyLine+2) {
			t.Fatalf("accepted %+v", rep)
		}
	})
}
