// Package postfix runs lmtpgate the way a Cyrus frontend does in
// production: a private Postfix instance (internal/postfixlab) delivers
// through the built lmtpgate binary, over lmtp:inet: and lmtp:unix:, into
// a real Cyrus murder (internal/murderlab), while the tests inject faults
// — a backend down, hung or frozen mid-DATA, the master down or hung,
// lmtpgate killed or reloaded under load, clients that cut off, send
// garbage or drip — and then reconcile Postfix's log with what the
// backends hold: nothing Postfix was told is delivered may be missing or
// altered, nothing that should be retried may bounce, and a duplicate is
// allowed only where a backend stored a message whose reply never came
// back.
//
// The suite runs in namespaces of its own (internal/sandbox): its own
// loopback, its own /dev/log (Cyrus's syslog, read for duplicate
// suppression), and a PID namespace that takes every Postfix, Cyrus and
// lmtpgate process with it when the tests end, however they end.
//
// It skips under -short. With LMTPGATE_REQUIRE_CYRUS=1 (set by `make
// test`) a missing Postfix or Cyrus fails it instead. With
// LMTPGATE_FAULT_MATRIX=FILE it writes the fault matrix, one row per test
// with what was injected, what Postfix saw and what was stored, to FILE
// (`make fault-matrix` writes docs/fault-matrix.md).
package postfix

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
	"github.com/lmtpgate/lmtpgate/internal/postfixlab"
	"github.com/lmtpgate/lmtpgate/internal/sandbox"
)

func TestMain(m *testing.M) {
	flag.Parse()
	use := !testing.Short() && postfixlab.Available() == nil && murderlab.Available() == nil
	os.Exit(sandbox.Main(use, func() int {
		code := m.Run()
		closeShared()
		if path := os.Getenv("LMTPGATE_FAULT_MATRIX"); path != "" && sandbox.Inside() {
			if err := writeMatrix(path); err != nil {
				fmt.Fprintln(os.Stderr, "fault matrix:", err)
				if code == 0 {
					code = 1
				}
			}
		}
		return code
	}))
}

// require skips the test when the suite cannot run here, or fails it
// when LMTPGATE_REQUIRE_CYRUS=1 says it must.
func require(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("Postfix and a real Cyrus murder: skipped with -short")
	}
	var missing []error
	for _, err := range []error{postfixlab.Available(), murderlab.Available(), sandbox.Available()} {
		if err != nil {
			missing = append(missing, err)
		}
	}
	if len(missing) == 0 && !sandbox.Inside() {
		missing = append(missing, fmt.Errorf("the suite did not enter its sandbox"))
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("LMTPGATE_REQUIRE_CYRUS") == "1" {
		t.Fatalf("LMTPGATE_REQUIRE_CYRUS=1 but %v", missing)
	}
	t.Skip(missing)
}
