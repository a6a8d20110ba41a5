package packagetest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestAlertRules runs promtool on the shipped alerting rules, and checks
// that the rules and the Grafana dashboard use only metrics the daemon
// exports (names from internal/metrics).
func TestAlertRules(t *testing.T) {
	root := repoRoot(t)
	rules := filepath.Join(root, "docs", "metrics", "lmtpgate-rules.yml")
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("LMTPGATE_REQUIRE_CYRUS") == "1" {
			t.Fatal("promtool (Debian's prometheus package) is required: make deps installs it")
		}
		t.Skip("promtool not installed")
	}
	if out, err := exec.Command(promtool, "check", "rules", rules).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	src, err := os.ReadFile(filepath.Join(root, "internal", "metrics", "metrics.go"))
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`"(lmtpgate_[a-z_]+)"`).FindAllStringSubmatch(string(src), -1) {
		known[m[1]] = true
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			known[m[1]+suffix] = true
		}
	}
	dash, err := os.ReadFile(filepath.Join(root, "docs", "metrics", "lmtpgate-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Targets []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(dash, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	r, _ := os.ReadFile(rules)
	exprs = append(exprs, string(r))
	for _, e := range exprs {
		for _, name := range regexp.MustCompile(`lmtpgate_[a-z_]+`).FindAllString(e, -1) {
			if !known[name] && !strings.HasPrefix(name, "lmtpgate_rules") {
				t.Errorf("%s is not a metric lmtpgate exports (in %q)", name, e)
			}
		}
	}
}
