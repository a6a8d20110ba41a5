package mupdate_test

import (
	"bufio"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/mupdate"
)

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []mupdate.Response // responses in order; then EOF
	}{
		{
			name: "c1 greeting of the master",
			in: "* AUTH \"PLAIN\" \"LOGIN\"\r\n* COMPRESS \"DEFLATE\"\r\n* PARTIAL-UPDATE\r\n" +
				"* OK MUPDATE \"127.0.0.1\" \"Cyrus IMAP\" \"3.6.1-Debian-3.6.1-4+deb12u5\" \"(master)\"\r\n",
			want: []mupdate.Response{
				{Tag: "*", Kind: "AUTH", Args: []string{"PLAIN", "LOGIN"}},
				{Tag: "*", Kind: "COMPRESS", Args: []string{"DEFLATE"}},
				{Tag: "*", Kind: "PARTIAL-UPDATE", Args: []string{}},
				{Tag: "*", Kind: "OK", Args: []string{"MUPDATE", "127.0.0.1", "Cyrus IMAP", "3.6.1-Debian-3.6.1-4+deb12u5", "(master)"}},
			},
		},
		{
			name: "c2 greeting of the replica",
			in:   "* OK MUPDATE \"127.0.0.1\" \"Cyrus IMAP\" \"3.6.1-Debian-3.6.1-4+deb12u5\" \"mupdate://127.0.0.1:3905\"\r\n",
			want: []mupdate.Response{{Tag: "*", Kind: "OK", Args: []string{"MUPDATE", "127.0.0.1", "Cyrus IMAP", "3.6.1-Debian-3.6.1-4+deb12u5", "mupdate://127.0.0.1:3905"}}},
		},
		{
			name: "c1 FIND user.alice",
			in: "A02 MAILBOX {10+}\r\nuser.alice {17+}\r\n127.0.0.2!default {21+}\r\nalice\tlrswipkxtecdan\t\r\n" +
				"A02 OK \"Search completed\"\r\n",
			want: []mupdate.Response{
				{Tag: "A02", Kind: "MAILBOX", Args: []string{"user.alice", "127.0.0.2!default", "alice\tlrswipkxtecdan\t"}},
				{Tag: "A02", Kind: "OK", Args: []string{"Search completed"}},
			},
		},
		{
			name: "c1 FIND user.alice.Sub, two ACL entries",
			in:   "A04 MAILBOX {14+}\r\nuser.alice.Sub {17+}\r\n127.0.0.2!default {30+}\r\nalice\tlrswipkxtecdan\tanyone\tp\t\r\n",
			want: []mupdate.Response{{Tag: "A04", Kind: "MAILBOX", Args: []string{"user.alice.Sub", "127.0.0.2!default", "alice\tlrswipkxtecdan\tanyone\tp\t"}}},
		},
		{
			name: "c3 bare LF and CRLF mixed",
			in:   "A01 MAILBOX {10+}\nuser.carol {17+}\r\n127.0.0.3!default {21+}\ncarol\tlrswipkxtecdan\t\nA01 OK \"Search completed\"\n",
			want: []mupdate.Response{
				{Tag: "A01", Kind: "MAILBOX", Args: []string{"user.carol", "127.0.0.3!default", "carol\tlrswipkxtecdan\t"}},
				{Tag: "A01", Kind: "OK", Args: []string{"Search completed"}},
			},
		},
		{
			name: "c2 refused auth and login first",
			in:   "A01 NO \"undefined error!\"\r\nA02 BAD \"Please login first\"\r\nA03 OK \"bye-bye\"\r\n",
			want: []mupdate.Response{
				{Tag: "A01", Kind: "NO", Args: []string{"undefined error!"}},
				{Tag: "A02", Kind: "BAD", Args: []string{"Please login first"}},
				{Tag: "A03", Kind: "OK", Args: []string{"bye-bye"}},
			},
		},
		{
			name: "reserve, synchronising literal, lower-case keyword",
			in:   "X1 reserve {10}\r\nuser.newby {16}\r\nbackend2!default\r\n",
			want: []mupdate.Response{{Tag: "X1", Kind: "RESERVE", Args: []string{"user.newby", "backend2!default"}}},
		},
		{
			name: "literal containing CRLF, braces and quotes",
			in:   "X1 MAILBOX {6+}\r\na\r\n{\"} x NIL\r\n",
			want: []mupdate.Response{{Tag: "X1", Kind: "MAILBOX", Args: []string{"a\r\n{\"}", "x", ""}}},
		},
		{
			name: "empty literal and quoted escapes",
			in:   "X1 MAILBOX {0+}\r\n \"a\\\"b\\\\c\" \"\"\r\n",
			want: []mupdate.Response{{Tag: "X1", Kind: "MAILBOX", Args: []string{"", "a\"b\\c", ""}}},
		},
		{
			name: "unquoted response text",
			in:   "S01 OK Begin TLS negotiation now\r\n* BYE \"Server Unable\"\r\n",
			want: []mupdate.Response{
				{Tag: "S01", Kind: "OK", Args: []string{"Begin", "TLS", "negotiation", "now"}},
				{Tag: "*", Kind: "BYE", Args: []string{"Server Unable"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufio.NewReader(strings.NewReader(tt.in))
			for i, want := range tt.want {
				got, err := mupdate.ReadResponse(br, 0)
				if err != nil {
					t.Fatalf("response %d: %v", i, err)
				}
				if len(got.Args) == 0 && len(want.Args) == 0 {
					got.Args, want.Args = nil, nil
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("response %d:\n got %#v\nwant %#v", i, got, want)
				}
			}
			if _, err := mupdate.ReadResponse(br, 0); err != io.EOF {
				t.Fatalf("after last response: err = %v, want io.EOF", err)
			}
		})
	}
}

func TestReadResponseErrors(t *testing.T) {
	long := strings.Repeat("a", 200)
	tests := []struct {
		name     string
		in       string
		max      int
		protocol bool // want ErrProtocol (else an I/O error)
	}{
		{"empty line", "\r\n", 0, true},
		{"tag only", "A01\r\n", 0, true},
		{"double space", "A01  OK\r\n", 0, true},
		{"trailing space", "A01 OK \r\n", 0, true},
		{"unterminated quote", "A01 OK \"abc\r\n", 0, true},
		{"bad escape", "A01 OK \"a\\nb\"\r\n", 0, true},
		{"quote glued to atom", "A01 OK \"a\"b\r\n", 0, true},
		{"literal not at end", "A01 MAILBOX {3+} x\r\nabc\r\n", 0, true},
		{"literal not a number", "A01 MAILBOX {x+}\r\n", 0, true},
		{"literal empty", "A01 MAILBOX {}\r\n", 0, true},
		{"literal negative", "A01 MAILBOX {-1}\r\n", 0, true},
		{"literal huge", "A01 MAILBOX {99999999999999999999}\r\n", 0, true},
		{"literal over cap", "A01 MAILBOX {101+}\r\n" + strings.Repeat("x", 101) + "\r\n", 100, true},
		{"line over cap", "A01 OK " + long + "\r\n", 100, true},
		{"response over 4x cap", "A MAILBOX {90+}\r\n" + strings.Repeat("x", 90) + " {90+}\r\n" + strings.Repeat("x", 90) +
			" {90+}\r\n" + strings.Repeat("x", 90) + " {90+}\r\n" + strings.Repeat("x", 90) + " {90+}\r\n" + strings.Repeat("x", 90) + "\r\n", 100, true},
		{"NUL in atom", "A01 OK a\x00b\r\n", 0, true},
		{"control in atom", "A01 OK a\x01b\r\n", 0, true},
		{"garbage of the fake", "A02 MAILBOX \x00\x01junk {not-a-literal} \"unterminated\r\n", 0, true},
		{"no continuation after literal", "A01 MAILBOX {3+}\r\nabcX\r\n", 0, true},
		{"truncated literal", "A01 MAILBOX {10+}\r\nabc", 0, false},
		{"eof in line", "A01 OK", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mupdate.ReadResponse(bufio.NewReaderSize(strings.NewReader(tt.in), 16), tt.max)
			if err == nil {
				t.Fatal("no error")
			}
			if got := errors.Is(err, mupdate.ErrProtocol); got != tt.protocol {
				t.Fatalf("errors.Is(%v, ErrProtocol) = %v, want %v", err, got, tt.protocol)
			}
		})
	}
}

