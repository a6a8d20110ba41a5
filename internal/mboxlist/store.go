package mboxlist

import (
	"context"
	"os"
	"syscall"

	"github.com/lmtpgate/lmtpgate/internal/cyrusdb"
)

// cyrusdbStore reads the file through the cyrusdb package: a cheap header
// stat to decide whether anything changed, and a full read of the
// committed state under Cyrus's shared lock (lib/lock_fcntl.c).
type cyrusdbStore struct{}

func infoOf(i cyrusdb.Info) fileInfo {
	return fileInfo{
		Format:        i.Format,
		Inode:         i.Inode,
		Generation:    i.Generation,
		FileSize:      i.FileSize,
		CommittedSize: i.CommittedSize,
		Dirty:         i.Dirty,
	}
}

// changeTime returns the file's status-change time in nanoseconds, or 0.
// Inode numbers are reused as soon as a file is unlinked, so a flat or
// skiplist file replaced by one of the same size could otherwise look
// unchanged; the ctime tells them apart (a rename updates it too).
func changeTime(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ctim.Nano()
	}
	return fi.ModTime().UnixNano()
}

func (cyrusdbStore) stat(path string, f cyrusdb.Format) (fileInfo, error) {
	i, err := cyrusdb.Stat(path)
	if err != nil {
		return fileInfo{}, err
	}
	info := infoOf(i)
	info.Ctime = changeTime(path)
	return info, nil
}

func (cyrusdbStore) read(ctx context.Context, path string, f cyrusdb.Format) (recordSource, fileInfo, error) {
	// The ctime is taken before the read, so it is never newer than the
	// state read; a change in between makes the next check read again.
	ctime := changeTime(path)
	db, err := cyrusdb.ReadFile(ctx, path, f)
	if err != nil {
		return nil, fileInfo{}, err
	}
	info := infoOf(db.Info)
	info.Ctime = ctime
	return db, info, nil
}
