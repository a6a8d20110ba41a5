// Package packagetest checks what the lmtpgate packages ship: the default
// configuration, the systemd units, the man pages and, with
// LMTPGATE_PACKAGE_TEST=1, the installed package delivering through a real
// Cyrus murder. packaging/package-test.sh runs it after installing the .deb.
package packagetest

import (
	"os"
	"path/filepath"
	"testing"
)

// repoRoot is the module root: this package lives in test/package.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Clean(filepath.Join(wd, "..", ".."))
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found from %s: %v", wd, err)
	}
	return root
}
