package cyrusdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultLockWait bounds the wait for the shared lock when ReadFile's
// context has no deadline, so that a wedged Cyrus writer can never hang a
// caller that forgot one.
const DefaultLockWait = 10 * time.Second

// maxReopens bounds how often ReadFile follows a file that was renamed over
// between open and lock. Each repack or flat rewrite causes one; many in a
// row mean something is rewriting the file in a loop.
const maxReopens = 16

// Stat returns what is needed to tell whether a database file changed since
// it was last read: its inode and size, its format, and for twoskip the
// header's generation, committed size, record count and DIRTY flag
// (CRC-checked). For skiplist and flat, CommittedSize is the file size.
// Records is 0. Stat takes no lock: the twoskip header is a single 64-byte
// write inside one disk sector, and its CRC catches a torn read. Callers
// compare (Inode, Generation, CommittedSize, FileSize) with the last
// snapshot's and call ReadFile only on a difference.
func Stat(path string) (Info, error) {
	fh, err := os.Open(path)
	if err != nil {
		return Info{}, err
	}
	defer fh.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(fh.Fd()), &st); err != nil {
		return Info{}, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	info := Info{Inode: st.Ino, FileSize: st.Size, CommittedSize: st.Size}
	head, err := readHead(fh, st.Size)
	if err != nil {
		return info, fmt.Errorf("%s: %w", path, err)
	}
	if info.Format, err = Detect(head); err != nil {
		return info, fmt.Errorf("%s: %w", path, err)
	}
	if info.Format == Twoskip {
		h, err := parseTwoskipHeader(head)
		if err != nil {
			return info, fmt.Errorf("%s: %w", path, err)
		}
		info.CommittedSize = int64(min(h.currentSize, 1<<62))
		info.Generation = h.generation
		info.HeaderRecords = h.numRecords
		info.RepackSize = int64(min(h.repackSize, 1<<62))
		info.Dirty = h.flags&tsFlagDirty != 0 || uint64(st.Size) != h.currentSize
	}
	return info, nil
}

// readHead reads up to DetectSize leading bytes.
func readHead(fh *os.File, size int64) ([]byte, error) {
	head := make([]byte, min(size, DetectSize))
	n, err := fh.ReadAt(head, 0)
	if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
		if n == 0 && len(head) == 0 {
			return nil, nil
		}
		return nil, err
	}
	return head[:n], nil
}

// ReadFile takes a consistent snapshot of a database file's committed state
// and parses it. f may be Auto.
//
// It follows Cyrus's reader protocol (lib/cyrusdb_twoskip.c and lib/lock_fcntl.c): open read-only, take the
// whole-file shared fcntl lock that Cyrus writers respect, and check that
// the path still names the locked inode, reopening if a repack or rewrite
// renamed a new file over it. Then it copies the committed bytes (for
// twoskip, [0, current_size)) into memory and releases the lock before
// parsing, so Cyrus writers wait only for one read. The lock is polled with
// backoff until ctx is done (or DefaultLockWait passes if ctx has no
// deadline), so a wedged writer makes ReadFile fail rather than hang.
// ReadFile never writes, never takes a write lock and never runs recovery.
//
// A missing file gives the *os.PathError (errors.Is(err, fs.ErrNotExist));
// damaged content gives a *FormatError; a lock wait that ran out wraps
// ctx.Err() (errors.Is(err, context.DeadlineExceeded)).
func ReadFile(ctx context.Context, path string, f Format) (*DB, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultLockWait)
		defer cancel()
	}
	for range maxReopens {
		db, replaced, err := readLocked(ctx, path, f)
		if err != nil || !replaced {
			return db, err
		}
	}
	return nil, fmt.Errorf("cyrusdb: %s: file was replaced %d times while trying to lock it", path, maxReopens)
}

// readLocked does one open-lock-check-copy round. replaced reports that the
// path no longer named the opened file once it was locked.
// committedSize sniffs the format (for Auto) and returns how many bytes of
// the file hold committed data: all of it, but for twoskip only up to the
// header's current_size.
func committedSize(fh *os.File, path string, f Format, size int64) (Format, int64, error) {
	if size == 0 {
		return f, 0, fmt.Errorf("%s: %w", path, &FormatError{Format: f, Offset: 0, Reason: "empty file"})
	}
	head, err := readHead(fh, size)
	if err != nil {
		return f, 0, fmt.Errorf("cyrusdb: %s: %w", path, err)
	}
	if f == Auto {
		if f, err = Detect(head); err != nil {
			return f, 0, fmt.Errorf("%s: %w", path, err)
		}
	}
	if f != Twoskip {
		return f, size, nil
	}
	h, err := parseTwoskipHeader(head)
	if err != nil {
		return f, 0, fmt.Errorf("%s: %w", path, err)
	}
	if h.currentSize > uint64(size) {
		return f, 0, fmt.Errorf("%s: %w", path, formatErr(Twoskip, int(size),
			"file is truncated: %d bytes, header says %d are committed", size, h.currentSize))
	}
	// Bytes past current_size belong to an open or crashed transaction;
	// they are not copied.
	return f, int64(h.currentSize), nil
}

func readLocked(ctx context.Context, path string, f Format) (db *DB, replaced bool, err error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer fh.Close()
	fd := int(fh.Fd())
	lk, err := lockShared(ctx, fd)
	if err != nil {
		return nil, false, fmt.Errorf("cyrusdb: %s: waiting for the shared lock: %w", path, err)
	}
	// Unlocking explicitly (before the deferred Close) keeps the window
	// short; closing alone would also release it.
	unlocked := false
	unlock := func() {
		if !unlocked {
			unlocked = true
			lk.unlock(fd)
		}
	}
	defer unlock()

	var st, pst unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, false, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	if err := unix.Stat(path, &pst); err != nil {
		if errors.Is(err, unix.ENOENT) {
			// Renamed away and not (yet) replaced; try again, and report
			// the missing file if it stays missing.
			return nil, true, nil
		}
		return nil, false, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Ino != pst.Ino || st.Dev != pst.Dev {
		return nil, true, nil
	}

	size := st.Size
	f, want, err := committedSize(fh, path, f, size)
	if err != nil {
		return nil, false, err
	}
	data := make([]byte, want)
	if n, err := fh.ReadAt(data, 0); int64(n) != want {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, false, fmt.Errorf("cyrusdb: %s: read %d of %d bytes: %w", path, n, want, err)
	}
	unlock()

	db, err = parse(data, f, size)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", path, err)
	}
	db.Info.Inode = st.Ino
	return db, false, nil
}

// lockShared polls for the whole-file shared lock with backoff until ctx is
// done. Polling with F_SETLK instead of blocking in F_SETLKW keeps the wait
// cancellable without leaving a thread stuck in the kernel.
func lockShared(ctx context.Context, fd int) (locker, error) {
	wait := time.Millisecond
	for {
		lk, err := tryLockShared(fd)
		if err == nil {
			return lk, nil
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EINTR) {
			return lk, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return lk, ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, 50*time.Millisecond)
	}
}

// locker remembers which fcntl command took the lock, so that the same
// kind of lock is released.
type locker struct{ setlk int }

func (l locker) unlock(fd int) {
	fl := unix.Flock_t{Type: unix.F_UNLCK, Whence: io.SeekStart}
	// An unlock failure is harmless: closing the descriptor, which
	// follows at once, releases the lock anyway.
	_ = unix.FcntlFlock(uintptr(fd), l.setlk, &fl)
}
