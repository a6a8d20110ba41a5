package address

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	def := DefaultSettings()
	userid := def
	userid.VirtDomains = "userid"
	on := def
	on.VirtDomains = "on"
	postBB := userid
	postBB.PostUser = "bb"
	dotSep := def
	dotSep.UnixHierarchySep = false
	noDown := def
	noDown.Downcase = false
	emptyDef := def
	emptyDef.DefaultDomain = ""

	tests := []struct {
		name    string
		s       Settings
		rcpt    string
		mailbox string
		forward string
		shared  bool
		user    string
		domain  string
		detail  string
	}{
		// Cyrus imap/lmtpd.c, process_recipient (virtdomains userid).
		{"9.2 Fred@Internal", userid, "Fred@Internal", "user.fred", "fred@internal", false, "fred", "", ""},
		{"9.2 detail with domain", userid, "fred+Sent@example.com", "example.com!user.fred", "fred+Sent@example.com", false, "fred", "example.com", "Sent"},
		{"9.2 nested detail", userid, "fred+Work/Q1", "user.fred", "fred+Work/Q1@internal", false, "fred", "", "Work/Q1"},
		{"9.2 shared", userid, "+shared/lists", "shared.lists", "+shared/lists@internal", true, "", "", "shared/lists"},
		{"9.2 postuser bb", postBB, "bb+shared/lists", "shared.lists", "bb+shared/lists@internal", true, "", "", "shared/lists"},
		{"9.2 dot in user", userid, "john.doe", "user.john^doe", "john.doe@internal", false, "john.doe", "", ""},

		// wire/a1-lmtp-proxy-normal.txt and b-frontend-to-backend1-lmtp.txt
		// (virtdomains off, all defaults).
		{"a1 alice", def, "alice@example.org", "user.alice", "alice@internal", false, "alice", "", ""},
		{"a1 ALICE", def, "ALICE@example.org", "user.alice", "alice@internal", false, "alice", "", ""},
		{"a1 alice+Sub", def, "alice+Sub@example.org", "user.alice", "alice+Sub@internal", false, "alice", "", "Sub"},
		{"a1 alice+sub", def, "alice+sub@example.org", "user.alice", "alice+sub@internal", false, "alice", "", "sub"},
		{"a1 bob+nosuchfolder", def, "bob+nosuchfolder@example.org", "user.bob", "bob+nosuchfolder@internal", false, "bob", "", "nosuchfolder"},
		{"a1 +bb/sales", def, "+bb/sales@example.org", "bb.sales", "+bb/sales@internal", true, "", "", "bb/sales"},
		// Cyrus answers 550 for this one: bb^sales does not exist.
		{"a1 +bb.sales", def, "+bb.sales@example.org", "bb^sales", "+bb.sales@internal", true, "", "", "bb.sales"},
		// Empty postuser: bb is a user, whose INBOX does not exist (550).
		{"a1 bb+sales", def, "bb+sales@example.org", "user.bb", "bb+sales@internal", false, "bb", "", "sales"},
		{"a1 carol+Archive", def, "carol+Archive@example.org", "user.carol", "carol+Archive@internal", false, "carol", "", "Archive"},
		{"a1 +shared/support", def, "+shared/support@example.org", "shared.support", "+shared/support@internal", true, "", "", "shared/support"},
		{"a1 nosuch", def, "nosuch@example.org", "user.nosuch", "nosuch@internal", false, "nosuch", "", ""},
		{"a1 dave@nonexistent", def, "dave@nonexistent.invalid", "user.dave", "dave@internal", false, "dave", "", ""},
		{"a1 dave bare", def, "dave", "user.dave", "dave@internal", false, "dave", "", ""},

		// Framing tolerated.
		{"angle brackets", def, "<alice@example.org>", "user.alice", "alice@internal", false, "alice", "", ""},
		{"source route", def, "<@a.example,@b.example:alice@example.org>", "user.alice", "alice@internal", false, "alice", "", ""},
		{"spaces", def, "  <alice@example.org> ", "user.alice", "alice@internal", false, "alice", "", ""},
		{"quoted localpart", def, `"john doe"@example.org`, "user.john doe", "john doe@internal", false, "john doe", "", ""},
		{"quoted with escape", def, `"a\"b"@x`, `user.a"b`, `a"b@internal`, false, `a"b`, "", ""},
		{"last at splits", userid, "a@b@example.com", "example.com!user.a@b", "a@b@example.com", false, "a@b", "example.com", ""},

		// virtdomains.
		{"on keeps domain", on, "Fred@Example.COM", "example.com!user.fred", "fred@example.com", false, "fred", "example.com", ""},
		{"userid default domain", userid, "fred@internal", "user.fred", "fred@internal", false, "fred", "", ""},
		{"shared keeps domain", userid, "+lists@example.com", "example.com!lists", "+lists@example.com", true, "", "example.com", "lists"},
		{"empty defaultdomain means internal", emptyDef, "x", "user.x", "x@internal", false, "x", "", ""},

		// Detail handling.
		{"detail not downcased", def, "Fred+INBOX/Work", "user.fred", "fred+INBOX/Work@internal", false, "fred", "", "INBOX/Work"},
		{"empty detail", def, "fred+@example.org", "user.fred", "fred@internal", false, "fred", "", ""},
		{"second plus in detail", def, "fred+a+b", "user.fred", "fred+a+b@internal", false, "fred", "", "a+b"},
		{"empty components dropped", def, "+bb//sales/", "bb.sales", "+bb/sales@internal", true, "", "", "bb//sales/"},
		{"utf8 detail shared", def, "+Entwürfe", "Entw&APw-rfe", "+Entw&APw-rfe@internal", true, "", "", "Entwürfe"},
		{"ampersand detail", def, "+a&b", "a&-b", "+a&-b@internal", true, "", "", "a&b"},
		{"caret stays", def, "+a^b", "a^b", "+a^b@internal", true, "", "", "a^b"},

		// unixhierarchysep off: '.' separates detail components; a '.' in
		// the localpart is still escaped (mbname_intname always does).
		{"dotsep shared", dotSep, "+bb.sales@example.org", "bb.sales", "+bb.sales@internal", true, "", "", "bb.sales"},
		{"dotsep slash is literal", dotSep, "+bb/sales", "bb/sales", "+bb/sales@internal", true, "", "", "bb/sales"},
		{"dotsep detail", dotSep, "fred+Work.Q1", "user.fred", "fred+Work.Q1@internal", false, "fred", "", "Work.Q1"},
		{"dotsep dotted user", dotSep, "john.doe", "user.john^doe", "john.doe@internal", false, "john.doe", "", ""},

		// Downcase off.
		{"no downcase", noDown, "Fred@Example.org", "user.Fred", "Fred@internal", false, "Fred", "", ""},
		{"non-ascii not lowered", def, "ÄBC", "user.Äbc", "Äbc@internal", false, "Äbc", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse(tt.s, tt.rcpt)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.rcpt, err)
			}
			want := Recipient{Mailbox: tt.mailbox, Forward: tt.forward, Shared: tt.shared, User: tt.user, Domain: tt.domain, Detail: tt.detail}
			if r != want {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", tt.rcpt, r, want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	def := DefaultSettings()
	post := def
	post.PostUser = "bb"
	tests := []struct {
		name      string
		s         Settings
		rcpt      string
		noMailbox bool
	}{
		{"empty", def, "", false},
		{"null path", def, "<>", false},
		{"double brackets", def, "<<>>", false},
		{"unbalanced", def, "<alice@example.org", false},
		{"unbalanced right", def, "alice@example.org>", false},
		{"route without colon", def, "<@a.example,@b.example>", false},
		{"unterminated quote", def, `"alice@example.org`, false},
		{"junk after quote", def, `"a"b@x`, false},
		{"control char", def, "ali\x00ce", false},
		{"newline", def, "alice\r\n@x", false},
		{"only spaces", def, "   ", false},
		{"shared without folder", def, "+@example.org", true},
		{"bare at", def, "@example.org:", false},
		{"at-sign start is a route", post, "@example.org", false},
		{"empty localpart with postuser", post, `""@example.org`, true},
		{"postuser without folder", post, "bb@example.org", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse(tt.s, tt.rcpt)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error", tt.rcpt, r)
			}
			var ae *Error
			if !errors.As(err, &ae) {
				t.Fatalf("Parse(%q) error %T, want *Error", tt.rcpt, err)
			}
			if ae.NoMailbox != tt.noMailbox {
				t.Errorf("Parse(%q) NoMailbox = %v, want %v (%v)", tt.rcpt, ae.NoMailbox, tt.noMailbox, err)
			}
			if ae.Addr != tt.rcpt || ae.Reason == "" {
				t.Errorf("error fields: %+v", ae)
			}
		})
	}
}

