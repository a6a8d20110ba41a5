package systemdtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// JournalListener stands in for journald's native socket
// (/run/systemd/journal/socket): it receives one entry per datagram, in both
// field forms of the native protocol, and entries whose payload was passed as
// a sealed memfd when it was too large for a datagram.
//
// Anything journald would reject or silently drop (a malformed payload, an
// invalid field name, an unsealed memfd, a truncated datagram) fails the test
// at cleanup, so a handler that depends on journald's leniency is caught.
type JournalListener struct {
	conn *net.UnixConn
	path string
	q    *queue[map[string]string]

	mu     sync.Mutex
	memfds int
	errs   []error
}

// maxDatagram bounds the datagrams read. Clients cannot send more than
// their socket send buffer (at most 2 × net.core.wmem_max); larger entries
// arrive as a memfd.
const maxDatagram = 16 << 20

// ListenJournal binds a datagram socket in dir (or a shorter directory if the
// path would not fit in sun_path) and records every entry sent to it until
// the test ends.
func ListenJournal(t testing.TB, dir string) *JournalListener {
	t.Helper()
	conn := bindUnixgram(t, dir, "journal.sock")
	l := &JournalListener{conn: conn, path: conn.LocalAddr().String(), q: newQueue[map[string]string]()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.serve()
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
		for _, err := range l.Errors() {
			t.Errorf("systemdtest: journal listener: %v", err)
		}
	})
	return l
}

func (l *JournalListener) fail(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

func (l *JournalListener) serve() {
	buf := make([]byte, maxDatagram)
	oob := make([]byte, unix.CmsgSpace(16*4))
	for {
		n, oobn, flags, _, err := l.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				err = errClosed
			}
			l.q.stop(err)
			return
		}
		if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			l.fail(fmt.Errorf("truncated datagram (flags %#x)", flags))
			continue
		}
		payload := buf[:n]
		fds, err := receivedFDs(oob[:oobn])
		if err != nil {
			l.fail(err)
			continue
		}
		if len(fds) > 0 {
			payload, err = readMemfd(n, fds)
			if err != nil {
				l.fail(err)
				continue
			}
			l.mu.Lock()
			l.memfds++
			l.mu.Unlock()
		}
		entry, err := ParseJournal(payload)
		if err != nil {
			l.fail(err)
			continue
		}
		l.q.push(entry)
	}
}

func receivedFDs(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return nil, fmt.Errorf("SCM_RIGHTS: %w", err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// readMemfd reads an entry passed by descriptor. Like journald 252
// (server_process_native_file), it wants exactly one descriptor, no inline
// payload, and a memfd sealed against writes and resizing so the sender
// cannot change it while it is read.
func readMemfd(inline int, fds []int) ([]byte, error) {
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if len(fds) != 1 {
		return nil, fmt.Errorf("got %d descriptors, want 1", len(fds))
	}
	if inline != 0 {
		return nil, fmt.Errorf("descriptor came with %d bytes of inline payload", inline)
	}
	seals, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("passed descriptor is not a memfd: %w", err)
	}
	const want = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if seals&want != want {
		return nil, fmt.Errorf("memfd seals %#x, want at least %#x", seals, want)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil {
		return nil, err
	}
	data := make([]byte, st.Size)
	// ReadAt on a dup keeps the fd ownership with the deferred close above.
	dup, err := unix.Dup(fds[0])
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "memfd")
	defer f.Close()
	if _, err := f.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return data, nil
}

// ParseJournal parses one native-protocol entry, as journald's
// server_process_native_message does: each field is either "NAME=value\n",
// or "NAME\n" followed by a 64-bit little-endian length, that many bytes of
// value and "\n". A later value of the same field replaces an earlier one in
// the returned map (journald would keep both).
func ParseJournal(p []byte) (map[string]string, error) {
	m := make(map[string]string)
	for len(p) > 0 {
		nl := bytes.IndexByte(p, '\n')
		if nl < 0 {
			return nil, fmt.Errorf("field without terminating newline: %.40q", p)
		}
		line := p[:nl]
		if len(line) == 0 {
			// journald treats an empty line as the end of the entry; a
			// client sends one entry per datagram, so more is an error.
			if nl+1 != len(p) {
				return nil, errors.New("data after end-of-entry empty line")
			}
			break
		}
		var name, value []byte
		if eq := bytes.IndexByte(line, '='); eq >= 0 {
			name, value = line[:eq], line[eq+1:]
			p = p[nl+1:]
		} else {
			name = line
			rest := p[nl+1:]
			if len(rest) < 8 {
				return nil, fmt.Errorf("field %q: binary form without length", name)
			}
			size := binary.LittleEndian.Uint64(rest)
			rest = rest[8:]
			if size >= uint64(len(rest)) {
				return nil, fmt.Errorf("field %q: length %d exceeds the %d bytes left", name, size, len(rest))
			}
			value = rest[:size]
			if rest[size] != '\n' {
				return nil, fmt.Errorf("field %q: binary value not followed by newline", name)
			}
			p = rest[size+1:]
		}
		if !ValidFieldName(string(name)) {
			return nil, fmt.Errorf("invalid field name %q (journald drops it)", name)
		}
		m[string(name)] = string(value)
	}
	if len(m) == 0 {
		return nil, errors.New("empty entry")
	}
	return m, nil
}

// ValidFieldName reports whether journald accepts name from a client
// (journal_field_valid with protected fields refused): 1 to 64 characters of
// [A-Z0-9_], not starting with a digit, and not starting with '_', which
// marks the trusted fields journald adds itself.
func ValidFieldName(name string) bool {
	if name == "" || len(name) > 64 || name[0] == '_' || (name[0] >= '0' && name[0] <= '9') {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// Path returns the socket path, to give the handler under test.
func (l *JournalListener) Path() string { return l.path }

// Entries returns every entry received so far, in order.
func (l *JournalListener) Entries() []map[string]string { return l.q.all() }

// WaitFor returns the first entry not yet consumed by WaitFor for which
// match returns true, waiting until one arrives or ctx is done. Entries
// skipped on the way are consumed but remain in Entries.
func (l *JournalListener) WaitFor(ctx context.Context, match func(map[string]string) bool) (map[string]string, error) {
	for {
		e, err := l.q.pop(ctx)
		if err != nil {
			return nil, err
		}
		if match(e) {
			return e, nil
		}
	}
}

// MemfdEntries returns how many of the entries arrived as a memfd.
func (l *JournalListener) MemfdEntries() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.memfds
}

// Errors returns what the listener rejected so far; each one is also
// reported as a test error at cleanup.
func (l *JournalListener) Errors() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}
