package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/bench"
	"github.com/lmtpgate/lmtpgate/internal/murderlab"
)

// labReport renders what cmdLab measured.
type labReport struct {
	backends, mailboxes int
	conns, messages     int
	warmup              int
	loads               []labLoad
	delays              []time.Duration
	keys                []string
	runs                []*labRun
	big                 []*labRun
	bigDelay            time.Duration
	bigSize, bigMsgs    int
	variants            []gateVariant
	machine             *bench.Machine
	nw                  *labNet
	lab                 *murderlab.Lab
	maxOther            float64
	retries             int
	repeat              int
	budget, spent       time.Duration
	plotFile            string // PNG beside results.md, or ""
	relaySection        string // Markdown of the relay measured alone, or ""
}

// find returns the run of key at delay d under load li, or nil.
func (rep *labReport) find(key string, d time.Duration, li int) *labRun {
	for _, r := range rep.runs {
		if r.Key == key && r.Delay == d && r.Load == li {
			return r
		}
	}
	return nil
}

func (rep *labReport) findBig(key string) *labRun {
	for _, r := range rep.big {
		if r.Key == key {
			return r
		}
	}
	return nil
}

// gateKeys are b and its variants.
func (rep *labReport) gateKeys() []string {
	var out []string
	for _, k := range rep.keys {
		if k == "b" || strings.HasPrefix(k, "b-") {
			out = append(out, k)
		}
	}
	return out
}

