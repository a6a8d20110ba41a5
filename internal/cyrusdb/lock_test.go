package cyrusdb

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const lockHelperEnv = "LMTPGATE_CYRUSDB_LOCK_HELPER"

// TestMain doubles as a helper process that holds a classic POSIX write
// lock, as a Cyrus writer does, until its stdin is closed.
func TestMain(m *testing.M) {
	if path := os.Getenv(lockHelperEnv); path != "" {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			os.Exit(2)
		}
		fl := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
		if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &fl); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("locked\n")
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func writeTemp(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mailboxes.db")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// holdWriteLockInChild starts a child process that holds F_WRLCK on path and
// returns a function that releases it.
func holdWriteLockInChild(t *testing.T, path string) (release func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "locked\n" {
		stdin.Close()
		cmd.Wait()
		t.Fatalf("lock helper did not lock: %q, %v", line, err)
	}
	done := false
	release = func() {
		if !done {
			done = true
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Errorf("lock helper: %v", err)
			}
		}
	}
	t.Cleanup(release)
	return release
}

// holdOFDWriteLock takes an open file description write lock on path from
// this process; it conflicts with ReadFile's lock just as another
// process's lock would.
func holdOFDWriteLock(t *testing.T, path string) (release func()) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fl := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl); err != nil {
		f.Close()
		t.Fatalf("F_OFD_SETLK: %v", err)
	}
	released := false
	release = func() {
		if !released {
			released = true
			f.Close()
		}
	}
	t.Cleanup(release)
	return release
}

func TestReadFileWaitsForWriteLock(t *testing.T) {
	data, _ := threeRecs(false)
	for _, how := range []struct {
		name string
		hold func(*testing.T, string) func()
	}{
		{"classic lock in another process", holdWriteLockInChild},
		{"OFD lock on another descriptor", holdOFDWriteLock},
	} {
		t.Run(how.name, func(t *testing.T) {
			path := writeTemp(t, data)
			release := how.hold(t, path)

			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			db, err := ReadFile(ctx, path, Auto)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("ReadFile under a write lock = %v, %v; want deadline exceeded", db, err)
			}

			// Released while ReadFile waits: it must then succeed.
			go func() {
				time.Sleep(100 * time.Millisecond)
				release()
			}()
			ctx2, cancel2 := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel2()
			db, err = ReadFile(ctx2, path, Auto)
			if err != nil {
				t.Fatalf("ReadFile after release: %v", err)
			}
			if db.Len() != 3 {
				t.Fatalf("Len = %d, want 3", db.Len())
			}
		})
	}
}

// A shared lock held by a Cyrus reader must not block us.
func TestReadFileSharesWithReaders(t *testing.T) {
	data, _ := threeRecs(false)
	path := writeTemp(t, data)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fl := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := ReadFile(ctx, path, Twoskip); err != nil {
		t.Fatalf("ReadFile beside a reader: %v", err)
	}
}

func TestReadFileErrors(t *testing.T) {
	ctx := t.Context()
	_, err := ReadFile(ctx, filepath.Join(t.TempDir(), "missing.db"), Auto)
	var pe *os.PathError
	if !errors.Is(err, os.ErrNotExist) || !errors.As(err, &pe) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Stat(filepath.Join(t.TempDir(), "missing.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Stat missing file: %v", err)
	}

	var fe *FormatError
	_, err = ReadFile(ctx, writeTemp(t, nil), Auto)
	if !errors.As(err, &fe) || fe.Reason != "empty file" {
		t.Errorf("empty file: %v", err)
	}

	b, offs := threeRecs(false)
	_, err = ReadFile(ctx, writeTemp(t, b[:offs[2]]), Auto)
	if !errors.As(err, &fe) || fe.Offset != int64(offs[2]) {
		t.Errorf("truncated file: %v", err)
	}

	// Wrong explicit format.
	_, err = ReadFile(ctx, writeTemp(t, b), Flat)
	if !errors.As(err, &fe) {
		t.Errorf("twoskip read as flat: %v", err)
	}
}

// ReadFile copies only the committed bytes of a dirty file and says so.
func TestReadFileDirty(t *testing.T) {
	b, offs := threeRecs(false)
	w := &tsWriter{buf: b}
	committed := len(w.buf)
	w.setPtr(offs[2], 1, uint64(w.appendRec(tsRecord, 1, []byte("d"), []byte("x"), []uint64{0, 0})))
	w.header(1, 3, uint64(committed), uint64(committed), tsFlagDirty)
	path := writeTemp(t, w.buf)

	db, err := ReadFile(t.Context(), path, Auto)
	if err != nil {
		t.Fatal(err)
	}
	if !db.Info.Dirty || db.Info.FileSize != int64(len(w.buf)) || db.Info.CommittedSize != int64(committed) || db.Len() != 3 {
		t.Errorf("Info = %+v, Len %d", db.Info, db.Len())
	}
	st, err := Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Dirty || st.CommittedSize != int64(committed) || st.FileSize != int64(len(w.buf)) || st.Inode != db.Info.Inode {
		t.Errorf("Stat = %+v", st)
	}
}

// A file renamed over the path (a repack) is picked up: Stat and ReadFile
// report the new inode and generation.
func TestReadFileAfterRename(t *testing.T) {
	b, _ := threeRecs(false)
	path := writeTemp(t, b)
	before, err := Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	keys := bs("x", "y")
	nb, _ := buildTwoskip(keys, keys, false, 1)
	nb = rewriteHeader(nb, uint64(len(nb)), 0)
	w := &tsWriter{buf: nb}
	w.header(2, 2, uint64(len(nb)), uint64(len(nb)), 0)
	if err := os.WriteFile(path+".NEW", w.buf, 0o644); err != nil {
		t.Fatal(err)
	}
	// Keep the old inode open, as Cyrus processes do, so its number cannot
	// be reused by the new file.
	old, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := os.Rename(path+".NEW", path); err != nil {
		t.Fatal(err)
	}
	db, err := ReadFile(t.Context(), path, Auto)
	if err != nil {
		t.Fatal(err)
	}
	if db.Info.Inode == before.Inode || db.Info.Generation != 2 || db.Len() != 2 {
		t.Errorf("after rename: Info %+v (old inode %d)", db.Info, before.Inode)
	}
}
