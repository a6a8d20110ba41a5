package spool

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

func TestSpoolMemoryAndFile(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int
		inFile bool
	}{{"small", 100, false}, {"at limit", 1024 - 7, false}, {"over limit", 1024 - 6, true}, {"large", 5 << 20, true}} {
		t.Run(tc.name, func(t *testing.T) {
			body := bytes.Repeat([]byte("x"), tc.size)
			m, err := Read([]byte("prefix\n"), bytes.NewReader(body), 1024, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if m.InFile() != tc.inFile {
				t.Fatalf("InFile = %v", m.InFile())
			}
			want := append([]byte("prefix\n"), body...)
			if m.Size() != int64(len(want)) {
				t.Fatalf("size %d want %d", m.Size(), len(want))
			}
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, _ := m.Open()
					got, err := io.ReadAll(r)
					if err != nil || !bytes.Equal(got, want) {
						t.Errorf("concurrent read differs (err %v)", err)
					}
				}()
			}
			wg.Wait()
		})
	}
}

type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("connection reset")
	}
	n := min(len(p), f.n)
	f.n -= n
	return n, nil
}

func TestSpoolReadErrorIsReturned(t *testing.T) {
	for _, limit := range []int64{10, 1 << 20} {
		if _, err := Read(nil, &failingReader{n: 100}, limit, t.TempDir()); err == nil || !strings.Contains(err.Error(), "reset") {
			t.Fatalf("limit %d: err = %v", limit, err)
		}
	}
}
