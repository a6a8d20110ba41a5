package bench

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// words is the vocabulary of generated text. Plain lower-case ASCII keeps
// every backend's parser on its common path, as most real mail does.
var words = strings.Fields(`the of and to in is that for it as was with be by on not he this are or his
from at which but have an they you were her she there been one all we their has would when if so no will
can more other what time up some into them could new only than its two first may like these over such
our man me even most made after also did many before must through back years where much your way well down
should because each just those people how too little state good very make world still own see men work long
get here between both life being under never day same another know while last might us great old year off
come since against go came right used take three mailbox delivery backend frontend server message queue
meeting report budget schedule project review invoice attached please thanks regards monday friday`)

// Body is one pre-generated message body (everything after the per-message
// header block), already in DATA wire form: CRLF line ends, dot-stuffed
// (RFC 5321 section 4.5.2) and followed by the terminating ".\r\n".
type Body struct {
	Size int    // the nominal size class it was generated for
	Wire []byte // body lines + ".\r\n"
	// ContentType is the header line this body needs, CRLF terminated.
	ContentType string
}

// attachmentThreshold is the size above which a generated message carries
// a base64 attachment, as large mail nearly always does.
const attachmentThreshold = 16 << 10

// headerAllowance is the approximate length of the per-message header
// block, subtracted from the nominal size so the whole message is close to
// it.
const headerAllowance = 400

// NewBody generates a realistic body for a message of about size bytes:
// wrapped text (lines of at most 76 characters) and, above 16 KiB, a
// multipart/mixed structure with a base64 attachment. The same seed gives
// the same bytes.
func NewBody(size int, seed uint64) Body {
	r := rand.New(rand.NewPCG(seed, uint64(size)))
	target := max(size-headerAllowance, 64)
	var b bytes.Buffer
	b.Grow(target + 256)
	ct := "Content-Type: text/plain; charset=us-ascii\r\n"
	if size <= attachmentThreshold {
		writeText(&b, r, target)
	} else {
		const boundary = "=_lmtpbench_boundary_0"
		ct = "Content-Type: multipart/mixed; boundary=\"" + boundary + "\"\r\n"
		b.WriteString("This is a multi-part message in MIME format.\r\n\r\n--" + boundary + "\r\n")
		b.WriteString("Content-Type: text/plain; charset=us-ascii\r\n\r\n")
		writeText(&b, r, 2048)
		b.WriteString("\r\n--" + boundary + "\r\n")
		b.WriteString("Content-Type: application/octet-stream; name=\"data.bin\"\r\n")
		b.WriteString("Content-Transfer-Encoding: base64\r\n")
		b.WriteString("Content-Disposition: attachment; filename=\"data.bin\"\r\n\r\n")
		tail := "\r\n--" + boundary + "--\r\n"
		rest := target - b.Len() - len(tail)
		// base64 of n raw bytes takes 4n/3 characters plus CRLF per 76.
		raw := make([]byte, max(rest*57/78, 1))
		for i := range raw {
			raw[i] = byte(r.Uint32())
		}
		enc := base64.StdEncoding.EncodeToString(raw)
		for len(enc) > 76 {
			b.WriteString(enc[:76])
			b.WriteString("\r\n")
			enc = enc[76:]
		}
		b.WriteString(enc)
		b.WriteString(tail)
	}
	b.WriteString(".\r\n")
	return Body{Size: size, Wire: b.Bytes(), ContentType: ct}
}

// writeText writes paragraphs of wrapped words until about n bytes. No line
// starts with '.', so no dot-stuffing is needed.
func writeText(b *bytes.Buffer, r *rand.Rand, n int) {
	start := b.Len()
	line := 0
	sentence := true
	for b.Len()-start < n {
		w := words[r.IntN(len(words))]
		if sentence {
			w = strings.ToUpper(w[:1]) + w[1:]
			sentence = false
		}
		if r.IntN(12) == 0 {
			w += "."
			sentence = true
		}
		if line > 0 && line+1+len(w) > 72 {
			b.WriteString("\r\n")
			line = 0
			if sentence && r.IntN(4) == 0 {
				b.WriteString("\r\n")
			}
		}
		if line > 0 {
			b.WriteByte(' ')
			line++
		}
		b.WriteString(w)
		line += len(w)
	}
	b.WriteString("\r\n")
}

// Header writes the per-message header block. The Message-ID is unique per
// message on purpose: Cyrus lmtpd suppresses a second delivery of the same
// Message-ID to the same mailbox (duplicatesuppression, on by default) and
// still answers 250, which would make a benchmark measure almost nothing.
func Header(dst []byte, from string, msgID string, date time.Time, body *Body) []byte {
	dst = fmt.Appendf(dst, "From: Load Generator <%s>\r\n", from)
	dst = append(dst, "To: undisclosed-recipients:;\r\n"...)
	dst = fmt.Appendf(dst, "Subject: lmtpbench %s message %s\r\n", FormatSize(body.Size), msgID)
	dst = append(dst, "Date: "...)
	dst = date.AppendFormat(dst, time.RFC1123Z)
	dst = append(dst, "\r\n"...)
	dst = fmt.Appendf(dst, "Message-ID: <%s@lmtpbench.invalid>\r\n", msgID)
	dst = append(dst, "MIME-Version: 1.0\r\n"...)
	dst = append(dst, body.ContentType...)
	dst = append(dst, "X-Mailer: lmtpbench\r\n\r\n"...)
	return dst
}
