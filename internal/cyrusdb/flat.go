package cyrusdb

import "bytes"

// flatEscape introduces an escaped byte in flat files written by Cyrus 2.5
// and later (lib/cyrusdb_flat.c encode): NUL, TAB, CR and LF become
// 0xFF, 0x80|byte, and 0xFF itself becomes 0xFF 0xFF.
const flatEscape = 0xFF

// flatDecode appends the decoded form of s to dst, exactly as Cyrus's
// decode() does: 0xFF 0xFF is 0xFF, 0xFF x is x without its top bit, and a
// lone 0xFF at the end is dropped. Files from 2.4 and earlier are not
// escaped, but they cannot contain 0xFF in mailbox names (modified UTF-7),
// so decoding them is harmless.
func flatDecode(dst, s []byte) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != flatEscape {
			dst = append(dst, c)
			continue
		}
		if i+1 >= len(s) {
			break
		}
		i++
		if s[i] == flatEscape {
			dst = append(dst, flatEscape)
		} else {
			dst = append(dst, s[i]&^0x80)
		}
	}
	return dst
}

// parseFlat reads "key TAB value LF" lines in file order. The key ends at
// the first TAB; the value runs to the LF and may itself contain TABs, as
// Cyrus's getentry() allows for unescaped (2.4) files.
//
// Cyrus replaces a flat file only by renaming a complete new file over it,
// so a final line without LF is not a write in progress: it is damage, and
// Cyrus's own reader fails on it too (getentry returns IOERROR). It is a
// FormatError here, as is a line without TAB.
func parseFlat(data []byte, fileSize int64) (*DB, error) {
	buf := data
	escaped := bytes.IndexByte(data, flatEscape) >= 0
	if escaped {
		// Decoding only shrinks, so one buffer of the input's size holds
		// every decoded key and value without reallocation.
		buf = make([]byte, 0, len(data))
	}
	recs := make([]entry, 0, bytes.Count(data, []byte{'\n'}))
	for off := 0; off < len(data); {
		nl := bytes.IndexByte(data[off:], '\n')
		if nl < 0 {
			return nil, formatErr(Flat, off, "last line has no LF (%d bytes)", len(data)-off)
		}
		line := data[off : off+nl]
		tab := bytes.IndexByte(line, '\t')
		if tab < 0 {
			return nil, formatErr(Flat, off, "line has no TAB between key and value")
		}
		key, val := line[:tab], line[tab+1:]
		var e entry
		if escaped {
			e.k.off = len(buf)
			buf = flatDecode(buf, key)
			e.k.n = len(buf) - e.k.off
			e.v.off = len(buf)
			buf = flatDecode(buf, val)
			e.v.n = len(buf) - e.v.off
		} else {
			e = entry{k: span{off, tab}, v: span{off + tab + 1, len(val)}}
		}
		recs = append(recs, e)
		off += nl + 1
	}
	return &DB{
		buf:  buf,
		recs: recs,
		Info: Info{
			FileSize:      fileSize,
			CommittedSize: int64(len(data)),
			Dirty:         int64(len(data)) != fileSize,
		},
	}, nil
}
