package murderlab

import (
	"context"
	"os"
	"testing"
	"time"
)

// RequireCyrus skips the test when the lab cannot run here or under
// `go test -short`, except that with LMTPGATE_REQUIRE_CYRUS=1 a missing
// Cyrus fails the test instead of skipping it (so CI cannot pass vacuously).
func RequireCyrus(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("LMTPGATE_REQUIRE_CYRUS") == "1" {
			t.Fatalf("LMTPGATE_REQUIRE_CYRUS=1 but %v", err)
		}
		t.Skip(err)
	}
	if testing.Short() {
		t.Skip("real Cyrus murder: skipped with -short")
	}
}

// StartTest is Start for tests: it calls RequireCyrus, uses a fresh
// t.TempDir() when opt.Dir is empty, gives startup two minutes, registers
// Close with t.Cleanup (logging the Cyrus masters' output if the test
// failed) and fails the test if the lab does not come up.
func StartTest(t testing.TB, opt Options) *Lab {
	t.Helper()
	RequireCyrus(t)
	if opt.Dir == "" {
		opt.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Start(ctx, opt)
	if err != nil {
		t.Fatalf("murderlab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for name, s := range l.LogTail() {
				if s != "" {
					t.Logf("murderlab %s output:\n%s", name, s)
				}
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("murderlab close: %v", err)
		}
	})
	return l
}
