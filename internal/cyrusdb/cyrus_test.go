package cyrusdb

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/lmtpgate/lmtpgate/internal/murderlab"
)

const cyrusBin = murderlab.CyrusBin

// cyrusEnv prepares a configdirectory that Cyrus's tools accept, or skips
// the test: under -short always, and when Cyrus is not installed unless
// LMTPGATE_REQUIRE_CYRUS=1, which turns a missing Cyrus into a failure.
type cyrusEnv struct {
	t    *testing.T
	dir  string
	conf string
}

func newCyrusEnv(t *testing.T) *cyrusEnv {
	t.Helper()
	murderlab.RequireCyrus(t)
	// Cyrus tools run as root switch to user cyrus, so the directory must
	// be reachable and writable by it; t.TempDir's parent is private.
	dir, err := os.MkdirTemp("", "cyrusdb-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 {
		u, err := user.Lookup("cyrus")
		if err != nil {
			t.Fatalf("running as root but no cyrus user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "imapd.conf")
	text := fmt.Sprintf("configdirectory: %s\npartition-default: %s/spool\n", dir, dir)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return &cyrusEnv{t: t, dir: dir, conf: conf}
}

func (e *cyrusEnv) run(stdin []byte, args ...string) []byte {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(cyrusBin, args[0]), append([]string{"-C", e.conf}, args[1:]...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		e.t.Fatalf("%v: %v\n%s", args, err, stderr.Bytes())
	}
	// cyr_dbtool batch reports failures on stdout and still exits 0.
	if bytes.Contains(out, []byte("FAILED")) {
		e.t.Fatalf("%v: %s", args, out)
	}
	return out
}

// create makes an empty file for cyr_dbtool, which opens its database
// O_RDWR without O_CREAT; an empty file is initialised by the engine.
func (e *cyrusEnv) create(name string) string {
	path := filepath.Join(e.dir, name)
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		e.t.Fatal(err)
	}
	if os.Getuid() == 0 {
		u, _ := user.Lookup("cyrus")
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		os.Chown(path, uid, gid)
	}
	return path
}

// literal quotes b as an IMAP non-synchronising literal, which
// cyr_dbtool's batch mode reads, so keys may hold any byte.
func literal(b []byte) string { return fmt.Sprintf("{%d+}\r\n%s", len(b), b) }

// check compares ReadFile of path with both the model and cyr_dbtool show.
func (e *cyrusEnv) check(path string, f Format, model map[string]string) *DB {
	e.t.Helper()
	db, err := ReadFile(e.t.Context(), path, Auto)
	if err != nil {
		e.t.Fatalf("ReadFile %s: %v", path, err)
	}
	if db.Info.Format != f || db.Info.Dirty {
		e.t.Errorf("%s: Info %+v", path, db.Info)
	}
	got := collect(e.t, db)
	show := parseShow(e.t, e.run(nil, "cyr_dbtool", path, f.String(), "show"))
	diffKV(e.t, f.String()+" vs cyr_dbtool show", got, show)
	var want []kv
	for _, k := range slices.Sorted(maps.Keys(model)) {
		want = append(want, kv{k, model[k]})
	}
	diffKV(e.t, f.String()+" vs model", got, want)
	if !db.RawSorted() {
		e.t.Errorf("%s: keys not in raw byte order", path)
	}
	return db
}

// TestRealCyrus writes databases with Cyrus 3.6's own tools, through
// inserts, replaces, deletes and a repack, in all three engines, and reads
// them back.
func TestRealCyrus(t *testing.T) {
	e := newCyrusEnv(t)
	rng := rand.New(rand.NewPCG(1, 2))
	model := map[string]string{}
	randKey := func(i int) []byte {
		// Mailbox-like keys with Cyrus's 0x1F separator and a few
		// binary bytes; TAB and LF are left out only because cyr_dbtool
		// show prints keys and values raw.
		k := fmt.Appendf(nil, "Nuser\x1fu%05d", i)
		if i%7 == 0 {
			k = append(k, 0x1f, 0xff, 0x01, 0x80, '\r', byte(i))
			k = bytes.ReplaceAll(bytes.ReplaceAll(k, []byte{'\t'}, nil), []byte{'\n'}, nil)
		}
		return k
	}
	val := func(i, gen int) []byte {
		return fmt.Appendf(nil, "%%(T r P default S backend%d M %d A %%(u%05d lrs))%s", i%3, gen, i, bytes.Repeat([]byte{'x'}, rng.IntN(40)))
	}

	ts := e.create("mailboxes.db")
	var batch bytes.Buffer
	batch.WriteString("BEGIN\n")
	for i := range 1500 {
		k, v := randKey(i), val(i, 1)
		fmt.Fprintf(&batch, "SET %s %s\n", literal(k), literal(v))
		model[string(k)] = string(v)
	}
	batch.WriteString("COMMIT\n")
	e.run(batch.Bytes(), "cyr_dbtool", ts, "twoskip", "batch")
	db := e.check(ts, Twoskip, model)
	// A large first transaction already triggers Cyrus's automatic
	// repack at the end of the session (current_size > 16834 and > twice
	// repack_size), so the generation is usually 2 here.
	gen1 := db.Info.Generation

	// Many small transactions: replaces and deletes, each its own commit.
	batch.Reset()
	for i := range 1500 {
		k := randKey(i)
		switch {
		case i%3 == 0:
			fmt.Fprintf(&batch, "DELETE %s\n", literal(k))
			delete(model, string(k))
		case i%3 == 1:
			v := val(i, 2)
			fmt.Fprintf(&batch, "SET %s %s\n", literal(k), literal(v))
			model[string(k)] = string(v)
		}
	}
	e.run(batch.Bytes(), "cyr_dbtool", ts, "twoskip", "batch")
	db = e.check(ts, Twoskip, model)
	if db.Info.RepackSize >= db.Info.CommittedSize {
		t.Logf("after updates: %+v", db.Info)
	}

	// Single-command invocations: insert, replace, delete.
	e.run(nil, "cyr_dbtool", ts, "twoskip", "set", "Nuser\x1fzz", "one")
	e.run(nil, "cyr_dbtool", ts, "twoskip", "set", "Nuser\x1fzz", "two")
	e.run(nil, "cyr_dbtool", ts, "twoskip", "set", "Nuser\x1fzy", "three")
	e.run(nil, "cyr_dbtool", ts, "twoskip", "delete", "Nuser\x1fzy")
	model["Nuser\x1fzz"] = "two"
	db = e.check(ts, Twoskip, model)

	// An explicit repack rewrites the file under a new inode and
	// generation. Cyrus records repack_size before the repack's own
	// COMMIT, so it is 24 bytes short of current_size, not equal.
	before := db.Info
	e.run(nil, "cyr_dbtool", ts, "twoskip", "repack")
	db = e.check(ts, Twoskip, model)
	if db.Info.Generation <= before.Generation || db.Info.Inode == before.Inode ||
		db.Info.CommittedSize >= before.CommittedSize || db.Info.RepackSize > db.Info.CommittedSize {
		t.Errorf("repack: before %+v, after %+v (first generation %d)", before, db.Info, gen1)
	}
	if st, err := Stat(ts); err != nil || st.Generation != db.Info.Generation || st.Inode != db.Info.Inode {
		t.Errorf("Stat after repack = %+v, %v", st, err)
	}

	// Convert to the other engines, then change them with Cyrus too.
	for _, f := range []Format{Skiplist, Flat} {
		out := filepath.Join(e.dir, "mailboxes."+f.String())
		e.run(nil, "cvt_cyrusdb", ts, "twoskip", out, f.String())
		m := maps.Clone(model)
		e.check(out, f, m)

		batch.Reset()
		for i := 1500; i < 1600; i++ {
			k, v := randKey(i), val(i, 3)
			fmt.Fprintf(&batch, "SET %s %s\n", literal(k), literal(v))
			m[string(k)] = string(v)
		}
		for i := range 60 {
			k := randKey(i)
			fmt.Fprintf(&batch, "DELETE %s\n", literal(k))
			delete(m, string(k))
			v := val(i, 4)
			if i%2 == 0 {
				fmt.Fprintf(&batch, "SET %s %s\n", literal(k), literal(v))
				m[string(k)] = string(v)
			}
		}
		e.run(batch.Bytes(), "cyr_dbtool", out, f.String(), "batch")
		e.check(out, f, m)
	}
}