func (rep *labReport) render(w io.Writer) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("## Real murder across an emulated network: %d backends, %d mailboxes each\n\n", rep.backends, rep.mailboxes)
	p("One Cyrus 3.6 murder on loopback (master, %d backends, a frontend with its mupdate replica and Cyrus's LMTP proxy) whose backends and master are across an emulated network. Each backend's servername, and so its mailboxes.db entry, what MUPDATE reports and the host the frontend connects to, is the address of a delay relay (internal/bench.DelayRelay) in front of the backend's lmtpd (port 2003, the lmtp port of /etc/services) and imapd; the frontend's mupdate replica and lmtpgate reach the master's MUPDATE through another. A relay delivers every byte a fixed one-way delay after it arrived, in both directions and pipelined as a link is (a new connection also pays three one-way delays for its handshake); it is measured alone below. The load generator (standing for the MTA), Cyrus's LMTP proxy and lmtpgate are local to the frontend. Run d sends straight to the backends' lmtpd across the same relays.\n\n", rep.backends)
	p("Relays in this run:")
	for i := 1; i <= rep.backends; i++ {
		p(" %s → backend %d's lmtpd %s;", rep.nw.LMTPAddr(i), i, rep.lab.BackendLMTPAddr(i))
	}
	p(" %s → the master's MUPDATE %s.\n\n", rep.nw.master.Addr(), rep.lab.MasterMupdateAddr())
	total := 0
	for _, r := range append(append([]*labRun{}, rep.runs...), rep.big...) {
		total += r.Res.Completed + rep.warmup*r.Res.Conns
	}
	p("Every run at every delay uses the same murder, the same mailboxes and the same seeded message sequence, and starts with %d messages per connection that are not counted, so that the connections a proxy keeps to the backends are open when the clock starts. lmtpgate runs as its own process, started afresh for each run; its CPU and peak RSS are sampled from /proc. Cyrus's figures are those of the frontend's whole process tree (master, lmtpd -a children, the mupdate replica and idle services), an upper bound for its LMTP proxy alone. The backends do the real work (each delivery is written and fsynced by a Cyrus lmtpd), so every run shares their cost; the mailboxes grow through the runs (about %d messages by the end). The bytes each run moved across the backends' relays are counted (column \"MiB to the backends\"): a run whose message bytes had not all crossed them would have stopped the benchmark. The machine is shared, so the CPU that other programs and the kernel's own threads (disk writeback among them) used during each run is measured too, from /proc/stat less what this benchmark's processes used (\"other CPU %%\", of one core); a run during which it passed %.0f%% was done again, up to %d more times while the lab's %s for waiting and retries lasted (%s used), and the least disturbed attempt is shown.\n\n", rep.warmup, total, 100*rep.maxOther, rep.retries, rep.budget, rep.spent.Round(time.Second))
	p("Runs:\n\n")
	seen := map[string]bool{}
	for _, r := range rep.runs {
		if !seen[r.Key] {
			seen[r.Key] = true
			p("- **%s**: %s\n", r.Key, mdEscape(r.Res.Label))
		}
	}
	p("\n")
	if rep.plotFile != "" {
		p("![deliveries/s and p99 latency against the one-way delay, per load, for each run](%s)\n\n", rep.plotFile)
	}
	for li, ld := range rep.loads {
		p("### Load %d: rcpts `%s`, sizes `%s`, %d connections, %d messages per run\n\n", li+1, ld.rm, ld.sm, rep.conns, rep.messages)
		p("×a and ×d: deliveries/s of the run over those of run a and of run d at the same delay.")
		if rep.repeat > 1 {
			rev := slices.Clone(rep.keys)
			slices.Reverse(rev)
			p(" Every run was measured %d times, in alternating order (%s, then %s), and the fastest is shown; the deliveries/s of all repeats show how much the shared machine moved the figures.", rep.repeat, strings.Join(rep.keys, ", "), strings.Join(rev, ", "))
		}
		p("\n\n")
		repCol, repSep := "", ""
		if rep.repeat > 1 {
			repCol, repSep = fmt.Sprintf(" deliveries/s of the %d repeats |", rep.repeat), "---|"
		}
		p("| one-way delay | run | deliveries/s |%s msgs/s | ×a | ×d | p50 ms | p90 ms | p99 ms | max ms | CPU s / 1000 msgs | peak RSS MiB | 4xx | 5xx | no reply | MiB to the backends | other CPU %% |\n", repCol)
		p("|--:|---|--:|%s--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n", repSep)
		for _, d := range rep.delays {
			a, dd := rep.find("a", d, li), rep.find("d", d, li)
			for _, key := range rep.keys {
				r := rep.find(key, d, li)
				if r == nil {
					continue
				}
				x := r.Res
				reps := ""
				if rep.repeat > 1 {
					reps = " " + r.repeatsCell() + " |"
				}
				p("| %s | %s | %.1f |%s %.1f | %s | %s | %.2f | %.2f | %.2f | %.2f | %s | %s | %d | %d | %d | %.1f | %s |\n",
					fmtDelay(d), key, x.DeliveriesPerSec, reps, x.MsgsPerSec, rateRatio(r, a), rateRatio(r, dd),
					x.Latency.P50Ms, x.Latency.P90Ms, x.Latency.P99Ms, x.Latency.MaxMs,
					orDashF(x.CPUPer1000(), "%.2f"), orDashF(peakMiB(x), "%.1f"), x.Replies4xx, x.Replies5xx, x.NoReply,
					float64(r.RelayUp)/(1<<20), r.otherCell())
			}
		}
		p("\n")
		gk := rep.gateKeys()
		if len(gk) > 0 {
			p("| one-way delay | ratio | deliveries/s | p50 | p99 | CPU / 1000 msgs |\n|--:|---|--:|--:|--:|--:|\n")
			for _, d := range rep.delays {
				for _, k := range gk {
					x := rep.find(k, d, li)
					for _, other := range []string{"a", "d"} {
						y := rep.find(other, d, li)
						if x == nil || y == nil {
							continue
						}
						p("| %s | %s/%s | %s | %s | %s | %s |\n", fmtDelay(d), k, other,
							ratio(x.Res.DeliveriesPerSec, y.Res.DeliveriesPerSec), ratio(x.Res.Latency.P50Ms, y.Res.Latency.P50Ms),
							ratio(x.Res.Latency.P99Ms, y.Res.Latency.P99Ms), ratio(x.Res.CPUPer1000(), y.Res.CPUPer1000()))
					}
				}
			}
			p("\n")
		}
		var notes []string
		for _, d := range rep.delays {
			if r := rep.find("c", d, li); r != nil && r.Mupdate != "" {
				notes = append(notes, fmt.Sprintf("at %s: %s", fmtDelay(d), strings.TrimPrefix(r.Mupdate, "- ")))
			}
		}
		if len(notes) > 0 {
			p("MUPDATE queries in run c:\n\n- %s\n\n", strings.Join(notes, "\n- "))
		}
	}
	if len(rep.big) > 0 {
		rep.renderBig(&b)
	}
	rep.renderTargets(&b)
	if rep.relaySection != "" {
		p("### The emulated network alone\n\n%s", strings.TrimSpace(rep.relaySection))
		busiest, rate := "", 0.0
		for _, r := range rep.runs {
			if v := float64(r.RelayUp) / (1 << 20) / r.Res.WallSeconds; r.Res.WallSeconds > 0 && v > rate {
				busiest, rate = fmt.Sprintf("%s at %s under load %d", r.Key, fmtDelay(r.Delay), r.Load+1), v
			}
		}
		if busiest != "" {
			p(" For scale: the busiest run of the murder (%s) moved %.1f MiB/s toward the backends across the relays.", busiest, rate)
		}
		p("\n\n")
	}
	renderMachineTo(&b, rep.machine)
	_, err := io.WriteString(w, b.String())
	return err
}

