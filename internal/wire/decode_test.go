package wire

import (
	"bytes"
	"testing"
)

// refDecode is the DATA reader's state machine one octet at a time, as
// go-smtp and net/textproto write it: the specification Decoder must meet.
func refDecode(src []byte) (out []byte, used int, end bool) {
	const (
		beginLine = iota
		dot
		dotCR
		cr
		data
	)
	state := beginLine
	for i, c := range src {
		switch state {
		case beginLine:
			if c == '.' {
				state = dot
				continue
			}
			if c == '\r' {
				state = cr
				break
			}
			state = data
		case dot:
			if c == '\r' {
				state = dotCR
				continue
			}
			state = data
		case dotCR:
			if c == '\n' {
				return out, i + 1, true
			}
			state = data
		case cr:
			if c == '\n' {
				state = beginLine
				break
			}
			state = data
		case data:
			if c == '\r' {
				state = cr
			}
		}
		out = append(out, c)
	}
	return out, len(src), false
}

// decodeSplit feeds src to a Decoder in pieces of at most n octets.
func decodeSplit(src []byte, n int) (out []byte, used int, end bool) {
	var d Decoder
	for used < len(src) {
		k := min(n, len(src)-used)
		var u int
		out, u, end = d.Decode(out, src[used:used+k])
		used += u
		if end {
			return out, used, true
		}
	}
	return out, used, false
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		in, out, rest string
		end           bool
	}{
		{"hello\r\n.\r\n", "hello\r\n", "", true},
		{".\r\n", "", "", true},
		{"..leading dot\r\n.\r\nMAIL FROM:<x>\r\n", ".leading dot\r\n", "MAIL FROM:<x>\r\n", true},
		{"a\n.\nb\r\n.\r\n", "a\n.\nb\r\n", "", true},             // a bare LF starts no line
		{"a\r\n.x\r\n.\r\n", "a\r\nx\r\n", "", true},              // a lone leading dot is dropped
		{"a\r\n.\rx\r\n.\r\n", "a\r\nx\r\n", "", true},            // and the CR after it
		{"a\r\r\n.\r\nb\r\n.\r\n", "a\r\r\n.\r\nb\r\n", "", true}, // CR CR LF starts no line
		{"no end\r\n", "no end\r\n", "", false},
		{"", "", "", false},
	} {
		for _, n := range []int{1, 2, 3, 7, 1 << 20} {
			out, used, end := decodeSplit([]byte(tc.in), n)
			if string(out) != tc.out || end != tc.end || tc.in[used:] != tc.rest {
				t.Errorf("%q in pieces of %d: %q, rest %q, end %v; want %q, rest %q, end %v", tc.in, n, out, tc.in[used:], end, tc.out, tc.rest, tc.end)
			}
		}
	}
}

// FuzzDecode checks Decoder against the octet-at-a-time reader, whatever
// the input and however it is split.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n"), uint8(3))
	f.Add([]byte(".\r\r\n.\r.\r\n"), uint8(1))
	f.Add([]byte("a\r\n.\n.\r\n"), uint8(2))
	f.Fuzz(func(t *testing.T, src []byte, split uint8) {
		want, wused, wend := refDecode(src)
		got, used, end := decodeSplit(src, int(split)+1)
		if !bytes.Equal(got, want) || used != wused || end != wend {
			t.Fatalf("%q split %d: %q used %d end %v; reference %q used %d end %v", src, split+1, got, used, end, want, wused, wend)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	var body []byte
	for len(body) < 1<<20 {
		body = append(body, "A line of a message body, about as long as lines in mail are, with no dot.\r\n"...)
	}
	body = append(body, ".\r\n"...)
	out := make([]byte, 0, len(body))
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		var d Decoder
		out, _, _ = d.Decode(out[:0], body)
	}
}
