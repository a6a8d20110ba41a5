package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat. Linux
// fixes it at 100 on every architecture Go supports (sysconf(_SC_CLK_TCK)
// reports the same), so no cgo is needed to ask.
const clockTicks = 100

// ProcStats is the cost of the process (or process tree) under test during
// a run.
type ProcStats struct {
	PID  int  `json:"pid"`
	Tree bool `json:"tree"` // summed over PID and its descendants
	// MaxProcs is the largest number of processes seen in one sample.
	MaxProcs int `json:"max_procs"`
	// CPUSeconds is user+system CPU used during the run, including that
	// of children reaped during it (cutime/cstime).
	CPUSeconds float64 `json:"cpu_seconds"`
	// PeakRSSBytes is the largest sampled VmRSS (summed over the tree,
	// so pages shared between prefork'd children count once per child:
	// an upper bound, as ps would show), or the process's VmHWM if that
	// is larger.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	Samples      int   `json:"samples"`
}

// procStat holds the fields of /proc/<pid>/stat the sampler needs.
type procStat struct {
	PID, PPID int
	// Ticks is utime+stime+cutime+cstime in clock ticks.
	Ticks int64
}

// ParseStat parses the contents of /proc/<pid>/stat (proc(5)). The command
// name may contain spaces and parentheses, so the fields are found after
// the last ')'.
func parseStat(b []byte) (procStat, error) {
	var st procStat
	open := bytes.IndexByte(b, '(')
	closeP := bytes.LastIndexByte(b, ')')
	if open < 1 || closeP < open {
		return st, errors.New("stat: no command name")
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return st, fmt.Errorf("stat: pid: %w", err)
	}
	f := bytes.Fields(b[closeP+1:])
	// f[0] is field 3 (state); utime..cstime are fields 14..17.
	if len(f) < 15 {
		return st, errors.New("stat: too few fields")
	}
	st.PID = pid
	if st.PPID, err = strconv.Atoi(string(f[1])); err != nil {
		return st, fmt.Errorf("stat: ppid: %w", err)
	}
	for _, x := range f[11:15] {
		v, err := strconv.ParseInt(string(x), 10, 64)
		if err != nil || v < 0 {
			return st, fmt.Errorf("stat: bad time %q", x)
		}
		st.Ticks += v
	}
	return st, nil
}

// parseStatusKB returns the value in bytes of a "Key:   123 kB" line of
// /proc/<pid>/status, or 0 if absent (kernel threads and zombies have no
// Vm* lines).
func parseStatusKB(b []byte, key string) int64 {
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || string(k) != key {
			continue
		}
		v = bytes.TrimSpace(v)
		v = bytes.TrimSpace(bytes.TrimSuffix(v, []byte("kB")))
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil || n < 0 {
			return 0
		}
		return n << 10
	}
	return 0
}

// Sampler follows the CPU time and resident memory of a process, or of a
// process and all its descendants (Cyrus's LMTP proxy is prefork'd lmtpd
// children under master), while a run is going on.
type Sampler struct {
	pid      int
	tree     bool
	proc     string // /proc, replaceable in tests
	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	start    int64
	last     int64
	peak     int64
	maxProcs int
	samples  int
	err      error
}

// StartSampler takes a first sample of pid (and, if tree, its
// descendants) and keeps sampling every interval until Stop.
func StartSampler(pid int, tree bool, interval time.Duration) (*Sampler, error) {
	return startSampler("/proc", pid, tree, interval)
}

func startSampler(proc string, pid int, tree bool, interval time.Duration) (*Sampler, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("sampler: bad pid %d", pid)
	}
	s := &Sampler{pid: pid, tree: tree, proc: proc, stop: make(chan struct{}), done: make(chan struct{})}
	ticks, _, _, err := s.sample()
	if err != nil {
		return nil, err
	}
	s.start, s.last = ticks, ticks
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.record()
			}
		}
	}()
	return s, nil
}

func (s *Sampler) record() {
	ticks, rss, n, err := s.sample()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		// The process ended: keep the last good sample.
		s.err = err
		return
	}
	s.last = ticks
	s.peak = max(s.peak, rss)
	s.maxProcs = max(s.maxProcs, n)
	s.samples++
}

// Stop takes a last sample and returns the totals since StartSampler.
func (s *Sampler) Stop() ProcStats {
	close(s.stop)
	<-s.done
	s.record()
	s.mu.Lock()
	defer s.mu.Unlock()
	return ProcStats{
		PID:          s.pid,
		Tree:         s.tree,
		MaxProcs:     s.maxProcs,
		CPUSeconds:   float64(s.last-s.start) / clockTicks,
		PeakRSSBytes: s.peak,
		Samples:      s.samples,
	}
}

// sample returns total CPU ticks, summed VmRSS and the number of processes.
func (s *Sampler) sample() (ticks, rss int64, n int, err error) {
	pids := []int{s.pid}
	if s.tree {
		pids, err = s.descendants()
		if err != nil {
			return 0, 0, 0, err
		}
	}
	for i, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", s.proc, pid))
		if err != nil {
			if i == 0 {
				return 0, 0, 0, err
			}
			continue // a child that just exited
		}
		st, err := parseStat(b)
		if err != nil {
			if i == 0 {
				return 0, 0, 0, err
			}
			continue
		}
		ticks += st.Ticks
		n++
		if b, err := os.ReadFile(fmt.Sprintf("%s/%d/status", s.proc, pid)); err == nil {
			rss += parseStatusKB(b, "VmRSS")
			if !s.tree {
				rss = max(rss, parseStatusKB(b, "VmHWM"))
			}
		}
	}
	return ticks, rss, n, nil
}

// descendants lists s.pid first, then every process whose parent chain
// leads to it.
func (s *Sampler) descendants() ([]int, error) {
	ents, err := os.ReadDir(s.proc)
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", s.proc, pid))
		if err != nil {
			continue
		}
		st, err := parseStat(b)
		if err != nil {
			continue
		}
		children[st.PPID] = append(children[st.PPID], pid)
	}
	out := []int{s.pid}
	seen := map[int]bool{s.pid: true}
	for i := 0; i < len(out); i++ {
		for _, c := range children[out[i]] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// StatusBytes returns the value in bytes of a "Key: N kB" line of a
// /proc/<pid>/status file, or 0 if it has none.
func StatusBytes(status []byte, key string) int64 { return parseStatusKB(status, key) }

// SystemBusySeconds is the CPU time the whole machine has spent busy since
// boot, summed over all CPUs: everything in /proc/stat's "cpu" line but
// idle and iowait. Taken before and after a run, and less what the
// benchmark's own processes used, it shows how much other programs and the
// kernel's own threads took from the cores during the run.
func SystemBusySeconds() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	ticks, err := parseCPULine(b)
	return float64(ticks) / clockTicks, err
}

// parseCPULine returns the busy ticks of the first line of /proc/stat,
// "cpu  user nice system idle iowait irq softirq steal guest guest_nice"
// (proc(5)). guest and guest_nice are already in user and nice, and steal
// is time the hypervisor gave to others, so busy is user + nice + system +
// irq + softirq.
func parseCPULine(b []byte) (int64, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 8 || string(f[0]) != "cpu" {
		return 0, errors.New("/proc/stat: no cpu line")
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7} {
		v, err := strconv.ParseInt(string(f[i]), 10, 64)
		if err != nil || v < 0 {
			return 0, fmt.Errorf("/proc/stat: bad field %q", f[i])
		}
		if busy += v; busy < 0 {
			return 0, errors.New("/proc/stat: busy time overflows")
		}
	}
	return busy, nil
}
