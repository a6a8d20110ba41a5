package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/testkit"

	"github.com/lmtpgate/lmtpgate/internal/systemdtest"
)

func waitCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func newTestHandler(t *testing.T, level slog.Leveler) (*Handler, *systemdtest.JournalListener, *testkit.SyncBuffer) {
	t.Helper()
	l := systemdtest.ListenJournal(t, t.TempDir())
	var fb testkit.SyncBuffer
	h, err := NewHandler(Options{Socket: l.Path(), Level: level, Fallback: &fb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Close()
		if fb.String() != "" {
			t.Errorf("unexpected fallback output: %q", fb.String())
		}
	})
	return h, l, &fb
}

// next returns the next entry whose MESSAGE is msg.
func next(t *testing.T, l *systemdtest.JournalListener, msg string) map[string]string {
	t.Helper()
	e, err := l.WaitFor(waitCtx(t), func(e map[string]string) bool { return e["MESSAGE"] == msg })
	if err != nil {
		t.Fatalf("waiting for %q: %v", msg, err)
	}
	return e
}

type stringer struct{}

func (stringer) String() string { return "from-stringer" }

func TestFields(t *testing.T) {
	h, l, _ := newTestHandler(t, nil)
	slog.New(h).Info("delivered",
		"rcpt", "alice@example.org",
		"mailbox", "user.alice",
		"backend", "imap2.example.org",
		"source", "mailboxes.db",
		"code", 250,
		"session", "s-42",
		"dur_ms", 17,
		"mode", "proxy",
		"from", "bob@example.net",
		"err", errors.New("backend said 452"),
		"when", time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
		"took", 1500*time.Millisecond,
		"ok", true,
		"obj", stringer{},
	)
	e := next(t, l, "delivered")
	want := map[string]string{
		"MESSAGE":              "delivered",
		"PRIORITY":             "6",
		"SYSLOG_IDENTIFIER":    "lmtpgate",
		"LMTPGATE_RCPT":        "alice@example.org",
		"LMTPGATE_MAILBOX":     "user.alice",
		"LMTPGATE_BACKEND":     "imap2.example.org",
		"LMTPGATE_SOURCE":      "mailboxes.db",
		"LMTPGATE_CODE":        "250",
		"LMTPGATE_SESSION":     "s-42",
		"LMTPGATE_DURATION_MS": "17",
		"LMTPGATE_MODE":        "proxy",
		"LMTPGATE_FROM":        "bob@example.net",
		"LMTPGATE_ERROR":       "backend said 452",
		"LMTPGATE_WHEN":        "2025-01-02T03:04:05.000000006Z",
		"LMTPGATE_TOOK":        "1.5s",
		"LMTPGATE_OK":          "true",
		"LMTPGATE_OBJ":         "from-stringer",
	}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("%s = %q, want %q", k, e[k], v)
		}
	}
	if !strings.HasSuffix(e["CODE_FILE"], "journal_test.go") || !strings.HasSuffix(e["CODE_FUNC"], ".TestFields") {
		t.Errorf("CODE_FILE=%q CODE_FUNC=%q, want this test", e["CODE_FILE"], e["CODE_FUNC"])
	}
	if n, err := strconv.Atoi(e["CODE_LINE"]); err != nil || n <= 0 {
		t.Errorf("CODE_LINE = %q", e["CODE_LINE"])
	}
	if len(e) != len(want)+3 {
		t.Errorf("entry has %d fields, want %d: %v", len(e), len(want)+3, e)
	}
}

