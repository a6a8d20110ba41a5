package journal

import (
	"log/slog"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/systemdtest"
)

// FuzzEncodeRoundTrip feeds attribute keys and values from outside (a
// recipient address, a backend's reply text) through the field mapping and
// the wire encoding, and checks that a journald-compatible parser gets the
// same values back under valid field names: no value can end early, inject a
// field or make journald drop the entry.
func FuzzEncodeRoundTrip(f *testing.F) {
	f.Add("delivered", "rcpt", "alice@example.org")
	f.Add("multi\nline", "reply", "452 4.2.2 over quota\r\nsecond")
	f.Add("", "", "")
	f.Add("x", "grp.ünï-key", "FAKE=1\nMESSAGE=forged\n")
	f.Add("\x00\xff", "dur_ms", "\n")
	f.Fuzz(func(t *testing.T, msg, key, value string) {
		fields := []field{{"MESSAGE", msg}, {"PRIORITY", "6"}}
		fields = appendAttr(fields, "LMTPGATE_", slog.String(key, value))
		got, err := systemdtest.ParseJournal(encode(fields))
		if err != nil {
			t.Fatalf("encoded entry does not parse: %v", err)
		}
		if len(got) != len(fields) {
			t.Fatalf("got %d fields, want %d: %q", len(got), len(fields), got)
		}
		for _, fl := range fields {
			if !systemdtest.ValidFieldName(fl.name) {
				t.Errorf("invalid field name %q from key %q", fl.name, key)
			}
			if got[fl.name] != fl.value {
				t.Errorf("%s = %q, want %q", fl.name, got[fl.name], fl.value)
			}
		}
	})
}
