package replica

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/lookup"
)

// The snapshot is the mailbox list on disk, so that lmtpgate started while
// the master is down still routes. It is written whole, to a temporary
// file that is synced and renamed over the old one (and the directory
// synced), so a crash leaves the old snapshot or the new one, never a mix.
// A snapshot that fails any check when read is refused as a whole: a
// half-read list would answer "no such mailbox" for the half it lost.
//
// Layout (integers little-endian):
//
//	header, 64 bytes:
//	  0  magic "LGMRSNAP"
//	  8  version (uint32) = 1
//	 12  flags (uint32) = 0
//	 16  mailboxes (uint64)
//	 24  payload length (uint64); the file is exactly 64 + this long
//	 32  as-of time (int64 Unix ns): when the list matched the master
//	 40  write time (int64 Unix ns)
//	 48  CRC-32C of the payload (uint32)
//	 52  reserved, zero (8 bytes)
//	 60  CRC-32C of bytes 0..59 (uint32)
//	payload:
//	  the master's address (uvarint length, bytes), for the log
//	  the interned strings: count (uvarint), each as uvarint length, bytes;
//	    index 0 is the empty string and is not stored
//	  per mailbox: state (byte), server and partition string index
//	    (uvarint each), name and ACL (uvarint length, bytes, each)
const (
	snapMagic      = "LGMRSNAP"
	snapVersion    = 1
	snapHeaderSize = 64
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errSnapshot is wrapped by every reason to refuse a snapshot.
var errSnapshot = errors.New("snapshot unusable")

func snapErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errSnapshot, fmt.Sprintf(format, a...))
}

// snapInfo is what the header of a snapshot says.
// SnapshotInfo describes a snapshot that passed every check.
type SnapshotInfo = snapInfo

// CheckSnapshot reads and checks the snapshot at path as the replica
// would at start (`lmtpgate check`); a missing file is an error wrapping
// fs.ErrNotExist.
func CheckSnapshot(path string) (SnapshotInfo, error) {
	l, info, err := readSnapshot(path, MaxMaxLiteral)
	if err == nil {
		info.Servers = l.servers()
	}
	return info, err
}

type snapInfo struct {
	// Servers is filled in by CheckSnapshot only: the backends the
	// list names.
	Servers   []string
	Mailboxes int
	AsOf      time.Time
	Written   time.Time
	Master    string
}

