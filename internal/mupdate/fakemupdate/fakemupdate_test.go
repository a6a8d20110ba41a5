package fakemupdate_test

import (
	"bufio"
	"compress/flate"
	"context"
	"io"
	"testing"
	"time"

	"github.com/lmtpgate/lmtpgate/internal/mupdate"
	"github.com/lmtpgate/lmtpgate/internal/mupdate/fakemupdate"
)

type client struct {
	t *testing.T
	w io.Writer
	f *flate.Writer
	r *bufio.Reader
}

func dial(t *testing.T, srv *fakemupdate.Server) (*client, *mupdate.Conn) {
	t.Helper()
	conn, err := mupdate.Dial(context.Background(), mupdate.Endpoint{
		Address: srv.Addr(), AuthName: fakemupdate.DefaultUser, Password: fakemupdate.DefaultPassword,
		DialTimeout: 5 * time.Second, HandshakeTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.NetConn.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{t: t, w: conn.NetConn, r: conn.Reader}, conn
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.w, s); err != nil {
		c.t.Fatal(err)
	}
	if c.f != nil {
		c.f.Flush()
	}
}

// expect reads responses and compares their String forms.
func (c *client) expect(want ...string) {
	c.t.Helper()
	for _, w := range want {
		r, err := mupdate.ReadResponse(c.r, 0)
		if err != nil {
			c.t.Fatalf("reading for %q: %v", w, err)
		}
		if r.String() != w {
			c.t.Fatalf("got  %s\nwant %s", r, w)
		}
	}
}

func TestUpdateStream(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.bob", "b2!default", "bob\tlr\t")
	srv.Reserve("user.alice", "b1!default")
	c, _ := dial(t, srv)
	c.send("U01 UPDATE\r\n")
	// The dump is in name order, then the OK.
	c.expect(
		`U01 RESERVE ["user.alice" "b1!default"]`,
		`U01 MAILBOX ["user.bob" "b2!default" "bob\tlr\t"]`,
		`U01 OK ["streaming starts"]`,
	)
	if srv.Streaming() != 1 || srv.Updates() != 1 {
		t.Errorf("streaming %d, updates %d", srv.Streaming(), srv.Updates())
	}
	// Pushes: one per change, with the state at the time of sending.
	srv.Set("user.alice", "b1!default", "alice\tlr\t")
	c.expect(`U01 MAILBOX ["user.alice" "b1!default" "alice\tlr\t"]`)
	// Held pushes wait for a NOOP, and come before its answer.
	srv.HoldPushes(true)
	srv.Set("user.carol", "b2!default", "")
	srv.Delete("user.carol")
	c.send("N1 NOOP\r\n")
	c.expect(`U01 DELETE ["user.carol"]`, `U01 DELETE ["user.carol"]`, `N1 OK ["Noop done"]`)
	// Anything else is not legal while streaming.
	c.send("F1 FIND user.bob\r\nU02 UPDATE\r\n")
	c.expect(`F1 BAD ["not legal when streaming"]`, `U02 BAD ["not legal when streaming"]`)
	srv.Set("user.dave", "b1!default", "")
	srv.Flush()
	c.expect(`U01 MAILBOX ["user.dave" "b1!default" ""]`)
}

func TestPartialUpdateAndSynthetic(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.bob", "b2!default", "")
	srv.Set("user.alice", "b1!default", "")
	srv.SetSynthetic(3, "b1", "b2")
	c, _ := dial(t, srv)
	c.send("U01 UPDATE b2\r\n")
	c.expect(
		`U01 MAILBOX ["user.bob" "b2!default" ""]`,
		`U01 MAILBOX ["user.u0000001" "b2!default" "u0000001\tlrswipkxtecdan\t"]`,
		`U01 OK ["streaming starts"]`,
	)
	srv.Set("user.carol", "b1!default", "") // not for this connection
	srv.Set("user.erin", "b2!default", "")
	c.expect(`U01 MAILBOX ["user.erin" "b2!default" ""]`)
}

func TestCompressedStream(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.Set("user.bob", "b2!default", "")
	c, conn := dial(t, srv)
	c.send("C01 COMPRESS \"DEFLATE\"\r\n")
	c.expect(`C01 OK ["DEFLATE" "active"]`)
	c.f, _ = flate.NewWriter(conn.NetConn, flate.BestSpeed)
	c.w = c.f
	c.r = bufio.NewReader(flate.NewReader(c.r))
	c.send("U01 UPDATE\r\n")
	c.expect(`U01 MAILBOX ["user.bob" "b2!default" ""]`, `U01 OK ["streaming starts"]`)
	c.send("N1 NOOP\r\n")
	c.expect(`N1 OK ["Noop done"]`)
	if srv.Compressions() != 1 {
		t.Errorf("%d compressions", srv.Compressions())
	}
}

func TestDumpStallAndDrop(t *testing.T) {
	srv := fakemupdate.New(t)
	srv.SetSynthetic(10)
	srv.SetDumpStall(2)
	c, conn := dial(t, srv)
	c.send("U01 UPDATE\r\n")
	c.expect(
		`U01 MAILBOX ["user.u0000000" "backend1!default" "u0000000\tlrswipkxtecdan\t"]`,
		`U01 MAILBOX ["user.u0000001" "backend1!default" "u0000001\tlrswipkxtecdan\t"]`,
	)
	// Nothing more comes.
	conn.NetConn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if r, err := mupdate.ReadResponse(c.r, 0); err == nil {
		t.Fatalf("a stalled dump sent %v", r)
	}
	if srv.OpenConnections() != 1 {
		t.Errorf("%d open connections", srv.OpenConnections())
	}
	srv.DropConnections()
	deadline := time.Now().Add(10 * time.Second)
	for srv.OpenConnections() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("connection still open after DropConnections")
		}
		time.Sleep(time.Millisecond)
	}
}
