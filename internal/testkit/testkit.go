// Package testkit holds what lmtpgate's tests share: a log buffer that
// goroutines write while a test reads it, and polling with a bound that
// only guards against hangs. (A real Cyrus murder for tests is
// internal/murderlab; the built binary as a daemon is internal/testbin.)
package testkit

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// SyncBuffer is a bytes.Buffer safe for concurrent writes and reads, for
// capturing a logger's output.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Eventually polls cond every 10 ms until it holds or bound passes, and
// reports whether it held. The bound is a guard against hangs, never part
// of what a test asserts about speed.
func Eventually(bound time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(bound)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TB is the part of testing.TB that WaitFor uses (so that this package
// does not link the testing package into the demo and the benchmark).
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// WaitFor fails t unless cond holds within bound (see Eventually: the
// bound guards against a hang). what names what was awaited.
func WaitFor(t TB, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Eventually(bound, cond) {
		t.Fatalf("timed out after %v waiting for %s", bound, what)
	}
}

// MakeSearchable adds o+x to dir and each ancestor lacking it, so that a
// service's own user (cyrus, postfix) can reach an instance directory
// inside a 0700 t.TempDir(). Nothing is made readable or writable. who
// names that user in the error.
func MakeSearchable(dir, who string) error {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, st.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("make %s searchable for user %s: %w", d, who, err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
