package front

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"
)

// scriptConn is a net.Conn that returns reads from a script and records
// every write.
type scriptConn struct {
	net.Conn // nil: only what mtaConn calls is implemented
	mu       sync.Mutex
	reads    [][]byte
	writes   [][]byte
}

func (s *scriptConn) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reads) == 0 {
		return 0, net.ErrClosed
	}
	n := copy(p, s.reads[0])
	s.reads = s.reads[1:]
	return n, nil
}

func (s *scriptConn) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes = append(s.writes, bytes.Clone(p))
	return len(p), nil
}

func (s *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (s *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// The replies to a pipelined MAIL, RCPT, RCPT, DATA go out in one write;
// a pass with any other command (LHLO here) is answered reply by reply.
func TestRepliesToAPipelinedGroupAreOneWrite(t *testing.T) {
	for _, tc := range []struct {
		in      string
		replies []string
		writes  int
	}{
		{"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n",
			[]string{"250 2.0.0 ok\r\n", "250 2.0.0 ok\r\n", "550 5.1.1 no\r\n", "354 go ahead\r\n"}, 1},
		{"LHLO x\r\nMAIL FROM:<a@x>\r\n",
			[]string{"250-x\r\n", "250 PIPELINING\r\n", "250 2.0.0 ok\r\n"}, 3},
		{"MAIL FROM:<a@x>\r\n", []string{"250 2.0.0 ok\r\n"}, 1},
	} {
		sc := &scriptConn{reads: [][]byte{[]byte(tc.in)}}
		c := &mtaConn{Conn: sc}
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != tc.in {
			t.Fatalf("%q: read %q, %v", tc.in, buf[:n], err)
		}
		for _, r := range tc.replies {
			if _, err := c.Write([]byte(r)); err != nil {
				t.Fatal(err)
			}
		}
		if len(sc.writes) != tc.writes || string(bytes.Join(sc.writes, nil)) != string(bytes.Join(toBytes(tc.replies), nil)) {
			t.Errorf("%q: writes %q, want the replies in %d write(s)", tc.in, sc.writes, tc.writes)
		}
	}
}

func toBytes(ss []string) [][]byte {
	var out [][]byte
	for _, s := range ss {
		out = append(out, []byte(s))
	}
	return out
}
