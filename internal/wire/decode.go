package wire

import "bytes"

// A Decoder reads the DATA form of a message as an MTA sends it (RFC 5321
// §4.5.2): it removes the leading dot a sender doubled at the start of a
// line and finds the end of the data, the line that is a lone "." after CR
// LF. It does what go-smtp's DATA reader does, state for state, so that a
// message is cut at the same place whichever of the two reads it; but where
// that reader takes one call per octet, a Decoder jumps from CR to CR, so
// the body's octets are only looked at by bytes.IndexByte.
//
// A line starts after CR LF only (a bare LF does not start one), and the
// message's first octet starts one. A dot that starts a line is dropped; a
// CR right after it is dropped too unless an LF follows, which ends the data.
// Everything else is passed on unchanged; the Encoder deals with bare CRs
// and LFs afterwards.
//
// The zero value is ready for the first octet after the DATA command's 354.
type Decoder struct {
	state decodeState
}

type decodeState uint8

const (
	atLineStart decodeState = iota // after CR LF, or at the first octet
	afterDot                       // a '.' started the line
	afterDotCR                     // ".\r" started the line
	afterCR                        // a CR, perhaps ending a line
	inLine                         // anywhere else
)

// Decode appends the message octets of src to dst, and returns the result,
// how many octets of src it used, and whether the end of the data was
// found. When it was, src[used:] is what the MTA sent after the end (a
// pipelined next command), which is not part of the message; otherwise used
// is len(src). The output is never longer than the input.
func (d *Decoder) Decode(dst, src []byte) (out []byte, used int, end bool) {
	st := d.state
	i := 0
	for i < len(src) {
		switch st {
		case inLine:
			j := bytes.IndexByte(src[i:], '\r')
			if j < 0 {
				dst = append(dst, src[i:]...)
				i = len(src)
				continue
			}
			dst = append(dst, src[i:i+j+1]...)
			i += j + 1
			st = afterCR
			continue
		case atLineStart:
			switch src[i] {
			case '.':
				st = afterDot
				i++
				continue
			case '\r':
				st = afterCR
			default:
				st = inLine
			}
		case afterDot:
			if src[i] == '\r' {
				st = afterDotCR
				i++
				continue
			}
			st = inLine
		case afterDotCR:
			if src[i] == '\n' {
				d.state = atLineStart
				return dst, i + 1, true
			}
			st = inLine
		case afterCR:
			if src[i] == '\n' {
				st = atLineStart
			} else {
				st = inLine
			}
		}
		dst = append(dst, src[i])
		i++
	}
	d.state = st
	return dst, i, false
}
