package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Machine describes where a run was measured; results from different
// machines are not comparable.
type Machine struct {
	CPUModel     string `json:"cpu_model"`
	Cores        int    `json:"cores"`
	RAMMiB       int64  `json:"ram_mib"`
	Kernel       string `json:"kernel"`
	GoVersion    string `json:"go_version"`
	CyrusVersion string `json:"cyrus_version"`
}

// CollectMachine describes this machine, best effort: a field it cannot
// learn stays empty.
func CollectMachine(ctx context.Context) *Machine {
	m := &Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPUModel = cpuModel(b)
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.RAMMiB = parseStatusKB(b, "MemTotal") >> 20
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:])
	}
	m.CyrusVersion = cyrusVersion(ctx)
	return m
}

func cpuModel(cpuinfo []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// cyrusVersion asks Cyrus's master for its version ("cyrus-imapd
// 3.6.1-Debian-..."); master -V prints it and exits without starting.
func cyrusVersion(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "/usr/lib/cyrus/bin/master", "-V").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// Run labels and the ratios a report shows. a is Cyrus's own frontend
// LMTP proxy, b lmtpgate reading the local mailboxes.db, c lmtpgate asking
// the master's MUPDATE server, d the backends without a proxy in front.
var (
	// DefaultDescriptions describe the standard labels when a result
	// carries no label of its own.
	DefaultDescriptions = map[string]string{
		"a": "Cyrus frontend LMTP proxy (lmtpd -a)",
		"b": "lmtpgate, order [mailboxes-db]",
		"c": "lmtpgate, order [master-mupdate]",
		"d": "straight to the backends' lmtpd (no proxy)",
	}
	// DefaultRatios are the comparisons the report prints when both
	// sides are present: lmtpgate against Cyrus's proxy, lmtpgate
	// against no proxy at all, and the MUPDATE path against Cyrus.
	DefaultRatios = [][2]string{{"b", "a"}, {"b", "d"}, {"c", "a"}}
)

// Labeled is one run's result under its report key.
type Labeled struct {
	Key    string
	Result *Result
}

// ReadResult reads a JSON result written by lmtpbench run.
func ReadResult(path string) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return DecodeResult(b)
}

// RenderReport writes the Markdown comparison: one row per run, the
// ratios between the standard pairs present, the load, and the machine
// (m, or if nil the first result's).
func RenderReport(w io.Writer, runs []Labeled, m *Machine) error {
	var b strings.Builder
	renderRuns(&b, runs, "##")
	if m == nil && len(runs) > 0 {
		m = runs[0].Result.Machine
	}
	if m != nil {
		b.WriteString("\n")
		renderMachine(&b, m, "##")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// RenderMachine writes the machine section with a heading of the given
// level.
func RenderMachine(w io.Writer, m *Machine, heading string) error {
	var b strings.Builder
	renderMachine(&b, m, heading)
	_, err := io.WriteString(w, b.String())
	return err
}

func renderRuns(b *strings.Builder, runs []Labeled, h string) {
	b.WriteString(h + " Results\n\n")
	b.WriteString("| run | target | deliveries/s | msgs/s | p50 ms | p90 ms | p99 ms | max ms | CPU s / 1000 msgs | peak RSS MiB | 4xx | 5xx | no reply |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	byKey := map[string]*Result{}
	for _, l := range runs {
		r := l.Result
		byKey[l.Key] = r
		desc := r.Label
		if desc == "" || desc == l.Key {
			desc = DefaultDescriptions[l.Key]
		}
		fmt.Fprintf(b, "| %s | %s | %.1f | %.1f | %.2f | %.2f | %.2f | %.2f | %s | %s | %d | %d | %d |\n",
			l.Key, mdEscape(desc), r.DeliveriesPerSec, r.MsgsPerSec,
			r.Latency.P50Ms, r.Latency.P90Ms, r.Latency.P99Ms, r.Latency.MaxMs,
			orDash(r.CPUPer1000(), "%.2f"), rssMiB(r), r.Replies4xx, r.Replies5xx, r.NoReply)
	}
	var ratios [][2]string
	for _, p := range DefaultRatios {
		if byKey[p[0]] != nil && byKey[p[1]] != nil {
			ratios = append(ratios, p)
		}
	}
	if len(ratios) > 0 {
		b.WriteString("\n" + h + " Ratios\n\n")
		b.WriteString("Throughput ratios above 1 and latency, CPU and memory ratios below 1 favour the first run.\n\n")
		b.WriteString("| ratio | deliveries/s | msgs/s | p50 | p99 | CPU / 1000 msgs | peak RSS |\n")
		b.WriteString("|---|--:|--:|--:|--:|--:|--:|\n")
		for _, p := range ratios {
			x, y := byKey[p[0]], byKey[p[1]]
			fmt.Fprintf(b, "| %s/%s | %s | %s | %s | %s | %s | %s |\n", p[0], p[1],
				ratio(x.DeliveriesPerSec, y.DeliveriesPerSec), ratio(x.MsgsPerSec, y.MsgsPerSec),
				ratio(x.Latency.P50Ms, y.Latency.P50Ms), ratio(x.Latency.P99Ms, y.Latency.P99Ms),
				ratio(x.CPUPer1000(), y.CPUPer1000()), ratio(peakRSS(x), peakRSS(y)))
		}
	}
	if len(runs) > 0 {
		r := runs[0].Result
		b.WriteString("\n" + h + " Load\n\n")
		fmt.Fprintf(b, "- connections: %d\n", r.Conns)
		fmt.Fprintf(b, "- messages per run: %d\n", r.Messages)
		fmt.Fprintf(b, "- recipient mix: `%s`\n", r.RcptMix)
		fmt.Fprintf(b, "- size mix: `%s`\n", r.SizeMix)
		fmt.Fprintf(b, "- pipelining: %t, seed: %d\n", r.Pipeline, r.Seed)
	}
}

func renderMachine(b *strings.Builder, m *Machine, h string) {
	b.WriteString(h + " Machine\n\n")
	fmt.Fprintf(b, "- CPU: %s\n", orUnknown(m.CPUModel))
	fmt.Fprintf(b, "- cores: %d\n", m.Cores)
	fmt.Fprintf(b, "- RAM: %d MiB\n", m.RAMMiB)
	fmt.Fprintf(b, "- kernel: %s\n", orUnknown(m.Kernel))
	fmt.Fprintf(b, "- Go: %s\n", orUnknown(m.GoVersion))
	fmt.Fprintf(b, "- Cyrus: %s\n", orUnknown(m.CyrusVersion))
}

func peakRSS(r *Result) float64 {
	if r.Proc == nil {
		return -1
	}
	return float64(r.Proc.PeakRSSBytes)
}

func rssMiB(r *Result) string {
	return orDash(peakRSS(r)/(1<<20), "%.1f")
}

func orDash(v float64, format string) string {
	if v < 0 {
		return "–"
	}
	return fmt.Sprintf(format, v)
}

// ratio formats x/y, or "–" when either is unknown (negative) or y is 0.
func ratio(x, y float64) string {
	if x < 0 || y <= 0 {
		return "–"
	}
	return strconv.FormatFloat(x/y, 'f', 2, 64) + "×"
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}