func TestReadResponseTooManyArgs(t *testing.T) {
	in := "A01 OK" + strings.Repeat(" x", 100) + "\r\n"
	if _, err := mupdate.ReadResponse(bufio.NewReader(strings.NewReader(in)), 0); !errors.Is(err, mupdate.ErrProtocol) {
		t.Fatalf("err = %v, want ErrProtocol", err)
	}
}

func FuzzResponse(f *testing.F) {
	f.Add("A02 MAILBOX {10+}\r\nuser.alice {17+}\r\n127.0.0.2!default {21+}\r\nalice\tlrswipkxtecdan\t\r\nA02 OK \"Search completed\"\r\n")
	f.Add("* OK MUPDATE \"127.0.0.1\" \"Cyrus IMAP\" \"3.6.1\" \"(master)\"\r\n")
	f.Add("A01 NO \"undefined error!\"\r\n")
	f.Add("A01 MAILBOX {99999}\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		br := bufio.NewReaderSize(strings.NewReader(in), 16)
		for range 100 {
			r, err := mupdate.ReadResponse(br, 256)
			if err != nil {
				return
			}
			if r.Tag == "" && r.Kind == "" {
				// Both may be NIL-decoded atoms; anything else is fine.
				continue
			}
			for _, a := range r.Args {
				if len(a) > 256 {
					t.Fatalf("argument of %d bytes exceeds limit", len(a))
				}
			}
		}
	})
}