func TestIdentifier(t *testing.T) {
	l := systemdtest.ListenJournal(t, t.TempDir())
	h, err := NewHandler(Options{Socket: l.Path(), Identifier: "lmtpgate-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	slog.New(h).Warn("w")
	if e := next(t, l, "w"); e["SYSLOG_IDENTIFIER"] != "lmtpgate-test" {
		t.Errorf("SYSLOG_IDENTIFIER = %q", e["SYSLOG_IDENTIFIER"])
	}
}

func TestPriorities(t *testing.T) {
	h, l, _ := newTestHandler(t, slog.LevelDebug-8)
	tests := []struct {
		level slog.Level
		want  string
	}{
		{slog.LevelDebug - 4, "7"},
		{slog.LevelDebug, "7"},
		{slog.LevelInfo, "6"},
		{slog.LevelInfo + 1, "6"},
		{LevelNotice, "5"},
		{LevelNotice + 1, "5"},
		{slog.LevelWarn, "4"},
		{slog.LevelError, "3"},
		{slog.LevelError + 8, "3"},
	}
	log := slog.New(h)
	for _, tc := range tests {
		msg := "level " + tc.level.String()
		log.Log(context.Background(), tc.level, msg)
		if got := next(t, l, msg)["PRIORITY"]; got != tc.want {
			t.Errorf("%v: PRIORITY=%s, want %s", tc.level, got, tc.want)
		}
	}
}

func TestLevelFilter(t *testing.T) {
	var lv slog.LevelVar
	lv.Set(slog.LevelWarn)
	h, l, _ := newTestHandler(t, &lv)
	log := slog.New(h)
	log.Info("dropped")
	log.Debug("dropped")
	log.Warn("kept")
	lv.Set(slog.LevelDebug) // a reload can lower the level at run time
	log.Debug("now kept")
	next(t, l, "kept")
	next(t, l, "now kept")
	for _, e := range l.Entries() {
		if e["MESSAGE"] == "dropped" {
			t.Errorf("entry below level was written: %v", e)
		}
	}
}

func TestMultilineRoundTrip(t *testing.T) {
	h, l, _ := newTestHandler(t, nil)
	msg := "first line\nsecond line\r\nwith = sign\x00nul\n"
	val := "a\nFAKE_FIELD=injected\n"
	slog.New(h).Error(msg, "reply", val)
	e := next(t, l, msg)
	if e["LMTPGATE_REPLY"] != val {
		t.Errorf("LMTPGATE_REPLY = %q, want %q", e["LMTPGATE_REPLY"], val)
	}
	if _, ok := e["FAKE_FIELD"]; ok {
		t.Error("newline in a value injected a field")
	}
	// The binary form is what carries the newline; check it is used.
	enc := encode([]field{{"MESSAGE", "a\nb"}, {"X", "c"}})
	want := "MESSAGE\n\x03\x00\x00\x00\x00\x00\x00\x00a\nb\nX=c\n"
	if string(enc) != want {
		t.Errorf("encode = %q, want %q", enc, want)
	}
}

func TestHugeMessageViaMemfd(t *testing.T) {
	h, l, _ := newTestHandler(t, nil)
	// 16 MiB exceeds any datagram the socket accepts (at most twice
	// net.core.wmem_max), so the entry must travel as a memfd.
	var b strings.Builder
	for i := 0; b.Len() < 16<<20; i++ {
		fmt.Fprintf(&b, "line %d of a very long bounce\n", i)
	}
	msg := b.String()
	slog.New(h).Info(msg, "rcpt", "big@example.org")
	e := next(t, l, msg)
	if e["LMTPGATE_RCPT"] != "big@example.org" {
		t.Errorf("LMTPGATE_RCPT = %q", e["LMTPGATE_RCPT"])
	}
	if l.MemfdEntries() != 1 {
		t.Errorf("MemfdEntries = %d, want 1", l.MemfdEntries())
	}
}

func TestForcedMemfd(t *testing.T) {
	h, l, _ := newTestHandler(t, nil)
	h.s.maxDatagram = 64
	slog.New(h).Info("small but over the forced limit", "k", "v")
	if e := next(t, l, "small but over the forced limit"); e["LMTPGATE_K"] != "v" {
		t.Errorf("entry %v", e)
	}
	if l.MemfdEntries() != 1 {
		t.Errorf("MemfdEntries = %d, want 1", l.MemfdEntries())
	}
}

func TestTruncateWhenMemfdFails(t *testing.T) {
	h, l, _ := newTestHandler(t, nil)
	h.s.maxDatagram = 4 * truncateAt
	h.s.noMemfd = true
	msg := strings.Repeat("é", 2*truncateAt) // 2 bytes each: cut must not split one
	slog.New(h).Info(msg, "rcpt", "r@example.org")
	e, err := l.WaitFor(waitCtx(t), func(map[string]string) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	got := e["MESSAGE"]
	suffix := fmt.Sprintf("… (truncated from %d bytes)", len(msg))
	if !strings.HasSuffix(got, suffix) || !strings.HasPrefix(msg, strings.TrimSuffix(got, suffix)) {
		t.Errorf("MESSAGE not a truncated prefix: %d bytes ending %q", len(got), got[max(0, len(got)-60):])
	}
	if body := strings.TrimSuffix(got, suffix); len(body) > truncateAt || len(body)%2 != 0 {
		t.Errorf("kept %d bytes, want ≤%d whole runes", len(body), truncateAt)
	}
	if e["LMTPGATE_RCPT"] != "r@example.org" {
		t.Errorf("LMTPGATE_RCPT = %q", e["LMTPGATE_RCPT"])
	}
	if l.MemfdEntries() != 0 {
		t.Errorf("MemfdEntries = %d, want 0", l.MemfdEntries())
	}
}

func TestKeySanitising(t *testing.T) {
	h, l, _ := newTestHandler(t, nil)
	long := strings.Repeat("x", 100)
	tests := []struct{ key, want string }{
		{"user-id", "LMTPGATE_USER_ID"},
		{"a.b c", "LMTPGATE_A_B_C"},
		{"Mixed_Case9", "LMTPGATE_MIXED_CASE9"},
		{"9lives", "LMTPGATE_9LIVES"},
		{"_x", "LMTPGATE__X"},
		{"ünï", "LMTPGATE__N_"},
		{"", "LMTPGATE_"},
		{long, ("LMTPGATE_" + strings.ToUpper(long))[:64]},
	}
	for i, tc := range tests {
		msg := "sanitise " + strconv.Itoa(i)
		slog.New(h).Info(msg, tc.key, "v"+strconv.Itoa(i))
		e := next(t, l, msg)
		if e[tc.want] != "v"+strconv.Itoa(i) {
			t.Errorf("key %q: want field %s, entry %v", tc.key, tc.want, e)
		}
		for name := range e {
			if !systemdtest.ValidFieldName(name) {
				t.Errorf("key %q produced invalid field name %q", tc.key, name)
			}
		}
	}
}

func TestGroupsAndAttrs(t *testing.T) {
	h, l, _ := newTestHandler(t, nil)
	log := slog.New(h).With("session", "s1")
	tlsLog := log.WithGroup("tls").With("version", "1.3")
	tlsLog.Info("handshake", "cipher", "TLS_AES_128_GCM_SHA256", slog.Group("peer", "err", "eof"))
	e := next(t, l, "handshake")
	want := map[string]string{
		"LMTPGATE_SESSION":        "s1",
		"LMTPGATE_TLS_VERSION":    "1.3",
		"LMTPGATE_TLS_CIPHER":     "TLS_AES_128_GCM_SHA256",
		"LMTPGATE_TLS_PEER_ERROR": "eof",
	}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("%s = %q, want %q (entry %v)", k, e[k], v, e)
		}
	}

	// Inline (empty-key) groups, empty groups, zero attrs, WithGroup("")
	// and LogValuers follow the slog.Handler rules.
	slog.New(h.WithGroup("")).Info("rules",
		slog.Group("", "inlined", 1),
		slog.Group("empty"),
		slog.Attr{},
		"lv", lv{},
		slog.Group("my-group", slog.Int("n", 2)))
	e = next(t, l, "rules")
	if e["LMTPGATE_INLINED"] != "1" || e["LMTPGATE_LV_RCPT"] != "x@y" || e["LMTPGATE_MY_GROUP_N"] != "2" {
		t.Errorf("entry %v", e)
	}
	for k := range e {
		if strings.HasPrefix(k, "LMTPGATE_EMPTY") || k == "LMTPGATE_" {
			t.Errorf("unexpected field %s", k)
		}
	}
	// The parent handler is unaffected by derived ones.
	slog.New(h).Info("plain")
	if e := next(t, l, "plain"); e["LMTPGATE_SESSION"] != "" || e["LMTPGATE_TLS_VERSION"] != "" {
		t.Errorf("attrs leaked into parent: %v", e)
	}
}

type lv struct{}

func (lv) LogValue() slog.Value { return slog.GroupValue(slog.String("rcpt", "x@y")) }

type panicErr struct{ p *int }

func (e panicErr) Error() string { return strconv.Itoa(*e.p) }

func TestPanickingErrorDoesNotCrash(t *testing.T) {
	h, l, _ := newTestHandler(t, nil)
	slog.New(h).Error("boom", "err", panicErr{})
	if e := next(t, l, "boom"); !strings.Contains(e["LMTPGATE_ERROR"], "PANIC") {
		t.Errorf("LMTPGATE_ERROR = %q", e["LMTPGATE_ERROR"])
	}
}

func TestFallbackWhenJournaldAbsent(t *testing.T) {
	var fb bytes.Buffer
	h, err := NewHandler(Options{Socket: filepath.Join(t.TempDir(), "absent"), Fallback: &fb})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	log := slog.New(h).With("rcpt", "a@example.org")
	log.Info("first", "code", 250)
	log.WithGroup("g").Warn("second", "k", "v\nw")
	out := fb.String()
	for _, want := range []string{
		"cannot log to journald",
		"msg=first rcpt=a@example.org code=250",
		`msg=second rcpt=a@example.org g.k="v\nw"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("fallback output lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "cannot log to journald") != 1 {
		t.Errorf("reason should be written once:\n%s", out)
	}
	if err := h.Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelInfo, "x", 0)); err != nil {
		t.Errorf("Handle with a working fallback returned %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("stderr closed") }

func TestErrorWhenEverythingFails(t *testing.T) {
	h, err := NewHandler(Options{Socket: filepath.Join(t.TempDir(), "absent"), Fallback: failWriter{}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelInfo, "x", 0)); err == nil {
		t.Error("Handle returned nil though the record was lost")
	}
}

func TestConcurrent(t *testing.T) {
	h, l, _ := newTestHandler(t, nil)
	const workers, each = 8, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log := slog.New(h).With("worker", w)
			for i := range each {
				log.WithGroup("g").Info("concurrent", "i", i, "multi", "a\nb")
			}
		}()
	}
	wg.Wait()
	seen := make(map[string]bool)
	for range workers * each {
		e := next(t, l, "concurrent")
		if e["LMTPGATE_G_MULTI"] != "a\nb" {
			t.Fatalf("corrupt entry %v", e)
		}
		seen[e["LMTPGATE_WORKER"]+"/"+e["LMTPGATE_G_I"]] = true
	}
	if len(seen) != workers*each {
		t.Errorf("%d distinct entries, want %d", len(seen), workers*each)
	}
}
