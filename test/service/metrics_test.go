package service

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/testbin"
)

// scrape fetches the metrics endpoint and returns the samples by name with
// labels ("lmtpgate_backend_up{backend=\"be1\"}") and the raw text.
func scrape(t *testing.T, addr string) (map[string]float64, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out, string(b)
}

// TestMetrics scrapes the endpoint after deliveries, a refusal, a backend
// that is down and a reload, and checks that the counters moved as they
// should, that no label carries a recipient or mailbox, and that promtool
// accepts the exposition. The endpoint stays up across a reload.
func TestMetrics(t *testing.T) {
	f := newFakes(t)
	maddr := testbin.FreePort(t, "127.0.0.1")
	d := testbin.Start(t, f.config("order: [master-mupdate]", "metrics: {listen: \""+maddr+"\"}"))
	mustDeliver(t, "tcp", d.LMTP, "alice@example.org")
	f.be2.Stop()
	rr, dr, err := txn("tcp", d.LMTP, []string{"alice@example.org", "nosuch@example.org", "carol@example.org"}, "metrics")
	if err != nil {
		t.Fatal(err)
	}
	if rr["nosuch@example.org"] != "550 5.1.1" || !strings.HasPrefix(dr["carol@example.org"]+rr["carol@example.org"], "451") {
		t.Fatalf("RCPT %v DATA %v", rr, dr)
	}
	if out, code := d.Run(t, "reload"); code != 0 {
		t.Fatalf("reload: %s", out)
	}

	m, text := scrape(t, maddr)
	atLeast := map[string]float64{
		`lmtpgate_recipients_total{class="2.1",outcome="delivered"}`:         2,
		`lmtpgate_recipients_total{class="5.1",outcome="rejected"}`:          1,
		`lmtpgate_lookups_total{answer="found",source="master-mupdate"}`:     3,
		`lmtpgate_lookups_total{answer="not_found",source="master-mupdate"}`: 1,
		`lmtpgate_backend_deliveries_total{backend="be1"}`:                   2,
		`lmtpgate_backend_failures_total{backend="be2",cause="connect"}`:     1,
		`lmtpgate_backend_delivery_duration_seconds_count{backend="be1"}`:    2,
		`lmtpgate_sessions_total`:                                            2,
		`lmtpgate_messages_received_total`:                                   2,
		`lmtpgate_received_bytes_total`:                                      50,
		`lmtpgate_mode{mode="master"}`:                                       1,
		`lmtpgate_last_reload_success`:                                       1,
		`lmtpgate_last_reload_timestamp_seconds`:                             1,
		`lmtpgate_source_up{source="master-mupdate"}`:                        1,
	}
	for k, want := range atLeast {
		if got, ok := m[k]; !ok || got < want {
			t.Errorf("%s = %v (present %v), want at least %v", k, got, ok, want)
		}
	}
	var deferred float64
	for k, v := range m {
		if strings.HasPrefix(k, `lmtpgate_recipients_total{`) && strings.Contains(k, `outcome="deferred"`) {
			deferred += v
		}
	}
	if deferred < 1 {
		t.Errorf("no deferred recipient counted:\n%s", text)
	}
	if m[`lmtpgate_backend_up{backend="be2"}`] != 0 || m[`lmtpgate_backend_up{backend="be1"}`] != 1 {
		t.Errorf("backend_up: be1 %v be2 %v", m[`lmtpgate_backend_up{backend="be1"}`], m[`lmtpgate_backend_up{backend="be2"}`])
	}
	if regexp.MustCompile(`@example\.org|user\.alice`).MatchString(text) {
		t.Error("a label carries a recipient or a mailbox")
	}
	for _, k := range []string{"go_goroutines", "process_resident_memory_bytes", "lmtpgate_build_info"} {
		if !strings.Contains(text, k) {
			t.Errorf("no %s", k)
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("LMTPGATE_REQUIRE_CYRUS") == "1" {
			t.Fatal("promtool (Debian's prometheus package) is required: make deps installs it")
		}
		t.Skip("promtool not installed")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// A reload that changes metrics.listen keeps the endpoint where it was and
// says the change needs a restart.
func TestMetricsListenIsRestartOnly(t *testing.T) {
	f := newFakes(t)
	maddr := testbin.FreePort(t, "127.0.0.1")
	d := testbin.Start(t, f.config("order: [master-mupdate]", "metrics: {listen: \""+maddr+"\"}"))
	cfg, err := os.ReadFile(d.Config)
	if err != nil {
		t.Fatal(err)
	}
	other := testbin.FreePort(t, "127.0.0.1")
	os.WriteFile(d.Config, []byte(strings.Replace(string(cfg), maddr, other, 1)), 0o600)
	if out, code := d.Run(t, "reload"); code != 0 {
		t.Fatalf("reload: %s", out)
	}
	if n := waitLogLines(d, 1, `key=metrics.listen`); n != 1 {
		t.Error("the reload did not say metrics.listen needs a restart")
	}
	if _, text := scrape(t, maddr); !strings.Contains(text, "lmtpgate_build_info") {
		t.Error("the endpoint did not survive the reload")
	}
}
