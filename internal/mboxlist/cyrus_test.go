package mboxlist

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
	"github.com/lmtpgate/lmtpgate/internal/murderlab"
)

const cyrusBin = murderlab.CyrusBin

// cyrusDBTool prepares a configdirectory for Cyrus's cyr_dbtool and
// returns a function running it, or skips: always under -short, and when
// Cyrus is missing unless LMTPGATE_REQUIRE_CYRUS=1, which makes that a
// failure.
func cyrusDBTool(t *testing.T) (dir string, run func(args ...string)) {
	t.Helper()
	murderlab.RequireCyrus(t)
	tool := filepath.Join(cyrusBin, "cyr_dbtool")
	// Run as root, Cyrus tools switch to the cyrus user, which must be
	// able to write the directory.
	dir, err := os.MkdirTemp("", "mboxlist-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	chown := func(string) {}
	if os.Getuid() == 0 {
		u, err := user.Lookup("cyrus")
		if err != nil {
			t.Fatalf("running as root but no cyrus user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		chown = func(p string) {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	chown(dir)
	conf := filepath.Join(dir, "imapd.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "configdirectory: %s\npartition-default: %s/spool\n", dir, dir), 0o644); err != nil {
		t.Fatal(err)
	}
	// cyr_dbtool opens without O_CREAT; the engine initialises an empty
	// file.
	db := filepath.Join(dir, "mailboxes.db")
	if err := os.WriteFile(db, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	chown(db)
	run = func(args ...string) {
		t.Helper()
		cmd := exec.Command(tool, append([]string{"-C", conf, db, "twoskip"}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || bytes.Contains(out, []byte("FAILED")) {
			t.Fatalf("cyr_dbtool %q: %v\n%s%s", args, err, out, stderr.Bytes())
		}
	}
	return dir, run
}

// TestCyrusCommitsAndRepack lets Cyrus's own twoskip code commit in place
// and repack (write mailboxes.db.NEW, rename) under a running watcher, and
// checks that every change is routed without a restart.
func TestCyrusCommitsAndRepack(t *testing.T) {
	dir, run := cyrusDBTool(t)
	entry := func(flags, srv string) string {
		return "%(T " + flags + " P default S " + srv + " M 1718000000 A %(anyone p))"
	}
	run("set", "Nuser\x1falice", entry("er", "backend1"))

	d := New(testConfig(Config{Path: filepath.Join(dir, "mailboxes.db"), PollInterval: time.Hour}), nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := serverOf(d, "user.alice"); got != "backend1" {
		t.Fatalf("initial load: %s", got)
	}
	if st := d.Status(); st.Watching != "inotify" || st.Format.String() != "twoskip" {
		t.Errorf("status = %+v", st)
	}
	state := func(name string) string {
		e, err := d.Lookup(ctx, name)
		if err != nil {
			return err.Error()
		}
		return e.Server + "/" + e.State.String()
	}

	run("set", "Nexample.com\x1duser\x1fbob", entry("er", "backend2"))
	waitFor(t, "created mailbox", func() bool { return state("example.com!user.bob") == "backend2/active" })

	run("set", "Nuser\x1fjohn.doe", entry("erz", "backend2"))
	waitFor(t, "reserved mailbox", func() bool { return state("user.john^doe") == "backend2/reserved" })

	run("set", "Nuser\x1falice", entry("erm", "backend1"))
	waitFor(t, "moving mailbox", func() bool { return state("user.alice") == "backend1/moving" })

	gen := d.Status().Generation
	ino := d.Status().Inode
	run("repack")
	run("set", "Nuser\x1falice", entry("er", "backend3"))
	waitFor(t, "move completed after repack", func() bool { return state("user.alice") == "backend3/active" })
	if st := d.Status(); st.Generation == gen && st.Inode == ino {
		t.Errorf("repack not seen: generation %d inode %d unchanged", gen, ino)
	}

	run("delete", "Nexample.com\x1duser\x1fbob")
	waitFor(t, "deleted mailbox", func() bool {
		_, err := d.Lookup(ctx, "example.com!user.bob")
		return err == lookup.ErrNotFound
	})
	if got := state("user.john^doe"); got != "backend2/reserved" {
		t.Errorf("unrelated entry after delete: %s", got)
	}
}
