// Package address turns an LMTP RCPT TO address into the Cyrus mailbox that
// must exist before the recipient is accepted, and into the address that is
// forwarded to the backend, exactly as a Cyrus 3.6 frontend does it
// (lmtpengine process_recipient, mbname_from_recipient, mbname_intname and
// mbname_recipient in imap/mboxname.c).
//
// The frontend only checks the user's INBOX (or, for the shared-folder
// "postuser", the full shared mailbox); everything about +detail folders is
// the backend's business, which is why the detail is carried along in the
// forwarded address and not looked up here.
package address

import (
	"strings"
)

// Settings are the imapd.conf options that shape recipient parsing. The
// zero value is not Cyrus's default; start from DefaultSettings.
type Settings struct {
	// UnixHierarchySep (unixhierarchysep, default on in Cyrus 3.x) makes
	// "/" the separator inside a +detail; off, it is ".".
	UnixHierarchySep bool
	// VirtDomains is "off" (default, also ""), "userid" or "on". With
	// "off" the domain of the address is discarded.
	VirtDomains string
	// DefaultDomain (defaultdomain) is treated as "no domain". Empty means
	// Cyrus's default, "internal".
	DefaultDomain string
	// PostUser (postuser) is the localpart that addresses a shared folder;
	// Cyrus's default is the empty string, so "+shared/lists@host" works.
	PostUser string
	// Downcase (lmtp_downcase_rcpt, default on) lowercases the localpart
	// and the domain, never the detail.
	Downcase bool
}

// DefaultSettings returns the Cyrus 3.6 defaults.
func DefaultSettings() Settings {
	return Settings{
		UnixHierarchySep: true,
		VirtDomains:      "off",
		DefaultDomain:    "internal",
		PostUser:         "",
		Downcase:         true,
	}
}

// Recipient is one parsed RCPT TO address.
type Recipient struct {
	// Mailbox is the Cyrus internal name to look up at RCPT time: the
	// user's INBOX ("user.fred", "example.com!user.fred", "user.john^doe")
	// or the full shared mailbox ("shared.lists").
	Mailbox string
	// Forward is the address to give the backend, rebuilt as Cyrus's
	// mbname_recipient does: localpart[+detail]@domain, the default domain
	// when there is none, and the postuser as localpart for a shared
	// folder. The detail is in modified UTF-7 with empty components
	// dropped.
	Forward string
	// Shared is true when the localpart equals the postuser.
	Shared bool
	// User is the localpart (after downcasing); empty for shared.
	User string
	// Domain is the domain kept under virtdomains, else "".
	Domain string
	// Detail is the text after the first '+', exactly as given.
	Detail string
}

// Error is a recipient address that cannot be delivered to.
type Error struct {
	// Addr is the address as received.
	Addr string
	// Reason says what is wrong, for the log.
	Reason string
	// NoMailbox is set when the address is well formed but names no
	// mailbox at all (e.g. "+@host": a shared folder with an empty path).
	// Cyrus answers such an address with 550 5.1.1 like any unknown
	// mailbox; a syntax error (NoMailbox false) is 501 5.5.4.
	NoMailbox bool
}

func (e *Error) Error() string {
	return "recipient " + quote(e.Addr) + ": " + e.Reason
}

func quote(s string) string {
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return "\"" + strings.ToValidUTF8(s, "\uFFFD") + "\""
}