func (rep *labReport) renderBig(b *strings.Builder) {
	fmt.Fprintf(b, "### Large messages: %s, one recipient, one connection, one-way delay %s\n\n", bench.FormatSize(rep.bigSize), fmtDelay(rep.bigDelay))
	fmt.Fprintf(b, "%d messages per run, one after another, each to one recipient drawn from all backends, on the same murder after the runs above. Latency is from MAIL FROM to the last reply.", rep.bigMsgs)
	if rep.repeat > 1 {
		fmt.Fprintf(b, " Every run was measured %d times, in alternating order, and the one with the lowest p50 is shown.", rep.repeat)
	}
	fmt.Fprintf(b, "\n\n")
	fmt.Fprintf(b, "| run | p50 ms | mean ms | p90 ms | max ms | p50 ×d | mean ×d | CPU s / 1000 msgs | 4xx | 5xx | no reply | other CPU %% |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	d := rep.findBig("d")
	for _, r := range rep.big {
		x := r.Res
		var p50, mean string = "–", "–"
		if d != nil {
			p50, mean = ratio(x.Latency.P50Ms, d.Res.Latency.P50Ms), ratio(x.Latency.MeanMs, d.Res.Latency.MeanMs)
		}
		fmt.Fprintf(b, "| %s | %.1f | %.1f | %.1f | %.1f | %s | %s | %s | %d | %d | %d | %s |\n", r.Key, x.Latency.P50Ms, x.Latency.MeanMs, x.Latency.P90Ms, x.Latency.MaxMs,
			p50, mean, orDashF(x.CPUPer1000(), "%.1f"), x.Replies4xx, x.Replies5xx, x.NoReply, r.otherCell())
	}
	fmt.Fprintln(b)
}

// repeatsCell lists the deliveries/s of every repeat.
func (r *labRun) repeatsCell() string {
	var f []string
	for _, v := range r.Repeats {
		f = append(f, fmt.Sprintf("%.0f", v))
	}
	return strings.Join(f, ", ")
}

// otherCell shows the CPU other programs took during the run, in percent
// of one core, and how many attempts it took to get a quiet run.
func (r *labRun) otherCell() string {
	s := fmt.Sprintf("%.0f", 100*r.OtherCPU)
	if r.Attempts > 1 {
		s += fmt.Sprintf(" (best of %d)", r.Attempts)
	}
	return s
}

// target is one of lmtpgate's goals for a run across the network.
type target struct {
	what    string
	value   float64
	want    float64
	atMost  bool // value ≤ want; otherwise value ≥ want
	present bool
}

func (t target) line() string {
	if !t.present {
		return fmt.Sprintf("- %s: not measured", t.what)
	}
	op, ok := "≥", t.value >= t.want
	if t.atMost {
		op, ok = "≤", t.value <= t.want
	}
	v := fmt.Sprintf("- %s = %.2f (target %s %.2f): ", t.what, t.value, op, t.want)
	if ok {
		return v + "met"
	}
	return v + fmt.Sprintf("**missed** by %.0f%%", 100*abs(t.value-t.want)/t.want)
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// renderTargets checks lmtpgate's targets across the network: at 0.5 ms,
// on the first load (2 recipients on 2 backends) b/a ≥ 2.0 and b/d ≥
// 0.95, on the second (mixed) b/d ≥ 0.9 with no more CPU than Cyrus's
// proxy; a large message at the large-message delay within 1.2 times
// direct delivery.
func (rep *labReport) renderTargets(b *strings.Builder) {
	const at = 500 * time.Microsecond
	var lines []string
	has := false
	for _, d := range rep.delays {
		has = has || d == at
	}
	rate := func(x, y *labRun) (float64, bool) {
		if x == nil || y == nil || y.Res.DeliveriesPerSec <= 0 {
			return 0, false
		}
		return x.Res.DeliveriesPerSec / y.Res.DeliveriesPerSec, true
	}
	for _, k := range rep.gateKeys() {
		if has && len(rep.loads) >= 1 {
			v, ok := rate(rep.find(k, at, 0), rep.find("a", at, 0))
			lines = append(lines, target{fmt.Sprintf("load 1 at 0.5 ms, deliveries/s %s/a", k), v, 2.0, false, ok}.line())
			v, ok = rate(rep.find(k, at, 0), rep.find("d", at, 0))
			lines = append(lines, target{fmt.Sprintf("load 1 at 0.5 ms, deliveries/s %s/d", k), v, 0.95, false, ok}.line())
		}
		if has && len(rep.loads) >= 2 {
			v, ok := rate(rep.find(k, at, 1), rep.find("d", at, 1))
			lines = append(lines, target{fmt.Sprintf("load 2 at 0.5 ms, deliveries/s %s/d", k), v, 0.9, false, ok}.line())
			x, a := rep.find(k, at, 1), rep.find("a", at, 1)
			ok = x != nil && a != nil && x.Res.CPUPer1000() > 0 && a.Res.CPUPer1000() > 0
			v = 0
			if ok {
				v = x.Res.CPUPer1000() / a.Res.CPUPer1000()
			}
			lines = append(lines, target{fmt.Sprintf("load 2 at 0.5 ms, CPU per 1000 messages %s/a", k), v, 1.0, true, ok}.line())
		}
		if len(rep.big) > 0 {
			x, d := rep.findBig(k), rep.findBig("d")
			ok := x != nil && d != nil && d.Res.Latency.P50Ms > 0
			v := 0.0
			if ok {
				v = x.Res.Latency.P50Ms / d.Res.Latency.P50Ms
			}
			lines = append(lines, target{fmt.Sprintf("%s at %s, p50 latency %s/d", bench.FormatSize(rep.bigSize), fmtDelay(rep.bigDelay), k), v, 1.2, true, ok}.line())
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(b, "### Targets across the network\n\n%s\n\n", strings.Join(lines, "\n"))
}

// rateRatio is x's deliveries/s over y's.
func rateRatio(x, y *labRun) string {
	if x == nil || y == nil {
		return "–"
	}
	return ratio(x.Res.DeliveriesPerSec, y.Res.DeliveriesPerSec)
}

func ratio(x, y float64) string {
	if x < 0 || y <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", x/y)
}

func peakMiB(r *bench.Result) float64 {
	if r.Proc == nil {
		return -1
	}
	return float64(r.Proc.PeakRSSBytes) / (1 << 20)
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

func renderMachineTo(b *strings.Builder, m *bench.Machine) {
	if m == nil {
		return
	}
	var sb strings.Builder
	bench.RenderMachine(&sb, m, "###")
	b.WriteString(sb.String())
}

// gnuplotAvailable reports whether gnuplot can be run.
func gnuplotAvailable() error {
	if _, err := exec.LookPath("gnuplot"); err != nil {
		return errors.New("lab: --plot needs gnuplot (Debian package gnuplot-nox)")
	}
	return nil
}

// plot writes one data file per load and run (delay in ms, deliveries/s,
// p99 ms) and a gnuplot script beside them in dir, and runs gnuplot to
// draw png: per load, deliveries/s and p99 against the delay.
func (rep *labReport) plot(dir, png string) error {
	png, err := filepath.Abs(png)
	if err != nil {
		return err
	}
	var s strings.Builder
	fmt.Fprintf(&s, "set terminal pngcairo size 1400,%d font 'sans,11'\n", 60+440*len(rep.loads))
	fmt.Fprintf(&s, "set output '%s'\n", png)
	fmt.Fprintf(&s, "set multiplot layout %d,2 title 'Real Cyrus murder, backends and master across an emulated network (one murder, one run)'\n", len(rep.loads))
	s.WriteString("set grid\nset xlabel 'one-way delay to the backends and the master (ms)'\nset yrange [0:*]\nset offsets 0.05, 0.05, 0, 0\n")
	var tics []string
	for _, d := range rep.delays {
		tics = append(tics, fmt.Sprintf("%g", float64(d)/1e6))
	}
	fmt.Fprintf(&s, "set xtics (%s)\n", strings.Join(tics, ", "))
	for li, ld := range rep.loads {
		var files []string
		for _, key := range rep.keys {
			var data strings.Builder
			data.WriteString("# delay_ms deliveries_per_s p99_ms\n")
			n := 0
			for _, d := range rep.delays {
				if r := rep.find(key, d, li); r != nil {
					fmt.Fprintf(&data, "%g %.1f %.2f\n", float64(d)/1e6, r.Res.DeliveriesPerSec, r.Res.Latency.P99Ms)
					n++
				}
			}
			if n == 0 {
				continue
			}
			f := fmt.Sprintf("plot-load%d-%s.dat", li+1, key)
			if err := os.WriteFile(filepath.Join(dir, f), []byte(data.String()), 0o644); err != nil {
				return err
			}
			files = append(files, f, key)
		}
		if len(files) == 0 {
			continue
		}
		title := fmt.Sprintf("load %d: rcpts %s, sizes %s", li+1, ld.rm, ld.sm)
		// Rates fall and latencies rise with the delay: the key goes
		// where the lines are not.
		for col, what := range []string{"deliveries/s", "p99 latency (ms)"} {
			key := "bottom left"
			if col == 1 {
				key = "top left"
			}
			fmt.Fprintf(&s, "set title '%s: %s'\nset ylabel '%s'\nset key %s\n", gpEscape(title), what, what, key)
			var parts []string
			for i := 0; i < len(files); i += 2 {
				parts = append(parts, fmt.Sprintf("'%s' using 1:%d with linespoints lw 2 pt 7 title '%s'", files[i], col+2, gpEscape(plotLabel(files[i+1]))))
			}
			fmt.Fprintf(&s, "plot %s\n", strings.Join(parts, ", "))
		}
	}
	s.WriteString("unset multiplot\n")
	script := filepath.Join(dir, "plot.gp")
	if err := os.WriteFile(script, []byte(s.String()), 0o644); err != nil {
		return err
	}
	cmd := exec.Command("gnuplot", "plot.gp")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("lab: gnuplot %s: %v: %s", script, err, out)
	}
	return nil
}

// plotLabel names a run in the plot's key.
func plotLabel(key string) string {
	switch key {
	case "a":
		return "a: Cyrus lmtpd -a"
	case "b":
		return "b: lmtpgate"
	case "c":
		return "c: lmtpgate via MUPDATE"
	case "d":
		return "d: direct"
	}
	return key + ": lmtpgate variant"
}

func gpEscape(s string) string { return strings.ReplaceAll(s, "'", "''") }