func TestEncodeMUTF7(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"INBOX", "INBOX"},
		{"&", "&-"},
		{"a&b&", "a&-b&-"},
		// RFC 3501 §5.1.3 example.
		{"~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"},
		{"Entwürfe", "Entw&APw-rfe"},
		{"Ü", "&ANw-"},
		{"€uro", "&IKw-uro"},
		// Outside the BMP: a surrogate pair.
		{"😀", "&2D3eAA-"},
		// Controls are not printable ASCII.
		{"a\tb", "a&AAk-b"},
		{"\x7f", "&AH8-"},
		// Invalid UTF-8 becomes U+FFFD.
		{"a\xffb", "a&,,0-b"},
	}
	for _, tt := range tests {
		if got := EncodeMUTF7(tt.in); got != tt.want {
			t.Errorf("EncodeMUTF7(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"alice@example.org", "<alice@example.org>", "+bb/sales@example.org", "+bb.sales@example.org",
		"bb+sales@example.org", "dave", "<>", "", "Fred@Internal", "fred+Sent@example.com",
		"<@a,@b:x@y>", `"john doe"@x`, "+Entwürfe", "a@b@c", "+@x", "\xff\xfe",
	} {
		f.Add(s, uint8(0))
		f.Add(s, uint8(0xff))
	}
	f.Fuzz(func(t *testing.T, rcpt string, flags uint8) {
		s := Settings{
			UnixHierarchySep: flags&1 != 0,
			VirtDomains:      []string{"off", "userid", "on", ""}[(flags>>1)&3],
			DefaultDomain:    []string{"internal", "", "example.com", "x"}[(flags>>3)&3],
			PostUser:         []string{"", "bb"}[(flags>>5)&1],
			Downcase:         flags&0x40 != 0,
		}
		r, err := Parse(s, rcpt)
		if err != nil {
			var ae *Error
			if !errors.As(err, &ae) {
				t.Fatalf("error %T is not *Error", err)
			}
			return
		}
		if r.Mailbox == "" || r.Forward == "" {
			t.Fatalf("Parse(%q) success with empty Mailbox/Forward: %+v", rcpt, r)
		}
		if r.Shared == (r.User != "") {
			t.Fatalf("Parse(%q): Shared=%v but User=%q", rcpt, r.Shared, r.User)
		}
	})
}
