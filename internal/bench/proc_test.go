package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		in   string
		want procStat
		ok   bool
	}{
		{"42 (lmtpd) S 7 42 42 0 -1 4194560 100 0 0 0 150 25 3 2 20 0 1 0 100 1000 50 18446744073709551615",
			procStat{PID: 42, PPID: 7, Ticks: 180}, true},
		// A command name with spaces and a ')' inside.
		{"9 (a b) c)) R 1 9 9 0 -1 0 0 0 0 0 1 2 3 4 20 0", procStat{PID: 9, PPID: 1, Ticks: 10}, true},
		{"9 (x) R 1 9 9 0 -1 0 0 0 0 0 1 2 3", procStat{}, false},
		{"x (y) R 1 9 9 0 -1 0 0 0 0 0 1 2 3 4", procStat{}, false},
		{"9 (y) R 1 9 9 0 -1 0 0 0 0 0 1 -2 3 4", procStat{}, false},
		{"9 y R 1", procStat{}, false},
		{"", procStat{}, false},
	}
	for _, tt := range tests {
		got, err := parseStat([]byte(tt.in))
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("parseStat(%q) = %+v, %v", tt.in, got, err)
		}
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("42 (lmtpd) S 7 42 42 0 -1 4194560 100 0 0 0 150 25 3 2 20 0 1 0 100 1000 50"))
	f.Add([]byte("1 ((() R 0"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseStat(b)
		if err == nil && st.Ticks < 0 {
			t.Fatalf("negative ticks %d", st.Ticks)
		}
		parseStatusKB(b, "VmRSS")
	})
}

func TestParseStatusKB(t *testing.T) {
	status := "Name:\tlmtpd\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nBad:\t x kB\n"
	if got := parseStatusKB([]byte(status), "VmRSS"); got != 1024<<10 {
		t.Errorf("VmRSS %d", got)
	}
	if got := parseStatusKB([]byte(status), "VmHWM"); got != 2048<<10 {
		t.Errorf("VmHWM %d", got)
	}
	for _, k := range []string{"VmSwap", "Bad", "Vm"} {
		if got := parseStatusKB([]byte(status), k); got != 0 {
			t.Errorf("%s %d", k, got)
		}
	}
}

// fakeProc writes a /proc-like tree: pid → (ppid, ticks, rss kB).
func fakeProc(t *testing.T, dir string, procs map[int][3]int) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
	for pid, p := range procs {
		d := filepath.Join(dir, fmt.Sprint(pid))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := fmt.Sprintf("%d (p %d) S %d 1 1 0 -1 0 0 0 0 0 %d 0 0 0 20 0", pid, pid, p[0], p[1])
		os.WriteFile(filepath.Join(d, "stat"), []byte(stat), 0o644)
		os.WriteFile(filepath.Join(d, "status"), fmt.Appendf(nil, "VmHWM:\t%d kB\nVmRSS:\t%d kB\n", p[2]*2, p[2]), 0o644)
	}
	os.MkdirAll(filepath.Join(dir, "self"), 0o755) // not a pid: ignored
}

func TestSamplerTree(t *testing.T) {
	dir := t.TempDir()
	// master 10 with children 11, 12; 13 is a grandchild; 20 is unrelated.
	fakeProc(t, dir, map[int][3]int{10: {1, 100, 1000}, 11: {10, 50, 500}, 12: {10, 0, 500}, 13: {11, 7, 100}, 20: {1, 999, 9999}})
	s, err := startSampler(dir, 10, true, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s.record()
	// 12 exits and is reaped (its 30 ticks move into 10's cutime, shown
	// here as part of 10's ticks); a new child 14 appears.
	fakeProc(t, dir, map[int][3]int{10: {1, 130, 1000}, 11: {10, 80, 3000}, 13: {11, 7, 100}, 14: {10, 20, 200}, 20: {1, 5000, 9999}})
	got := s.Stop()
	// CPU: (130+80+7+20) - (100+50+0+7) = 80 ticks.
	if got.CPUSeconds != 0.8 || got.MaxProcs != 4 || got.PeakRSSBytes != (1000+3000+100+200)<<10 || !got.Tree || got.Samples != 2 {
		t.Errorf("%+v", got)
	}

	// Single-process mode counts only the root and reports VmHWM.
	s, err = startSampler(dir, 10, false, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Stop(); got.CPUSeconds != 0 || got.MaxProcs != 1 || got.PeakRSSBytes != 2000<<10 {
		t.Errorf("single: %+v", got)
	}
	if _, err := startSampler(dir, 99, true, time.Hour); err == nil {
		t.Error("sampling a missing pid succeeded")
	}
}

func TestSamplerRealProcess(t *testing.T) {
	// The test's own process tree, with a child that lives through the
	// run: CPU time is counted and the child is seen.
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skip("no sleep binary:", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	s, err := StartSampler(os.Getpid(), true, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until /proc shows it, with a generous bound against hangs.
	start, _, _, _ := s.sample()
	deadline := time.Now().Add(time.Minute)
	for x := 0; time.Now().Before(deadline); x++ {
		if now, _, _, _ := s.sample(); now > start+2 {
			break
		}
	}
	got := s.Stop()
	if got.CPUSeconds <= 0 || got.MaxProcs < 2 || got.PeakRSSBytes <= 0 || got.PID != os.Getpid() {
		t.Errorf("%+v", got)
	}
}

func TestParseCPULine(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"cpu  88226 0 45727 402185 5874 0 6069 66 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n", 88226 + 45727 + 6069, true},
		{"cpu 1 2 3 4 5 6 7\n", 1 + 2 + 3 + 6 + 7, true},
		{"cpu 1 2 3 4 5 6\n", 0, false},
		{"cpu0 1 2 3 4 5 6 7 8\n", 0, false},
		{"cpu 1 x 3 4 5 6 7 8\n", 0, false},
		{"cpu 1 -2 3 4 5 6 7 8\n", 0, false},
		{"", 0, false},
	} {
		got, err := parseCPULine([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseCPULine(%q) = %d, %v", tc.in, got, err)
		}
	}
	if s, err := SystemBusySeconds(); err != nil || s <= 0 {
		t.Errorf("SystemBusySeconds = %v, %v", s, err)
	}
}

func FuzzParseCPULine(f *testing.F) {
	f.Add([]byte("cpu  88226 0 45727 402185 5874 0 6069 66 0 0\n"))
	f.Add([]byte("cpu 1 2 3\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if v, err := parseCPULine(b); err == nil && v < 0 {
			t.Fatalf("negative busy %d", v)
		}
	})
}
