package spool

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestSpoolMemoryAndFile(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int
		inFile bool
	}{{"small", 100, false}, {"at limit", 1024 - 7, false}, {"over limit", 1024 - 6, true}, {"large", 5 << 20, true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(1024, t.TempDir())
			defer s.Close()
			body := bytes.Repeat([]byte("x"), tc.size)
			want := append([]byte("prefix\n"), body...)
			// Readers start before the message has arrived and read it
			// while it is written, in pieces.
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					got, err := io.ReadAll(s.Reader(testCtx(t)))
					if err != nil || !bytes.Equal(got, want) {
						t.Errorf("concurrent read differs (err %v, %d bytes)", err, len(got))
					}
				}()
			}
			s.Write([]byte("prefix\n"))
			for b := body; len(b) > 0; {
				n := min(len(b), 3000)
				if _, err := s.Write(b[:n]); err != nil {
					t.Fatal(err)
				}
				b = b[n:]
			}
			if s.InFile() != tc.inFile {
				t.Fatalf("InFile = %v", s.InFile())
			}
			if s.Size() != int64(len(want)) {
				t.Fatalf("size %d want %d", s.Size(), len(want))
			}
			s.Finish()
			wg.Wait()
			// A reader started after the end reads it all too.
			if got, err := io.ReadAll(s.Reader(testCtx(t))); err != nil || !bytes.Equal(got, want) {
				t.Errorf("late reader: %v, %d bytes", err, len(got))
			}
		})
	}
}

// A reader blocks at the end of what has arrived and sees EOF only after
// Finish: a backend never takes a message for complete before it is.
func TestReaderWaitsForTheEnd(t *testing.T) {
	s := New(1<<20, "")
	defer s.Close()
	r := s.Reader(testCtx(t))
	s.Write([]byte("abc"))
	buf := make([]byte, 10)
	if n, err := r.Read(buf); n != 3 || err != nil {
		t.Fatalf("Read = %d, %v", n, err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := r.Read(buf)
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("Read returned %v before Finish", err)
	case <-time.After(50 * time.Millisecond):
	}
	s.Finish()
	if err := <-got; err != io.EOF {
		t.Fatalf("after Finish: %v, want io.EOF", err)
	}
}

// A failed message ends every reader with the error, never with EOF.
func TestFailReachesEveryReader(t *testing.T) {
	for _, limit := range []int64{10, 1 << 20} {
		s := New(limit, t.TempDir())
		r1 := s.Reader(testCtx(t))
		s.Write(bytes.Repeat([]byte("y"), 100))
		r2 := s.Reader(testCtx(t))
		reset := errors.New("connection reset")
		s.Fail(reset)
		for i, r := range []*Reader{r1, r2} {
			if _, err := io.ReadAll(r); !errors.Is(err, reset) {
				t.Errorf("limit %d reader %d: err = %v, want the failure", limit, i, err)
			}
		}
		if _, err := s.Write([]byte("z")); err == nil {
			t.Error("Write after Fail succeeded")
		}
		s.Close()
	}
}

func TestReaderContext(t *testing.T) {
	s := New(1<<20, "")
	defer s.Close()
	ctx, cancel := context.WithCancel(testCtx(t))
	r := s.Reader(ctx)
	go func() {
		time.Sleep(20 * time.Millisecond)
		cancel()
	}()
	if _, err := r.Read(make([]byte, 4)); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestCloseEndsReaders(t *testing.T) {
	s := New(1<<20, "")
	r := s.Reader(testCtx(t))
	s.Write([]byte("abc"))
	s.Close()
	if _, err := io.ReadAll(r); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

func TestZeroMemoryLimitSpoolsToFile(t *testing.T) {
	s := New(0, t.TempDir())
	defer s.Close()
	s.Write([]byte("a"))
	if !s.InFile() {
		t.Fatal("memory limit 0 kept the message in memory")
	}
}
