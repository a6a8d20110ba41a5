package bench

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestRenderReportGolden(t *testing.T) {
	var runs []Labeled
	for _, k := range []string{"a", "b", "c", "d"} {
		r, err := ReadResult(filepath.Join("testdata", "report", k+".json"))
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, Labeled{Key: k, Result: r})
	}
	var got bytes.Buffer
	if err := RenderReport(&got, runs, nil); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "report", "report.golden.md")
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("report differs from %s (run with -update after checking):\n%s", golden, got.String())
	}
}

func TestRenderReportPartial(t *testing.T) {
	// Only a and c: one ratio, no Machine section without machine data.
	a := &Result{Messages: 10, Completed: 10, DeliveriesPerSec: 100, MsgsPerSec: 50}
	c := &Result{Messages: 10, Completed: 10, DeliveriesPerSec: 150, MsgsPerSec: 75}
	var b bytes.Buffer
	if err := RenderReport(&b, []Labeled{{"a", a}, {"c", c}}, nil); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	if !strings.Contains(s, "| c/a | 1.50× | 1.50× | – | – | – | – |") || strings.Contains(s, "b/a") || strings.Contains(s, "## Machine") {
		t.Errorf("unexpected report:\n%s", s)
	}
}

func TestDecodeResultErrors(t *testing.T) {
	for _, in := range []string{"", "{", `{"messages": 1, "completed": 2}`, `{"messages": -1}`, `[]`} {
		if _, err := DecodeResult([]byte(in)); err == nil {
			t.Errorf("DecodeResult(%q) accepted", in)
		}
	}
	r := &Result{Label: "x", Messages: 3, Completed: 2, Proc: &ProcStats{CPUSeconds: 1}}
	b, err := EncodeResult(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeResult(b)
	if err != nil || back.Label != "x" || back.CPUPer1000() != 500 {
		t.Errorf("round trip: %+v %v", back, err)
	}
}

func FuzzDecodeResult(f *testing.F) {
	for _, k := range []string{"a", "c", "d"} {
		b, err := os.ReadFile(filepath.Join("testdata", "report", k+".json"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeResult(b)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := RenderReport(&out, []Labeled{{"a", r}, {"b", r}}, nil); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCPUModel(t *testing.T) {
	in := "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n"
	if got := cpuModel([]byte(in)); got != "AMD EPYC 7B13 64-Core Processor" {
		t.Errorf("%q", got)
	}
	if got := cpuModel([]byte("nothing\n")); got != "" {
		t.Errorf("%q", got)
	}
}
