package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestParseDelays(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []time.Duration
	}{
		{"0", []time.Duration{0}},
		{"0,500us,2ms", []time.Duration{0, 500 * time.Microsecond, 2 * time.Millisecond}},
		{" 1ms , 0.5ms ", []time.Duration{time.Millisecond, 500 * time.Microsecond}},
	} {
		got, err := parseDelays(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("parseDelays(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", ",", "2", "-1ms", "fast"} {
		if _, err := parseDelays(bad); err == nil {
			t.Errorf("parseDelays(%q) accepted", bad)
		}
	}
}

func TestFmtDelay(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0 ms", 500 * time.Microsecond: "0.5 ms", 2 * time.Millisecond: "2 ms", 1250 * time.Microsecond: "1.25 ms"} {
		if got := fmtDelay(d); got != want {
			t.Errorf("fmtDelay(%v) = %q, want %q", d, got, want)
		}
	}
	if got := delayName(500 * time.Microsecond); got != "0.5ms" {
		t.Errorf("delayName = %q", got)
	}
}

func TestLabKeys(t *testing.T) {
	vs := []gateVariant{{"verify", ""}, {"pipe", ""}}
	for _, tc := range []struct {
		runs string
		vs   []gateVariant
		want []string
	}{
		{"a,b,d", nil, []string{"a", "b", "d"}},
		{"a,b,d", vs, []string{"a", "b", "b-verify", "b-pipe", "d"}},
		{"a,d", vs, []string{"a", "d", "b-verify", "b-pipe"}},
		{"d, c", nil, []string{"d", "c"}},
	} {
		got, err := labKeys(tc.runs, tc.vs)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("labKeys(%q) = %v, %v; want %v", tc.runs, got, err, tc.want)
		}
	}
	if _, err := labKeys("a,e", nil); err == nil {
		t.Error("unknown run accepted")
	}
}

func TestParseGateExtras(t *testing.T) {
	file := filepath.Join(t.TempDir(), "extra.yaml")
	if err := os.WriteFile(file, []byte("backends:\n  max_idle: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := parseGateExtras([]string{"verify=backends: {verify_rcpt: true}", "f=@" + file})
	if err != nil || len(got) != 2 || got[0].name != "verify" || got[1].yaml != "backends:\n  max_idle: 3\n" {
		t.Fatalf("%+v, %v", got, err)
	}
	for _, bad := range [][]string{
		{"noequals"},
		{"=backends: {}"},
		{"Upper=backends: {}"},
		{"x=backends: {}", "x=log: {}"},
		{"x=[1, 2]"},
		{"x=a: [unclosed"},
		{"x=@/nonexistent/file"},
	} {
		if _, err := parseGateExtras(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestMergeYAML checks that an extra snippet lands inside the existing
// mappings (a second top-level backends: would be a duplicate key) and
// wins over what is there, leaving the rest alone.
func TestMergeYAML(t *testing.T) {
	base := "hostname: h\nbackends:\n  authname: proxy\n  max_idle: 8\nlookup:\n  order: [mailboxes-db]\n"
	out, err := mergeYAML(base, "backends: {max_idle: 2, verify_rcpt: true}\nlookup: {order: [master-mupdate]}\nnew: 1\n")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := yaml.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	be := got["backends"].(map[string]any)
	if got["hostname"] != "h" || be["authname"] != "proxy" || be["max_idle"] != 2 || be["verify_rcpt"] != true || got["new"] != 1 {
		t.Errorf("merged:\n%s", out)
	}
	if o := got["lookup"].(map[string]any)["order"].([]any); len(o) != 1 || o[0] != "master-mupdate" {
		t.Errorf("lookup.order = %v", o)
	}
	if strings.Count(out, "backends:") != 1 {
		t.Errorf("backends repeated:\n%s", out)
	}
}

func TestTargetLine(t *testing.T) {
	for _, tc := range []struct {
		t    target
		want string
	}{
		{target{"b/a", 2.5, 2.0, false, true}, "- b/a = 2.50 (target ≥ 2.00): met"},
		{target{"b/a", 1.5, 2.0, false, true}, "- b/a = 1.50 (target ≥ 2.00): **missed** by 25%"},
		{target{"cpu", 1.3, 1.0, true, true}, "- cpu = 1.30 (target ≤ 1.00): **missed** by 30%"},
		{target{"cpu", 0.7, 1.0, true, true}, "- cpu = 0.70 (target ≤ 1.00): met"},
		{target{"x", 0, 1.0, true, false}, "- x: not measured"},
	} {
		if got := tc.t.line(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.t, got, tc.want)
		}
	}
}
