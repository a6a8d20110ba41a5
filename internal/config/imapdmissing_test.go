package config

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestMissingImapdConfSaysWhatToDo: on a host without Cyrus the packaged
// imapd_conf: /etc/imapd.conf does not exist; the error must name the key
// and the way out.
func TestMissingImapdConfSaysWhatToDo(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "imapd.conf")
	_, err := Parse("lmtpgate.yaml", []byte("imapd_conf: "+missing+"\n"))
	if err == nil {
		t.Fatal("missing imapd.conf accepted")
	}
	for _, want := range []string{"imapd_conf: open " + missing, `set imapd_conf: ""`, "HOSTS WITHOUT CYRUS"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// An unreadable path that exists (a directory) gets no such hint.
	_, err = Parse("lmtpgate.yaml", []byte("imapd_conf: "+t.TempDir()+"\n"))
	if err == nil || strings.Contains(err.Error(), "HOSTS WITHOUT CYRUS") {
		t.Errorf("directory as imapd_conf: err = %v", err)
	}
}
