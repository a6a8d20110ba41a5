package mboxlist

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/testkit"
)

// countLines counts the log lines in l containing all of the given substrings.
func countLines(l *testkit.SyncBuffer, subs ...string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		ok := line != ""
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			n++
		}
	}
	return n
}

// flatDB renders a flat-format mailboxes.db (Cyrus 3.6 keys) routing each
// mailbox to the given server. No byte of these keys or values needs the
// flat engine's escaping.
func flatDB(routes map[string]string) []byte {
	var lines []string
	for name, srv := range routes {
		lines = append(lines, "N"+string(intnameToDBName(name))+"\t%(T er P default S "+srv+" M 1718000000 A %(anyone p))\n")
	}
	// Flat files are sorted; any consistent order will do for the reader.
	sortStrings(lines)
	return []byte(strings.Join(lines, ""))
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// waitFor waits for cond; the bound only guards against a hang and is
// not a performance requirement.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, 15*time.Second, what, cond)
}

func serverOf(d *DB, name string) string {
	e, err := d.Lookup(context.Background(), name)
	if err != nil {
		return "err:" + err.Error()
	}
	return e.Server
}

// writeAtomically writes path the way Cyrus repacks: a .NEW file renamed
// over the original.
func writeAtomically(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path+".NEW", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".NEW", path); err != nil {
		t.Fatal(err)
	}
}

// writeInPlace rewrites the file keeping its inode, as a twoskip commit
// modifies the live file.
func writeInPlace(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

type harness struct {
	d    *DB
	log  *testkit.SyncBuffer
	path string
}

func startDB(t *testing.T, cfg Config, initial []byte) (*harness, error) {
	t.Helper()
	dir := t.TempDir()
	h := &harness{log: &testkit.SyncBuffer{}, path: filepath.Join(dir, "mailboxes.db")}
	if initial != nil {
		if err := os.WriteFile(h.path, initial, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Path = h.path
	if cfg.PollInterval == 0 {
		// A long safety-net interval, so that inotify tests really
		// exercise inotify.
		cfg.PollInterval = time.Hour
	}
	cfg = testConfig(cfg)
	h.d = New(cfg, slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx, cancel := context.WithCancel(context.Background())
	err := h.d.Start(ctx)
	t.Cleanup(func() {
		cancel()
		h.d.Close()
	})
	return h, err
}

func modes() []struct {
	name string
	cfg  Config
	want string
} {
	return []struct {
		name string
		cfg  Config
		want string
	}{
		{"inotify", Config{}, "inotify"},
		{"polling", Config{ForcePolling: true, PollInterval: 20 * time.Millisecond}, "polling"},
	}
}

func TestWatchFollowsChanges(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			h, err := startDB(t, m.cfg, flatDB(map[string]string{"user.alice": "b1"}))
			if err != nil {
				t.Fatal(err)
			}
			if got := serverOf(h.d, "user.alice"); got != "b1" {
				t.Fatalf("after Start: %s", got)
			}
			waitFor(t, "watch mode in status", func() bool { return h.d.Status().Watching == m.want })

			// A commit in place (the file grows, inode kept).
			writeInPlace(t, h.path, flatDB(map[string]string{"user.alice": "b1", "user.bob": "b2"}))
			waitFor(t, "in-place change", func() bool { return serverOf(h.d, "user.bob") == "b2" })

			// A repack: .NEW renamed over the file.
			writeAtomically(t, h.path, flatDB(map[string]string{"user.alice": "b3", "user.bob": "b2", "user.carol": "b1"}))
			waitFor(t, "renamed file", func() bool { return serverOf(h.d, "user.alice") == "b3" })

			// A mailbox deleted in the murder is gone from routing.
			writeAtomically(t, h.path, flatDB(map[string]string{"user.alice": "b3", "user.carol": "b1"}))
			waitFor(t, "deletion", func() bool {
				_, err := h.d.Lookup(context.Background(), "user.bob")
				return err == lookup.ErrNotFound
			})

			// The file deleted: the old table stays.
			if err := os.Remove(h.path); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "error for missing file", func() bool { return countLines(h.log, "level=ERROR", "keeping the previous routing table") == 1 })
			if got := serverOf(h.d, "user.carol"); got != "b1" {
				t.Errorf("after removal: %s, want the previous table", got)
			}
			if st := h.d.Status(); !st.Loaded || st.LastError == "" || st.Entries != 2 {
				t.Errorf("status after removal = %+v", st)
			}

			// And re-created.
			writeAtomically(t, h.path, flatDB(map[string]string{"user.dave": "b4"}))
			waitFor(t, "re-created file", func() bool { return serverOf(h.d, "user.dave") == "b4" })
			if _, err := h.d.Lookup(context.Background(), "user.carol"); err != lookup.ErrNotFound {
				t.Errorf("user.carol after re-creation: %v", err)
			}
			if n := countLines(h.log, "readable again"); n != 1 {
				t.Errorf("%d recovery messages, want 1:\n%s", n, h.log)
			}
		})
	}
}

