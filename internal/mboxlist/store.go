package mboxlist

import (
	"context"
	"os"
	"syscall"

	"github.com/lmtpgate/lmtpgate/internal/cyrusdb"
)

// cyrusdbStore reads the file through the cyrusdb package.
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

func (cyrusdbStore) stat(path string, f cyrusdb.Format) (fileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileInfo{}, err
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fileInfo{Format: f, Inode: ino, FileSize: fi.Size(), CommittedSize: fi.ModTime().UnixNano()}, nil
}

func (s cyrusdbStore) read(ctx context.Context, path string, f cyrusdb.Format) (recordSource, fileInfo, error) {
	info, err := s.stat(path, f)
	if err != nil {
		return nil, fileInfo{}, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fileInfo{}, err
	}
	db, err := cyrusdb.Parse(data, f)
	if err != nil {
		return nil, fileInfo{}, err
	}
	return db, info, nil
}
