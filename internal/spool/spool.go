// Package spool holds one incoming message while it is delivered to one or
// more backends. Like Cyrus's lmtpd, lmtpgate receives the whole message
// before it contacts any backend, so an MTA that drops mid-DATA leaves
// nothing half-delivered. Small messages stay in memory; a message larger
// than the memory limit goes to an unlinked temporary file, so a 5 MiB
// message is held at most once, whatever the number of backends, and every
// backend streams it from the same copy.
package spool

import (
	"bytes"
	"io"
	"os"
)

// Message is a spooled message. Open may be called concurrently; each call
// returns an independent reader from the start.
type Message struct {
	mem  []byte
	file *os.File
	size int64
}

// Size returns the message size in bytes.
func (m *Message) Size() int64 { return m.size }

// Open returns a reader over the whole message.
func (m *Message) Open() (io.ReadCloser, error) {
	if m.file != nil {
		return io.NopCloser(io.NewSectionReader(m.file, 0, m.size)), nil
	}
	return io.NopCloser(bytes.NewReader(m.mem)), nil
}

// Close releases the message (removes its temporary file).
func (m *Message) Close() error {
	if m.file != nil {
		err := m.file.Close()
		m.file = nil
		return err
	}
	m.mem = nil
	return nil
}

// InFile reports whether the message was spooled to a file.
func (m *Message) InFile() bool { return m.file != nil }

// Read spools prefix followed by everything from r. Up to memLimit bytes
// stay in memory; beyond that the message moves to a temporary file in dir
// ("" means os.TempDir()), unlinked at once so nothing is left behind if the
// daemon dies.
func Read(prefix []byte, r io.Reader, memLimit int64, dir string) (*Message, error) {
	m := &Message{}
	// Most mail is a few KiB: start small and let the buffer grow (by
	// doubling) for larger messages, rather than allocating and zeroing
	// 64 KiB for every message.
	buf := bytes.NewBuffer(make([]byte, 0, min(memLimit, 4<<10)+int64(len(prefix))))
	buf.Write(prefix)
	_, err := io.CopyN(buf, r, memLimit-int64(len(prefix))+1)
	if err == io.EOF {
		m.mem = buf.Bytes()
		m.size = int64(buf.Len())
		return m, nil
	}
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, "lmtpgate-spool-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return nil, err
	}
	rest, err := io.Copy(f, r)
	if err != nil {
		f.Close()
		return nil, err
	}
	m.file = f
	m.size = int64(buf.Len()) + rest
	return m, nil
}