// A Scanner reading a long stream allocates nothing per response once
// its buffers have grown: this is what makes a dump of a million
// mailboxes cheap to read.
func TestScannerDoesNotAllocate(t *testing.T) {
	const one = "U01 MAILBOX {13+}\r\nuser.u0000001 {17+}\r\n127.0.0.2!default {24+}\r\nu0000001\tlrswipkxtecdan\t\r\n"
	in := strings.Repeat(one, 1100)
	s := mupdate.NewScanner(bufio.NewReader(strings.NewReader(in)), 0)
	if err := s.Scan(); err != nil { // grows the buffers
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if err := s.Scan(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Scan allocates %v times per response, want 0", allocs)
	}
	if string(s.Tag()) != "U01" || string(s.Kind()) != "MAILBOX" || s.NArgs() != 3 ||
		string(s.Arg(0)) != "user.u0000001" || string(s.Arg(2)) != "u0000001\tlrswipkxtecdan\t" {
		t.Errorf("last response: %v", s.Response())
	}
}

// The Scanner upper-cases the keyword and leaves the arguments as sent.
func TestScannerFields(t *testing.T) {
	s := mupdate.NewScanner(bufio.NewReader(strings.NewReader("u01 delete {5+}\r\nUser. \"a\\\"b\" NIL\r\n")), 0)
	if err := s.Scan(); err != nil {
		t.Fatal(err)
	}
	got := s.Response()
	want := mupdate.Response{Tag: "u01", Kind: "DELETE", Args: []string{"User.", "a\"b", ""}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v, want %#v", got, want)
	}
	if s.Buffered() != 0 {
		t.Errorf("Buffered = %d after the whole input", s.Buffered())
	}
	if err := s.Scan(); err != io.EOF {
		t.Errorf("Scan at end: %v, want io.EOF", err)
	}
}
