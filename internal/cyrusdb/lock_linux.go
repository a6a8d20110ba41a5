package cyrusdb

import (
	"errors"
	"io"

	"golang.org/x/sys/unix"
)

// tryLockShared takes a whole-file F_RDLCK, as Cyrus readers do
// (lib/lock_fcntl.c). It prefers a Linux open file description lock
// (F_OFD_SETLK): it conflicts with Cyrus's classic POSIX locks just the
// same, but it belongs to this descriptor only, so closing some other
// descriptor of the same file elsewhere in the process cannot silently drop
// it, which classic POSIX locks would allow. Kernels before 3.15 lack OFD
// locks (EINVAL); then the classic F_SETLK is used.
func tryLockShared(fd int) (locker, error) {
	fl := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart}
	err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &fl)
	if err == nil {
		return locker{unix.F_OFD_SETLK}, nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return locker{}, err
	}
	fl = unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart}
	return locker{unix.F_SETLK}, unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &fl)
}