func TestWatchCorruptKeepsIndexAndLogsOnce(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			h, err := startDB(t, m.cfg, flatDB(map[string]string{"user.alice": "b1"}))
			if err != nil {
				t.Fatal(err)
			}
			// Not a Cyrus database at all: an unknown magic.
			bad := append([]byte("\xa1\x02\x8b\x0dtwom file\x00\x00\x00\x00\x00\x00\x00"), make([]byte, 100)...)
			writeAtomically(t, h.path, bad)
			waitFor(t, "error logged", func() bool { return countLines(h.log, "level=ERROR") >= 1 })
			// More events with the same problem: modify the bad file
			// in place and force re-reads.
			writeInPlace(t, h.path, append(bad, 0))
			for i := 0; i < 3; i++ {
				if err := h.d.Reload(context.Background()); err == nil {
					t.Fatal("Reload of a corrupt file succeeded")
				}
			}
			time.Sleep(100 * time.Millisecond) // let any pending event be handled
			if n := countLines(h.log, "level=ERROR"); n != 1 {
				t.Errorf("%d error lines, want exactly 1:\n%s", n, h.log)
			}
			if !strings.Contains(h.log.String(), "path="+h.path) {
				t.Errorf("error does not name the path:\n%s", h.log)
			}
			if got := serverOf(h.d, "user.alice"); got != "b1" {
				t.Errorf("corrupt file emptied the table: %s", got)
			}
			st := h.d.Status()
			if !st.Loaded || st.Entries != 1 || st.LastError == "" || st.LastErrorAt.IsZero() {
				t.Errorf("status = %+v", st)
			}

			// Fixed again.
			writeAtomically(t, h.path, flatDB(map[string]string{"user.alice": "b2"}))
			waitFor(t, "recovery", func() bool { return serverOf(h.d, "user.alice") == "b2" })
			waitFor(t, "recovery message", func() bool { return countLines(h.log, "readable again") == 1 })

			// A new, different problem is logged again.
			writeAtomically(t, h.path, nil)
			waitFor(t, "second error", func() bool { return countLines(h.log, "level=ERROR") == 2 })
			if got := serverOf(h.d, "user.alice"); got != "b2" {
				t.Errorf("empty file emptied the table: %s", got)
			}
		})
	}
}

func TestUnavailableBeforeFirstLoad(t *testing.T) {
	for _, m := range modes() {
		t.Run(m.name, func(t *testing.T) {
			h, err := startDB(t, m.cfg, nil)
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Start error = %v, want not-exist", err)
			}
			_, err = h.d.Lookup(context.Background(), "user.alice")
			if !errors.Is(err, ErrUnavailable) || errors.Is(err, lookup.ErrNotFound) {
				t.Fatalf("Lookup before load: %v, want ErrUnavailable", err)
			}
			if st := h.d.Status(); st.Loaded || st.LastError == "" {
				t.Errorf("status = %+v", st)
			}
			if n := countLines(h.log, "level=ERROR", "source unavailable"); n != 1 {
				t.Errorf("%d errors logged, want 1:\n%s", n, h.log)
			}
			writeAtomically(t, h.path, flatDB(map[string]string{"user.alice": "b1"}))
			waitFor(t, "file appearing", func() bool { return serverOf(h.d, "user.alice") == "b1" })
		})
	}
}

