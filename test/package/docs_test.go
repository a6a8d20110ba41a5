package packagetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
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

// TestManPageDocumentsEveryKey checks that lmtpgate.yaml(5) has an entry
// for every key of the shipped configuration, so neither falls behind.
func TestManPageDocumentsEveryKey(t *testing.T) {
	root := repoRoot(t)
	data, err := os.ReadFile(filepath.Join(root, "etc", "lmtpgate", "lmtpgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var keys []string
	yamlKeys("", &doc, &keys)
	if len(keys) < 60 {
		t.Fatalf("only %d keys found in the shipped config", len(keys))
	}
	man, err := os.ReadFile(filepath.Join(root, "man", "lmtpgate.yaml.5"))
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]bool{}
	for _, line := range strings.Split(string(man), "\n") {
		if k, ok := strings.CutPrefix(line, ".It Ic "); ok {
			entries[k] = true
		}
	}
	for _, k := range keys {
		// Section keys (log, lmtp, lookup.cache, ...) have no value.
		isSection := false
		for _, other := range keys {
			if strings.HasPrefix(other, k+".") {
				isSection = true
				break
			}
		}
		if !isSection && !entries[k] {
			t.Errorf("lmtpgate.yaml(5) has no entry for %s", k)
		}
	}
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
