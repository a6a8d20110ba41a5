package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestEncode(t *testing.T) {
	long := strings.Repeat("x", MaxLine)
	tests := []struct {
		name, in, want string
		err            bool
	}{
		{"empty", "", "", false},
		{"crlf lines", "a\r\nb\r\n", "a\r\nb\r\n", false},
		{"no final line end", "a\r\nb", "a\r\nb\r\n", false},
		{"bare LF", "a\nb\n", "a\r\nb\r\n", false},
		{"lone CR dropped", "a\rb\r\n", "ab\r\n", false},
		{"CR at end", "a\r", "a\r\n", false},
		{"leading dots stuffed", ".a\r\n..\r\n.\r\n", "..a\r\n...\r\n..\r\n", false},
		{"dot after bare LF", "x\n.\n", "x\r\n..\r\n", false},
		{"dot after dropped CR", "x\r\n\r.\r\n", "x\r\n..\r\n", false},
		{"dot mid-line not stuffed", "a.\r\n", "a.\r\n", false},
		{"998 octets", long + "\r\n", long + "\r\n", false},
		{"998 octets stuffed", "." + long[1:] + "\r\n", ".." + long[1:] + "\r\n", false},
		{"999 octets", long + "x\r\n", "", true},
		{"999 octets without line end", long + "x", "", true},
		{"CRs do not count", long + "\r\r\r\n", long + "\r\n", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Append(nil, []byte(tc.in))
			if tc.err {
				if !errors.Is(err, ErrLongLine) {
					t.Fatalf("err = %v, want ErrLongLine", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// unstuff is what a receiving LMTP server does with the wire form: split at
// CR LF, drop one leading dot. It returns false if a line is not CR LF
// terminated or a CR or LF appears elsewhere.
func unstuff(wire []byte) ([]byte, bool) {
	var out []byte
	for len(wire) > 0 {
		i := bytes.Index(wire, []byte("\r\n"))
		if i < 0 {
			return nil, false
		}
		line := wire[:i]
		if bytes.ContainsAny(line, "\r\n") {
			return nil, false
		}
		if len(line) > MaxLine+1 {
			return nil, false
		}
		if len(line) > 0 && line[0] == '.' {
			if len(line) == 1 {
				// ".\r\n" would end the data.
				return nil, false
			}
			line = line[1:]
		}
		out = append(out, line...)
		out = append(out, '\r', '\n')
		wire = wire[i+2:]
	}
	return out, true
}

// normalize is the body a backend must end up with: lines ended by CR LF,
// lone CRs gone.
func normalize(in []byte) []byte {
	var out []byte
	for len(in) > 0 {
		i := bytes.IndexByte(in, '\n')
		var line []byte
		if i < 0 {
			line, in = in, nil
		} else {
			line, in = in[:i], in[i+1:]
		}
		line = bytes.ReplaceAll(line, []byte("\r"), nil)
		out = append(out, line...)
		out = append(out, '\r', '\n')
	}
	return out
}

func FuzzEncode(f *testing.F) {
	f.Add([]byte("a\r\n.b\r\n"), uint8(1))
	f.Add([]byte("x\n.\n\r.\r\n"), uint8(3))
	f.Add([]byte(strings.Repeat("B", 8189)+"\r\n.\r\nMAIL FROM:<smuggled@evil.test>\r\n"), uint8(7))
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		whole, werr := Append(nil, in)
		// Chunked at every step-th byte, the result must be the same.
		n := int(step%64) + 1
		var e Encoder
		var got []byte
		var err error
		for i := 0; i < len(in) && err == nil; i += n {
			got, err = e.Encode(got, in[i:min(i+n, len(in))])
		}
		if err == nil {
			got, err = e.Close(got)
		}
		if (err == nil) != (werr == nil) {
			t.Fatalf("chunked err %v, whole err %v", err, werr)
		}
		if err != nil {
			if !errors.Is(err, ErrLongLine) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if !bytes.Equal(got, whole) {
			t.Fatalf("chunked %q != whole %q", got, whole)
		}
		back, ok := unstuff(whole)
		if !ok {
			t.Fatalf("not valid wire form: %q", whole)
		}
		if want := normalize(in); !bytes.Equal(back, want) {
			t.Fatalf("round trip %q, want %q", back, want)
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	var body []byte
	for len(body) < 64<<10 {
		body = append(body, "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod\r\n"...)
	}
	dst := make([]byte, 0, 80<<10)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		var e Encoder
		out, _ := e.Encode(dst[:0], body)
		e.Close(out)
	}
}
