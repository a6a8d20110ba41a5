package address

import (
	"encoding/base64"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// mutf7 is the modified BASE64 of RFC 3501 §5.1.3: the standard alphabet
// with ',' in place of '/', and no padding.
var mutf7 = base64.NewEncoding("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,").WithPadding(base64.NoPadding)

// EncodeMUTF7 converts UTF-8 text to IMAP modified UTF-7 (RFC 3501
// §5.1.3), the charset of Cyrus mailbox names. Printable US-ASCII other
// than '&' stands for itself, '&' becomes "&-", and every run of other
// characters becomes '&', the modified BASE64 of its UTF-16BE form, and
// '-'. Invalid UTF-8 bytes are encoded as U+FFFD, as Cyrus's charset
// conversion replaces undecodable input rather than rejecting it.
func EncodeMUTF7(s string) string {
	var b strings.Builder
	var run []uint16 // pending non-ASCII run, as UTF-16 code units
	flush := func() {
		if len(run) == 0 {
			return
		}
		raw := make([]byte, 0, 2*len(run))
		for _, u := range run {
			raw = append(raw, byte(u>>8), byte(u))
		}
		b.WriteByte('&')
		b.WriteString(mutf7.EncodeToString(raw))
		b.WriteByte('-')
		run = run[:0]
	}
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if r >= 0x20 && r <= 0x7e {
			flush()
			if r == '&' {
				b.WriteString("&-")
			} else {
				b.WriteRune(r)
			}
			continue
		}
		if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
			run = append(run, uint16(r1), uint16(r2))
		} else {
			run = append(run, uint16(r))
		}
	}
	flush()
	return b.String()
}
