package packagetest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/lmtpgate/lmtpgate/internal/config"
)

// manDefaults returns, per key, the default lmtpgate.yaml(5) documents
// (the ".Li" line after "Default:") and the whole entry's text.
func manDefaults(t *testing.T) (defaults, entries map[string]string) {
	t.Helper()
	man, err := os.ReadFile(filepath.Join(repoRoot(t), "man", "lmtpgate.yaml.5"))
	if err != nil {
		t.Fatal(err)
	}
	defaults, entries = map[string]string{}, map[string]string{}
	key := ""
	lines := strings.Split(string(man), "\n")
	for i, line := range lines {
		if k, ok := strings.CutPrefix(line, ".It Ic "); ok {
			key = k
			continue
		}
		if strings.HasPrefix(line, ".El") || strings.HasPrefix(line, ".Sh") {
			key = ""
		}
		if key == "" {
			continue
		}
		entries[key] += line + "\n"
		if line == "Default:" && i+1 < len(lines) {
			v, _ := strings.CutPrefix(lines[i+1], ".Li ")
			v = strings.ReplaceAll(v, `\(dq`, `"`)
			// "0 (unlimited)", `"" (system roots)`: the value is what
			// comes before the explanation.
			if j := strings.Index(v, " ("); j >= 0 {
				v = v[:j]
			}
			defaults[key] = strings.TrimSpace(v)
		}
	}
	return defaults, entries
}

// Defaults the man page describes in words, because they are not constants.
var describedDefaults = map[string]string{
	"hostname":                           "the machine's host name",
	"lookup.mailboxes_db":                "configdirectory/mailboxes.db",
	"lookup.replica_socket":              "configdirectory/socket/mupdate.target",
	"lookup.local_mupdate.authname":      "master_mupdate's",
	"lookup.local_mupdate.authzid":       "master_mupdate's",
	"lookup.local_mupdate.password":      "master_mupdate's",
	"lookup.order":                       "[master-mupdate]",
	"lookup.master_mupdate.address":      `""`,
	"lookup.master_mupdate.authname":     `""`,
	"lookup.master_mupdate.authzid":      `""`,
	"lookup.master_mupdate.password":     `""`,
	"lookup.local_mupdate.password_file": `""`,
	"lookup.master_replica.snapshot":     "state_dir/master-replica.snapshot",
}

// TestDefaultsMatchTheManPage walks every key: the value in effect for an
// empty configuration, for the shipped file, and for an explicit 0 must be
// what lmtpgate.yaml(5) documents. A zero is either refused naming the
// key, where the page says the value must be positive, or kept as zero,
// where the page says what 0 means; it is never silently replaced.
func TestDefaultsMatchTheManPage(t *testing.T) {
	defaults, entries := manDefaults(t)
	// The smallest file that loads: master-mupdate, the built-in order,
	// needs an address.
	empty, err := config.Parse("empty.yaml", []byte("imapd_conf: \"\"\nstate_dir: /nonexistent-lmtpgate\nlookup: {master_mupdate: {address: 'mupdate.invalid:3905'}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, data := shippedConfig(t)
	var shipped *config.Config
	shipped, err = config.Parse("lmtpgate.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	written := map[string]*yaml.Node{}
	collectValues("", &doc, written)

	for _, k := range config.Keys() {
		doc, ok := defaults[k]
		if !ok {
			t.Errorf("%s: lmtpgate.yaml(5) gives no Default:", k)
			continue
		}
		got, ok := config.Value(empty, k)
		if !ok {
			continue // a password key: no single field
		}
		if want, described := describedDefaults[k]; described {
			if doc != want {
				t.Errorf("%s: the man page's default %q, want the description %q", k, doc, want)
			}
		} else if got != doc && k != "state_dir" { // state_dir is set by this test
			t.Errorf("%s: in effect %s with an empty file, documented %s", k, got, doc)
		}
		// The shipped file lists every key with its default, except
		// those it deliberately sets differently.
		if n := written[k]; n != nil && n.Tag != "!!null" && k != "imapd_conf" && k != "lookup.order" && k != "state_dir" {
			if sv, _ := config.Value(shipped, k); sv != got {
				t.Errorf("%s: the shipped file gives %s, the default is %s", k, sv, got)
			}
		}
		// Zero.
		var zero string
		switch {
		case strings.HasSuffix(got, "s") && regexp.MustCompile(`^[0-9.hmsµn]+$`).MatchString(got):
			zero = "0s"
		case regexp.MustCompile(`^[0-9]+$`).MatchString(got):
			zero = "0"
		default:
			continue
		}
		c, err := config.Parse("zero.yaml", []byte(mergeZero(k, zero)))
		text := entries[k]
		if err != nil {
			if !strings.Contains(err.Error(), k) {
				t.Errorf("%s: 0 refused without naming the key: %v", k, err)
			}
			if !strings.Contains(text, "Must be positive") && !strings.Contains(text, "at least 1") {
				t.Errorf("%s: 0 is refused, but the man page does not say it must be positive", k)
			}
			continue
		}
		if v, _ := config.Value(c, k); v != zero {
			t.Errorf("%s: 0 became %s", k, v)
		}
		if !regexp.MustCompile(`(?m)(^|[ ;(])0[:( ]`).MatchString(text) {
			t.Errorf("%s: 0 is accepted, but the man page does not say what 0 means:\n%s", k, text)
		}
	}
}

func mergeZero(key, v string) string {
	base := map[string]any{
		"state_dir":  "/nonexistent-lmtpgate",
		"imapd_conf": "",
		"lookup":     map[string]any{"order": []string{"master-mupdate"}, "master_mupdate": map[string]any{"address": "m:3905"}},
	}
	m := base
	parts := strings.Split(key, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	if v == "0" {
		m[parts[len(parts)-1]] = 0
	} else {
		m[parts[len(parts)-1]] = v
	}
	out, _ := yaml.Marshal(base)
	return string(out)
}

// collectValues maps dotted keys to their value nodes.
func collectValues(prefix string, n *yaml.Node, out map[string]*yaml.Node) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			collectValues(prefix, c, out)
		}
		return
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := prefix + n.Content[i].Value
		v := n.Content[i+1]
		if v.Kind == yaml.MappingNode && k != "backends.addresses" {
			collectValues(k+".", v, out)
			continue
		}
		out[k] = v
	}
}
