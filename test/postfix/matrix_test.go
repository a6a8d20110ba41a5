package postfix

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// row is one line of the fault matrix: one fault, as one test (or
// subtest) injected it.
type row struct {
	test     string
	fault    string
	injected string
	mta      []string
	stored   []string
	failures []string
	result   string
}

var matrix struct {
	mu   sync.Mutex
	rows []*row
	by   map[string]*row
}

// faultRow starts the matrix row of t. Its result is set when t ends.
func faultRow(t *testing.T, fault, injected string) {
	matrix.mu.Lock()
	defer matrix.mu.Unlock()
	if matrix.by == nil {
		matrix.by = map[string]*row{}
	}
	r := &row{test: t.Name(), fault: fault, injected: injected}
	matrix.rows = append(matrix.rows, r)
	matrix.by[t.Name()] = r
	t.Cleanup(func() {
		matrix.mu.Lock()
		defer matrix.mu.Unlock()
		switch {
		case t.Skipped():
			r.result = "skipped"
		case t.Failed() && len(r.failures) == 0:
			r.result = "**FAIL** (see the test's log)"
		case t.Failed():
			r.result = "**FAIL**"
		default:
			r.result = "pass"
		}
	})
}

// rowOf returns the row of t or of the nearest parent test that has one.
func rowOf(t *testing.T) *row {
	name := t.Name()
	for {
		if r := matrix.by[name]; r != nil {
			return r
		}
		i := strings.LastIndexByte(name, '/')
		if i < 0 {
			return nil
		}
		name = name[:i]
	}
}

// recordReconcile adds what reconcile found to t's row.
func recordReconcile(t *testing.T, rep *report) {
	mta, stored := summarize(rep)
	note(t, mta, stored)
}

// note adds what the MTA (or a raw client) saw and what was stored to t's
// row.
func note(t *testing.T, mta, stored string) {
	matrix.mu.Lock()
	defer matrix.mu.Unlock()
	if r := rowOf(t); r != nil {
		if mta != "" {
			r.mta = append(r.mta, mta)
		}
		if stored != "" {
			r.stored = append(r.stored, stored)
		}
	}
}

// errorf is t.Errorf that also puts the failure in t's matrix row.
func errorf(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	matrix.mu.Lock()
	if r := rowOf(t); r != nil && len(r.failures) < 3 {
		if len(msg) > 160 {
			msg = msg[:160] + "…"
		}
		r.failures = append(r.failures, msg)
	}
	matrix.mu.Unlock()
	t.Errorf(format, args...)
}

// fatalf is t.Fatalf that also puts the failure in t's matrix row.
func fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	errorf(t, format, args...)
	t.FailNow()
}

// writeMatrix writes the fault matrix as Markdown.
func writeMatrix(path string) error {
	matrix.mu.Lock()
	defer matrix.mu.Unlock()
	var b strings.Builder
	b.WriteString("# Fault matrix\n\n")
	b.WriteString("What lmtpgate does under each fault, with Postfix as the MTA delivering to it over LMTP and a real\n")
	b.WriteString("Cyrus murder (a MUPDATE master, two backends, a frontend) behind it. Every row is a test of\n")
	b.WriteString("`test/postfix`; this file is written by `make fault-matrix` from a real run, do not edit it by hand.\n\n")
	b.WriteString("After each fault the test lets Postfix retry until every recipient is final, then compares Postfix's\n")
	b.WriteString("log with the mailboxes: **lost** = Postfix logged `status=sent` but the mailbox has no copy;\n")
	b.WriteString("**corrupt** = a stored copy's body differs from the one sent; a **duplicate** is allowed only\n")
	b.WriteString("where an earlier attempt lost its reply; \"Cyrus dupelim\" counts second copies Cyrus's duplicate\n")
	b.WriteString("suppression dropped. \"alice: sent 2.1.5 ×10\" reads: Postfix logged ten attempts for alice that\n")
	b.WriteString("ended `status=sent` with DSN 2.1.5; \"alice 10/10\": ten of the ten messages for alice are stored.\n\n")
	fmt.Fprintf(&b, "Run: %s; commit %s; %s.\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), commit(), versions())
	b.WriteString("| Fault | Injected | What Postfix (or the client) saw | What the backends hold | Result |\n")
	b.WriteString("|---|---|---|---|---|\n")
	for _, r := range matrix.rows {
		res := r.result
		if len(r.failures) > 0 {
			res += ": " + strings.Join(r.failures, "; ")
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", cell(r.fault), cell(r.injected), cell(strings.Join(r.mta, " / then: ")),
			cell(strings.Join(r.stored, " / then: ")), cell(res))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func cell(s string) string {
	// A reply may echo what a client sent, NUL bytes included.
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			return ' '
		case r < 0x20 || r == 0x7f:
			return '␀'
		}
		return r
	}, s)
	s = strings.ReplaceAll(s, "|", `\|`)
	if s == "" {
		return "—"
	}
	return s
}

// commit names the tree the run came from.
func commit() string {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += " with uncommitted changes"
	}
	return "`" + c + "`"
}

func versions() string {
	var out []string
	for _, p := range []string{"postfix", "cyrus-imapd"} {
		v, err := exec.Command("dpkg-query", "-W", "-f=${Version}", p).Output()
		if err == nil {
			out = append(out, p+" "+strings.TrimSpace(string(v)))
		}
	}
	return strings.Join(out, ", ")
}
