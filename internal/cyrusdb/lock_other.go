//go:build unix && !linux

package cyrusdb

import (
	"io"

	"golang.org/x/sys/unix"
)

// tryLockShared takes a whole-file classic POSIX F_RDLCK, as Cyrus readers
// do (lib/lock_fcntl.c); open file description locks are Linux-only.
func tryLockShared(fd int) (locker, error) {
	fl := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart}
	return locker{unix.F_SETLK}, unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &fl)
}