// Parse maps rcpt (as go-smtp passes it: normally without angle brackets,
// but "<...>" and an RFC 5321 source route "@a,@b:" are tolerated) to a
// Recipient. Errors are *Error.
//
// The steps follow Cyrus 3.6: split at the last '@'; drop the domain unless
// virtdomains is on (or userid) and it differs from the default domain;
// the text after the first '+' is the detail, converted to modified UTF-7
// and split on the external hierarchy separator (empty components are
// dropped, as strarray_split does); lowercase localpart and domain
// (ASCII only, as Cyrus's lcase); a localpart equal to the postuser means
// a shared folder named by the detail components; a user recipient is
// looked up as its INBOX. Every '.' inside a component becomes '^' in the
// internal name whatever unixhierarchysep says (mbname_intname always
// escapes it), so "john.doe" is "user.john^doe" in both modes; with
// unixhierarchysep off a '.' in the detail separates components instead.
//
// Parse mirrors Cyrus's steps one by one, in their order, and is kept as one
// function so that it can be checked against process_recipient and
// mbname_from_recipient side by side.
func Parse(s Settings, rcpt string) (Recipient, error) {
	fail := func(reason string) (Recipient, error) {
		return Recipient{}, &Error{Addr: rcpt, Reason: reason}
	}
	addr, ok := strip(rcpt)
	if !ok {
		return fail("malformed address")
	}
	if addr == "" {
		return fail("empty address")
	}
	for i := 0; i < len(addr); i++ {
		if c := addr[i]; c < 0x20 || c == 0x7f {
			return fail("control character in address")
		}
	}

	defdom := s.DefaultDomain
	if defdom == "" {
		defdom = "internal"
	}
	virt := s.VirtDomains == "userid" || s.VirtDomains == "on"

	local, domain := addr, ""
	if at := strings.LastIndexByte(addr, '@'); at >= 0 {
		local, domain = addr[:at], addr[at+1:]
	}
	if s.Downcase {
		domain = lowerASCII(domain)
	}
	// The comparison with defaultdomain happens after downcasing:
	// Cyrus's mbname_downcaseuser sets the lowered domain again, and
	// setting a domain equal to defaultdomain clears it, so "Fred@Internal"
	// is user.fred (Cyrus imap/lmtpd.c, process_recipient).
	if !virt || domain == defdom {
		domain = ""
	}

	var detail string
	hasDetail := false
	if plus := strings.IndexByte(local, '+'); plus >= 0 {
		local, detail, hasDetail = local[:plus], local[plus+1:], true
	}
	if s.Downcase {
		local = lowerASCII(local)
	}

	sep := "/"
	if !s.UnixHierarchySep {
		sep = "."
	}
	var boxes []string
	if hasDetail {
		for _, c := range strings.Split(EncodeMUTF7(detail), sep) {
			if c != "" {
				boxes = append(boxes, c)
			}
		}
	}

	r := Recipient{Detail: detail}
	var name strings.Builder
	// One allocation for each name, sized up front (the common case is
	// a plain user).
	name.Grow(len(domain) + 1 + len("user.") + len(local) + len(detail) + 8)
	if domain != "" {
		r.Domain = domain
		name.WriteString(domain)
		name.WriteByte('!')
	}
	if local == s.PostUser {
		r.Shared = true
		if len(boxes) == 0 {
			return Recipient{}, &Error{Addr: rcpt, Reason: "shared folder address without a folder", NoMailbox: true}
		}
		for i, c := range boxes {
			if i > 0 {
				name.WriteByte('.')
			}
			name.WriteString(intComponent(c))
		}
	} else {
		if local == "" {
			return Recipient{}, &Error{Addr: rcpt, Reason: "empty localpart", NoMailbox: true}
		}
		r.User = local
		name.WriteString("user.")
		name.WriteString(intComponent(local))
	}
	r.Mailbox = name.String()

	var fwd strings.Builder
	fwd.Grow(len(s.PostUser) + len(local) + 2 + len(detail) + max(len(domain), len(defdom)) + 8)
	if r.Shared {
		fwd.WriteString(s.PostUser)
	} else {
		fwd.WriteString(local)
	}
	if len(boxes) > 0 {
		fwd.WriteByte('+')
		fwd.WriteString(strings.Join(boxes, sep))
	}
	fwd.WriteByte('@')
	if domain != "" {
		fwd.WriteString(domain)
	} else {
		fwd.WriteString(defdom)
	}
	r.Forward = fwd.String()
	return r, nil
}

// strip removes surrounding whitespace, angle brackets and a source route,
// and unquotes a quoted localpart, as Cyrus's process_recipient does before
// it looks at the address. It reports false for a malformed address
// (unbalanced brackets or quotes, a source route without ':').
func strip(a string) (string, bool) {
	a = strings.TrimSpace(a)
	if strings.HasPrefix(a, "<") {
		if !strings.HasSuffix(a, ">") || len(a) < 2 {
			return "", false
		}
		a = a[1 : len(a)-1]
	} else if strings.HasSuffix(a, ">") {
		return "", false
	}
	if strings.ContainsAny(a, "<>") {
		return "", false
	}
	if strings.HasPrefix(a, "@") {
		colon := strings.IndexByte(a, ':')
		if colon < 0 {
			return "", false
		}
		a = a[colon+1:]
	}
	if strings.HasPrefix(a, "\"") {
		// Quoted localpart (RFC 5321 Quoted-string): backslash quotes the
		// next character; the domain follows the closing quote.
		var b strings.Builder
		i := 1
		for ; i < len(a) && a[i] != '"'; i++ {
			if a[i] == '\\' {
				i++
				if i == len(a) {
					return "", false
				}
			}
			b.WriteByte(a[i])
		}
		if i == len(a) {
			return "", false
		}
		rest := a[i+1:]
		if rest != "" && rest[0] != '@' {
			return "", false
		}
		return b.String() + rest, true
	}
	return a, true
}

// intComponent escapes one mailbox-name component for the internal name:
// '.' is the internal hierarchy separator, so a literal dot is stored as
// '^' (cyrus-imapd mbname_intname/_append_intbuf).
func intComponent(c string) string {
	return strings.ReplaceAll(c, ".", "^")
}

// lowerASCII lowercases ASCII letters only, as Cyrus's lcase does; other
// bytes, including UTF-8 sequences, are left alone.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
