// Package testkit holds what lmtpgate's tests share: a log buffer that
// goroutines write while a test reads it, and polling with a bound that
// only guards against hangs. (A real Cyrus murder for tests is
// internal/murderlab; the built binary as a daemon is internal/testbin.)
package testkit

import (
	"bytes"
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
