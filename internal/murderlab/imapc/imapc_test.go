package imapc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Response
		err  bool
	}{
		{"greeting", "* OK [CAPABILITY IMAP4rev1 LITERAL+] 127.0.0.2 Cyrus IMAP ready\r\n",
			Response{Tag: "*", Status: "OK", Text: "[CAPABILITY IMAP4rev1 LITERAL+] 127.0.0.2 Cyrus IMAP ready"}, false},
		{"tagged no", "A001 NO Mailbox already exists\r\n",
			Response{Tag: "A001", Status: "NO", Text: "Mailbox already exists"}, false},
		{"status text with quote", "A002 BAD unbalanced \" quote\r\n",
			Response{Tag: "A002", Status: "BAD", Text: "unbalanced \" quote"}, false},
		{"continuation", "+ go ahead\r\n", Response{Tag: "+", Text: "go ahead"}, false},
		{"exists", "* 3 EXISTS\r\n", Response{Tag: "*", Fields: []any{Atom("3"), Atom("EXISTS")}}, false},
		{"list", "* LIST (\\HasNoChildren) \"/\" user/alice\r\n",
			Response{Tag: "*", Fields: []any{Atom("LIST"), List{Atom(`\HasNoChildren`)}, []byte("/"), Atom("user/alice")}}, false},
		{"list literal name", "* LIST () \"/\" {8}\r\nbb/sales\r\n",
			Response{Tag: "*", Fields: []any{Atom("LIST"), List{}, []byte("/"), []byte("bb/sales")}}, false},
		{"fetch literal", "* 1 FETCH (UID 7 BODY[HEADER] {5}\r\nab\r\nc)\r\n",
			Response{Tag: "*", Fields: []any{Atom("1"), Atom("FETCH"), List{Atom("UID"), Atom("7"), Atom("BODY[HEADER]"), []byte("ab\r\nc")}}}, false},
		{"fetch bracket with parens", "* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] \"x\")\r\n",
			Response{Tag: "*", Fields: []any{Atom("1"), Atom("FETCH"), List{Atom("BODY[HEADER.FIELDS (SUBJECT)]"), []byte("x")}}}, false},
		{"quoted escapes", "* ACL bb/sales anyone \"l\\\"r\\\\\"\r\n",
			Response{Tag: "*", Fields: []any{Atom("ACL"), Atom("bb/sales"), Atom("anyone"), []byte(`l"r\`)}}, false},
		{"nil", "* 1 FETCH (X NIL)\r\n", Response{Tag: "*", Fields: []any{Atom("1"), Atom("FETCH"), List{Atom("X"), Atom("NIL")}}}, false},
		{"empty", "", Response{}, true},
		{"truncated literal", "* 1 FETCH (BODY[] {10}\r\nabc", Response{}, true},
		{"huge literal", "* 1 FETCH (BODY[] {999999999999}\r\n", Response{}, true},
		{"negative literal", "* 1 FETCH (BODY[] {-1}\r\n", Response{}, true},
		{"no space after tag", "*OK\r\n", Response{}, true},
		{"unterminated quote", "* LIST () \"/\r\n", Response{}, true},
		{"unclosed list", "* LIST (a b\r\n", Response{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadResponse(bufio.NewReader(strings.NewReader(tc.in)))
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if err == nil && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

func TestQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"user/alice", `"user/alice"`},
		{`a"b\c`, `"a\"b\\c"`},
		{"", `""`},
		{"a\r\nb", "{4+}\r\na\r\nb"},
		{"grüße", "{7+}\r\ngrüße"},
	}
	for _, tc := range tests {
		if got := Quote(tc.in); got != tc.want {
			t.Errorf("Quote(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// fakeServer answers each command line with the scripted reply for its
// command word (after the tag), with "TAG" replaced by the command's tag.
func fakeServer(t *testing.T, script map[string]string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprint(c, "* OK fake ready\r\n")
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			f := strings.Fields(line)
			if len(f) < 2 {
				return
			}
			reply, ok := script[strings.ToUpper(f[1])]
			if !ok {
				reply = "TAG BAD unknown\r\n"
			}
			fmt.Fprint(c, strings.ReplaceAll(reply, "TAG", f[0]))
		}
	}()
	return ln.Addr().String()
}

func TestClient(t *testing.T) {
	addr := fakeServer(t, map[string]string{
		"LOGIN":   "TAG OK done\r\n",
		"CREATE":  "TAG NO [ALREADYEXISTS] Mailbox already exists\r\n",
		"EXAMINE": "* 2 EXISTS\r\n* 0 RECENT\r\nTAG OK [READ-ONLY] done\r\n",
		"UID": "* 1 FETCH (UID 4 BODY[HEADER] {20}\r\nSubject: hi\r\nX: y\r\n\r\n BODY[] {3}\r\nabc)\r\n" +
			"* 2 FETCH (UID 9 BODY[HEADER] \"Subject: two\r\n\r\n\")\r\nTAG OK done\r\n",
		"GETACL": "* ACL bb/sales anyone lrsp admin lrx\r\nTAG OK done\r\n",
		"LOGOUT": "* BYE bye\r\nTAG OK done\r\n",
	})
	ctx := context.Background()
	c, err := Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if c.Greeting != "fake ready" {
		t.Errorf("greeting %q", c.Greeting)
	}
	if err := c.Login(ctx, "admin", "pw"); err != nil {
		t.Fatal(err)
	}
	err = c.Create(ctx, "user/alice")
	var se *StatusError
	if !errors.As(err, &se) || se.Status != "NO" || !strings.Contains(se.Text, "ALREADYEXISTS") {
		t.Errorf("Create: %v, want NO ALREADYEXISTS", err)
	}
	n, err := c.Select(ctx, "INBOX")
	if err != nil || n != 2 {
		t.Errorf("Select = %d, %v; want 2", n, err)
	}
	acl, err := c.GetACL(ctx, "bb/sales")
	if err != nil || !reflect.DeepEqual(acl, map[string]string{"anyone": "lrsp", "admin": "lrx"}) {
		t.Errorf("GetACL = %v, %v", acl, err)
	}
	// The header section of message 2 arrives as a quoted string with a
	// CRLF inside, which is invalid; the client must report the error,
	// not hang or invent data.
	if _, err := c.FetchAll(ctx, true); err == nil {
		t.Error("FetchAll accepted a quoted string with CRLF")
	}
}

func TestFetchAll(t *testing.T) {
	addr := fakeServer(t, map[string]string{
		"UID": "* 1 FETCH (UID 4 BODY[HEADER] {13}\r\nSubject: hi\r\n BODY[] {3}\r\nabc)\r\n" +
			"* 2 FETCH (UID 9 BODY[HEADER] \"Subject: two\" BODY[] NIL)\r\nTAG OK done\r\n",
		"LOGOUT": "* BYE bye\r\nTAG OK done\r\n",
	})
	ctx := context.Background()
	c, err := Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := c.FetchAll(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].UID != 4 || string(ms[0].Header) != "Subject: hi\r\n" || string(ms[0].Raw) != "abc" ||
		ms[1].UID != 9 || string(ms[1].Header) != "Subject: two" || len(ms[1].Raw) != 0 {
		t.Errorf("FetchAll = %+v", ms)
	}
	if err := c.Logout(ctx); err != nil {
		t.Errorf("Logout: %v", err)
	}
}

func TestDialBye(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			fmt.Fprint(c, "* BYE too many\r\n")
			c.Close()
		}
	}()
	if _, err := Dial(context.Background(), ln.Addr().String()); err == nil {
		t.Error("Dial accepted a BYE greeting")
	}
}

// FuzzReadResponse: server bytes are outside input; the parser must return
// a response or an error, never panic or allocate without bound.
func FuzzReadResponse(f *testing.F) {
	for _, s := range []string{
		"* OK ready\r\n",
		"* 1 FETCH (UID 4 BODY[] {3}\r\nabc)\r\n",
		"* LIST (\\Noselect) \"/\" {3}\r\nabc\r\n",
		"A1 NO [TRYCREATE] no\r\n",
		"* ACL x anyone \"lr\"\r\n",
		"+ \r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(strings.NewReader(string(b)))
		for i := 0; i < 8; i++ {
			if _, err := ReadResponse(r); err != nil {
				return
			}
		}
	})
}
