package config

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestKeys(t *testing.T) {
	keys := Keys()
	if !slices.IsSorted(keys) {
		t.Errorf("Keys() not sorted: %v", keys)
	}
	for _, want := range []string{
		"hostname", "listen", "shutdown_timeout", "log.level",
		"lmtp.max_message_size", "address.unixhierarchysep",
		"lookup.order", "lookup.cache.positive_ttl",
		"lookup.local_mupdate.password_file", "lookup.master_mupdate.backoff_max",
		"backends.addresses", "backends.max_idle",
	} {
		if !slices.Contains(keys, want) {
			t.Errorf("Keys() lacks %s", want)
		}
	}
	for _, section := range []string{"log", "lookup", "lookup.cache", "lookup.local_mupdate", "backends"} {
		if slices.Contains(keys, section) {
			t.Errorf("Keys() lists the section %s", section)
		}
	}
	// Each listed key, given a value of the wrong kind, must be a key the
	// parser knows: the error is about the value, never "unknown key".
	for _, k := range keys {
		parts := strings.Split(k, ".")
		var b strings.Builder
		for i, p := range parts {
			fmt.Fprintf(&b, "%s%s:", strings.Repeat("  ", i), p)
			if i < len(parts)-1 {
				b.WriteString("\n")
			}
		}
		b.WriteString(" [[1]]\n")
		_, err := Parse("test.yaml", []byte(b.String()))
		if err == nil {
			t.Errorf("%s: a nested list was accepted", k)
			continue
		}
		if strings.Contains(err.Error(), "unknown key") {
			t.Errorf("%s: parser does not know it: %v", k, err)
		}
	}
	// And a key that is not listed is rejected as unknown.
	if _, err := Parse("test.yaml", []byte("lookup:\n  no_such_key: 1\n")); err == nil || !strings.Contains(err.Error(), "unknown key") {
		t.Errorf("unknown key: err = %v", err)
	}
}
