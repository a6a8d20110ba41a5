package journal

import (
	"errors"
	"testing"
)

func TestShouldUse(t *testing.T) {
	tests := []struct {
		name    string
		stream  string
		statErr error
		socket  bool
		term    bool
		want    bool
	}{
		{"stream matches stderr", "66:1234", nil, false, false, true},
		{"stream matches, terminal irrelevant", "66:1234", nil, true, true, true},
		{"stream redirected elsewhere", "66:9999", nil, true, false, false},
		{"stream other device", "67:1234", nil, true, false, false},
		{"stream malformed", "garbage", nil, true, false, false},
		{"stream but fstat fails", "66:1234", errors.New("EBADF"), true, false, false},
		{"no stream, socket, not a terminal", "", nil, true, false, true},
		{"no stream, socket, terminal", "", nil, true, true, false},
		{"no stream, no socket", "", nil, false, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var askedSocket string
			p := Probe{
				Getenv: func(k string) string {
					if k == "JOURNAL_STREAM" {
						return tc.stream
					}
					return ""
				},
				StderrID:         func() (uint64, uint64, error) { return 66, 1234, tc.statErr },
				StderrIsTerminal: func() bool { return tc.term },
				SocketExists: func(p string) bool {
					askedSocket = p
					return tc.socket
				},
			}
			if got := p.ShouldUse(); got != tc.want {
				t.Errorf("ShouldUse() = %v, want %v", got, tc.want)
			}
			// The stream half alone: a socket or a missing terminal
			// never makes stderr a journal stream.
			if got, want := p.StderrIsStream(), tc.stream != "" && tc.want; got != want {
				t.Errorf("StderrIsStream() = %v, want %v", got, want)
			}
			if askedSocket != "" && askedSocket != DefaultSocket {
				t.Errorf("checked socket %q", askedSocket)
			}
		})
	}
}

func TestShouldUseRealProcess(t *testing.T) {
	// No journald on build machines and no JOURNAL_STREAM for go test:
	// the real probe must not claim a journal that is not there.
	t.Setenv("JOURNAL_STREAM", "")
	if realSocketExists(DefaultSocket) {
		t.Skip("journald socket present on this machine")
	}
	if ShouldUse() {
		t.Error("ShouldUse() = true without journald")
	}
}