// writeSnapshot writes v to path atomically. asOf is the time the list
// is known to have matched the master.
func writeSnapshot(path string, v *view, asOf time.Time, master string) (err error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(make([]byte, snapHeaderSize)); err != nil {
		return err
	}
	crc := crc32.New(castagnoli)
	cw := &countWriter{w: io.MultiWriter(f, crc)}
	count, err := writePayload(cw, v, master)
	if err != nil {
		return err
	}
	h := make([]byte, snapHeaderSize)
	copy(h, snapMagic)
	binary.LittleEndian.PutUint32(h[8:], snapVersion)
	binary.LittleEndian.PutUint64(h[16:], uint64(count))
	binary.LittleEndian.PutUint64(h[24:], uint64(cw.n))
	binary.LittleEndian.PutUint64(h[32:], uint64(asOf.UnixNano()))
	binary.LittleEndian.PutUint64(h[40:], uint64(time.Now().UnixNano()))
	binary.LittleEndian.PutUint32(h[48:], crc.Sum32())
	binary.LittleEndian.PutUint32(h[60:], crc32.Checksum(h[:60], castagnoli))
	if _, err := f.WriteAt(h, 0); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	// The rename is durable only once the directory is synced.
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writePayload writes the snapshot's payload (the layout above) for v to
// out and returns how many mailboxes it holds.
func writePayload(out io.Writer, v *view, master string) (int, error) {
	// Pass one: the strings to intern, in first-seen order.
	strs := []string{""}
	index := map[string]uint64{"": 0}
	intern := func(s string) {
		if _, ok := index[s]; !ok {
			index[s] = uint64(len(strs))
			strs = append(strs, s)
		}
	}
	v.forEach(func(e lookup.Entry) error {
		intern(e.Server)
		intern(e.Partition)
		return nil
	})

	w := bufio.NewWriterSize(out, 1<<20)
	var nb [binary.MaxVarintLen64]byte
	uv := func(x uint64) { w.Write(nb[:binary.PutUvarint(nb[:], x)]) }
	str := func(s string) {
		uv(uint64(len(s)))
		w.WriteString(s)
	}
	str(master)
	uv(uint64(len(strs) - 1))
	for _, s := range strs[1:] {
		str(s)
	}
	count := 0
	v.forEach(func(e lookup.Entry) error {
		w.WriteByte(byte(e.State))
		uv(index[e.Server])
		uv(index[e.Partition])
		str(e.Name)
		str(e.ACL)
		count++
		return nil
	})
	return count, w.Flush()
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// readSnapshot reads and checks the snapshot at path. maxText bounds each
// name and ACL. Any error but a missing file wraps errSnapshot or is an
// I/O error; either way nothing of the file is used.
func readSnapshot(path string, maxText int) (*list, snapInfo, error) {
	var info snapInfo
	f, err := os.Open(path)
	if err != nil {
		return nil, info, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, info, err
	}
	h := make([]byte, snapHeaderSize)
	if _, err := io.ReadFull(f, h); err != nil {
		return nil, info, snapErr("truncated header (%d bytes in all)", st.Size())
	}
	if string(h[:8]) != snapMagic {
		return nil, info, snapErr("not a master-replica snapshot (magic %q)", h[:8])
	}
	if got := crc32.Checksum(h[:60], castagnoli); got != binary.LittleEndian.Uint32(h[60:]) {
		return nil, info, snapErr("header checksum mismatch")
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != snapVersion {
		return nil, info, snapErr("version %d, this lmtpgate reads version %d", v, snapVersion)
	}
	count := binary.LittleEndian.Uint64(h[16:])
	plen := binary.LittleEndian.Uint64(h[24:])
	if plen > math.MaxInt64-snapHeaderSize || st.Size() != snapHeaderSize+int64(plen) {
		return nil, info, snapErr("file is %d bytes, header says %d: truncated or extended", st.Size(), snapHeaderSize+plen)
	}
	if count > plen/6 { // each mailbox takes at least 6 bytes
		return nil, info, snapErr("%d mailboxes cannot fit in %d bytes", count, plen)
	}
	info.Mailboxes = int(count)
	info.AsOf = time.Unix(0, int64(binary.LittleEndian.Uint64(h[32:])))
	info.Written = time.Unix(0, int64(binary.LittleEndian.Uint64(h[40:])))

	crc := crc32.New(castagnoli)
	r := &snapReader{r: bufio.NewReaderSize(io.TeeReader(io.LimitReader(f, int64(plen)), crc), 1<<20), max: maxText}
	l, master, err := r.decode(int(count))
	if err != nil {
		return nil, info, err
	}
	// Everything was read and consumed; the checksum decides.
	if r.r.Buffered() != 0 {
		return nil, info, snapErr("%d bytes after the last mailbox", r.r.Buffered())
	}
	if _, err := r.r.Peek(1); err != io.EOF {
		return nil, info, snapErr("bytes after the last mailbox")
	}
	if crc.Sum32() != binary.LittleEndian.Uint32(h[48:]) {
		return nil, info, snapErr("payload checksum mismatch")
	}
	info.Master = master
	return l, info, nil
}

type snapReader struct {
	r   *bufio.Reader
	max int
	buf [4][]byte
}

func (r *snapReader) uv() (uint64, error) {
	x, err := binary.ReadUvarint(r.r)
	if err != nil {
		return 0, snapErr("truncated or damaged payload")
	}
	return x, nil
}

// bytes reads a length-prefixed string into buffer i.
func (r *snapReader) bytes(i int) ([]byte, error) {
	n, err := r.uv()
	if err != nil {
		return nil, err
	}
	if n > uint64(r.max) {
		return nil, snapErr("string of %d bytes exceeds the limit of %d", n, r.max)
	}
	b := r.buf[i]
	if uint64(cap(b)) < n {
		b = make([]byte, n)
	}
	b = b[:n]
	if _, err := io.ReadFull(r.r, b); err != nil {
		return nil, snapErr("truncated payload")
	}
	r.buf[i] = b
	return b, nil
}

func (r *snapReader) decode(count int) (*list, string, error) {
	m, err := r.bytes(0)
	if err != nil {
		return nil, "", err
	}
	master := string(m)
	nstrs, err := r.uv()
	if err != nil {
		return nil, "", err
	}
	if nstrs >= math.MaxUint16 {
		return nil, "", snapErr("%d interned strings", nstrs)
	}
	strs := make([][]byte, nstrs+1)
	for i := range nstrs {
		s, err := r.bytes(0)
		if err != nil {
			return nil, "", err
		}
		strs[i+1] = append([]byte(nil), s...)
	}
	b := newBuilder(count)
	for i := 0; i < count; i++ {
		st, err := r.r.ReadByte()
		if err != nil {
			return nil, "", snapErr("truncated payload at mailbox %d of %d", i, count)
		}
		if st > byte(lookup.Moving) {
			return nil, "", snapErr("mailbox %d has state %d", i, st)
		}
		si, err := r.uv()
		if err != nil {
			return nil, "", err
		}
		pi, err := r.uv()
		if err != nil {
			return nil, "", err
		}
		if si > nstrs || pi > nstrs {
			return nil, "", snapErr("mailbox %d refers to string %d of %d", i, max(si, pi), nstrs)
		}
		name, err := r.bytes(1)
		if err != nil {
			return nil, "", err
		}
		acl, err := r.bytes(2)
		if err != nil {
			return nil, "", err
		}
		if len(name) == 0 {
			return nil, "", snapErr("mailbox %d has no name", i)
		}
		before := b.Len()
		if err := b.put(name, strs[si], strs[pi], acl, lookup.State(st)); err != nil {
			return nil, "", snapErr("%v", err)
		}
		if b.Len() == before {
			return nil, "", snapErr("mailbox %q twice", name)
		}
	}
	return b.finish(), master, nil
}