// A valid file with no mailbox entries is a valid, empty table: right after
// a 3.6 upgrade a frontend's mailboxes.db can be almost empty (imap/mboxlist.c,
// mboxlist_upgrade skips frontend entries), and "no such mailbox" is then the truth.
func TestEmptyTableIsValid(t *testing.T) {
	h, err := startDB(t, Config{}, []byte("Iabc\t%(T e N user\x1fa)\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.d.Lookup(context.Background(), "user.a"); err != lookup.ErrNotFound {
		t.Errorf("Lookup = %v, want ErrNotFound", err)
	}
	if st := h.d.Status(); !st.Loaded || st.Entries != 0 {
		t.Errorf("status = %+v", st)
	}
}

func TestDBLookupAllocFree(t *testing.T) {
	h, err := startDB(t, Config{}, flatDB(map[string]string{"user.alice": "b1"}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := h.d.Lookup(ctx, "user.alice"); err != nil {
			t.Fatal(err)
		}
		if _, err := h.d.Lookup(ctx, "user.nobody"); err != lookup.ErrNotFound {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("DB.Lookup allocates %v times, want 0", allocs)
	}
}

func TestReloadAndClose(t *testing.T) {
	h, err := startDB(t, Config{ForcePolling: true, PollInterval: time.Hour}, flatDB(map[string]string{"user.alice": "b1"}))
	if err != nil {
		t.Fatal(err)
	}
	if h.d.Name() != "mailboxes-db" {
		t.Errorf("Name = %q", h.d.Name())
	}
	var _ lookup.Source = h.d
	writeAtomically(t, h.path, flatDB(map[string]string{"user.alice": "b2"}))
	// Polling once an hour: only Reload can pick this up.
	if err := h.d.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := serverOf(h.d, "user.alice"); got != "b2" {
		t.Errorf("after Reload: %s", got)
	}
	if err := h.d.Close(); err != nil {
		t.Fatal(err)
	}
	// After Close the last table still answers.
	if got := serverOf(h.d, "user.alice"); got != "b2" {
		t.Errorf("after Close: %s", got)
	}
	if err := h.d.Start(context.Background()); err == nil {
		t.Error("Start after Close succeeded")
	}
}

func TestPollingFallbackWhenDirectoryMissing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not-yet")
	path := filepath.Join(dir, "mailboxes.db")
	lb := &testkit.SyncBuffer{}
	d := New(testConfig(Config{Path: path, PollInterval: 20 * time.Millisecond}), slog.New(slog.NewTextHandler(lb, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer d.Close()
	if err := d.Start(ctx); err == nil {
		t.Fatal("Start succeeded without a file")
	}
	waitFor(t, "polling mode", func() bool { return d.Status().Watching == "polling" })
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeAtomically(t, path, flatDB(map[string]string{"user.x": "b7"}))
	waitFor(t, "file found by polling", func() bool { return serverOf(d, "user.x") == "b7" })
}

func TestLoadOnce(t *testing.T) {
	x, err := LoadOnce(context.Background(), "testdata/frontend.mailboxes.db.twoskip", 0)
	if err != nil {
		t.Fatal(err)
	}
	if x.Len() != 10 {
		t.Errorf("Len = %d, want 10", x.Len())
	}
	if e, err := x.Lookup("user.carol.Archive"); err != nil || e.Server != "127.0.0.3" {
		t.Errorf("Lookup = %+v, %v", e, err)
	}
	if _, err := LoadOnce(context.Background(), "testdata/nonexistent", 0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// An unchanged file is not re-read: the identity from the cheap header
// stat must match the one recorded from the full read, for every engine.
// (Otherwise every poll would rebuild the whole index.)
func TestUnchangedFileNotReread(t *testing.T) {
	for _, format := range []string{"twoskip", "skiplist", "flat"} {
		t.Run(format, func(t *testing.T) {
			data, err := os.ReadFile("testdata/frontend.mailboxes.db." + format)
			if err != nil {
				t.Fatal(err)
			}
			h, err := startDB(t, Config{ForcePolling: true, PollInterval: time.Hour}, data)
			if err != nil {
				t.Fatal(err)
			}
			st := h.d.Status()
			if st.Format.String() != format || st.Entries != 10 || st.Inode == 0 {
				t.Errorf("status = %+v", st)
			}
			for i := 0; i < 3; i++ {
				if err := h.d.check(context.Background(), false); err != nil {
					t.Fatal(err)
				}
			}
			if got := h.d.Status().LoadedAt; !got.Equal(st.LoadedAt) {
				t.Errorf("unchanged %s file was re-read", format)
			}
			// Whereas a forced reload does read it.
			if err := h.d.Reload(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := h.d.Status().LoadedAt; got.Equal(st.LoadedAt) {
				t.Errorf("Reload did not re-read")
			}
		})
	}
}

// testConfig fills the fields a test leaves zero from DefaultConfig, so a
// test names only what it is about.
func testConfig(c Config) Config {
	d := DefaultConfig()
	if c.Debounce == 0 {
		c.Debounce = d.Debounce
	}
	if c.PollInterval == 0 {
		c.PollInterval = d.PollInterval
	}
	if c.LockTimeout == 0 {
		c.LockTimeout = d.LockTimeout
	}
	if c.ReplicaTimeout == 0 {
		c.ReplicaTimeout = d.ReplicaTimeout
	}
	return c
}
