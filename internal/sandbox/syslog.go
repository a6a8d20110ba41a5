package sandbox

import (
	"bytes"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
)

// SyslogPath is where syslog(3) sends its messages.
const SyslogPath = "/dev/log"

// Syslog collects what programs in the sandbox send to /dev/log (Cyrus
// logs nowhere else). Each datagram is one message; the "<PRI>" prefix is
// kept so a reader can tell facilities and priorities apart.
type Syslog struct {
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
	done chan struct{}
}

// ListenSyslog binds /dev/log. It refuses outside the sandbox, where
// /dev/log belongs to the host (or to another suite).
func ListenSyslog() (*Syslog, error) {
	if !Inside() {
		return nil, errors.New("sandbox: /dev/log is taken only inside the sandbox")
	}
	_ = os.Remove(SyslogPath)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: SyslogPath, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	// Cyrus's services run as user cyrus, Postfix's as postfix.
	if err := os.Chmod(SyslogPath, 0o666); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetReadBuffer(4 << 20)
	s := &Syslog{conn: c, done: make(chan struct{})}
	go s.read()
	return s, nil
}

func (s *Syslog) read() {
	defer close(s.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			return
		}
		m := string(bytes.TrimRight(buf[:n], "\n\x00"))
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.mu.Unlock()
	}
}

// Lines returns every message received so far that contains all of subs.
func (s *Syslog) Lines(subs ...string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
next:
	for _, m := range s.msgs {
		for _, sub := range subs {
			if !strings.Contains(m, sub) {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// Len is the number of messages received so far: remember it and read
// what came later with Since.
func (s *Syslog) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// Since returns the messages received after the first n.
func (s *Syslog) Since(n int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n >= len(s.msgs) {
		return nil
	}
	return append([]string(nil), s.msgs[n:]...)
}

// Close stops listening and removes /dev/log.
func (s *Syslog) Close() error {
	err := s.conn.Close()
	<-s.done
	_ = os.Remove(SyslogPath)
	return err
}
