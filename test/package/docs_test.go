package packagetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/lmtpgate/lmtpgate/internal/config"
)

// yamlKeys lists the dotted paths of every key in a YAML mapping tree.
func yamlKeys(prefix string, n *yaml.Node, out *[]string) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			yamlKeys(prefix, c, out)
		}
		return
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := prefix + n.Content[i].Value
		*out = append(*out, k)
		// backends.addresses is a map of server names, not keys.
		if k != "backends.addresses" {
			yamlKeys(k+".", n.Content[i+1], out)
		}
	}
}

// manEntries returns the keys lmtpgate.yaml(5) documents (".It Ic KEY").
func manEntries(t *testing.T) map[string]bool {
	t.Helper()
	man, err := os.ReadFile(filepath.Join(repoRoot(t), "man", "lmtpgate.yaml.5"))
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]bool{}
	for _, line := range strings.Split(string(man), "\n") {
		if k, ok := strings.CutPrefix(line, ".It Ic "); ok {
			entries[k] = true
		}
	}
	return entries
}

// TestDocsCoverEveryKey checks that every key the parser accepts
// (config.Keys, read from its struct tags) has an entry in lmtpgate.yaml(5)
// and is listed in the shipped /etc/lmtpgate/lmtpgate.yaml, and that
// neither documents a key the parser does not know.
func TestDocsCoverEveryKey(t *testing.T) {
	keys := config.Keys()
	if len(keys) < 60 {
		t.Fatalf("config.Keys() returned only %d keys", len(keys))
	}
	known := map[string]bool{}
	for _, k := range keys {
		known[k] = true
	}

	entries := manEntries(t)
	for _, k := range keys {
		if !entries[k] {
			t.Errorf("lmtpgate.yaml(5) has no entry for %s", k)
		}
	}
	for k := range entries {
		if !known[k] {
			t.Errorf("lmtpgate.yaml(5) documents %s, which the parser does not accept", k)
		}
	}

	data, err := os.ReadFile(filepath.Join(repoRoot(t), "etc", "lmtpgate", "lmtpgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var shipped []string
	yamlKeys("", &doc, &shipped)
	inShipped := map[string]bool{}
	for _, k := range shipped {
		inShipped[k] = true
	}
	for _, k := range keys {
		if !inShipped[k] {
			t.Errorf("etc/lmtpgate/lmtpgate.yaml does not list %s", k)
		}
	}
	// Unknown keys in the shipped file are caught by TestShippedConfigLoads
	// (the parser rejects them).
}

// TestManPagesLint runs mandoc's linter: nothing at warning level or above.
func TestManPagesLint(t *testing.T) {
	if _, err := exec.LookPath("mandoc"); err != nil {
		t.Skip("mandoc not installed")
	}
	for _, m := range []string{"lmtpgate.8", "lmtpgate.yaml.5"} {
		out, _ := exec.Command("mandoc", "-Tlint", "-W", "warning", filepath.Join(repoRoot(t), "man", m)).CombinedOutput()
		if len(out) > 0 {
			t.Errorf("mandoc -Tlint -W warning %s:\n%s", m, out)
		}
	}
}

// TestUnitsVerify runs packaging/verify-units.sh: systemd-analyze verify on
// the repository's units and an exposure score of at most 2.0.
func TestUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed")
	}
	out, err := exec.Command(filepath.Join(repoRoot(t), "packaging", "verify-units.sh")).CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("verify-units.sh: %v", err)
	}
}
