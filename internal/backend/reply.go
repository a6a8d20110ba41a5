package backend

import (
	"bufio"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
)

// ErrProtocol is wrapped by every error for a reply that is not a
// well-formed SMTP reply (RFC 5321 §4.2). The stream is then out of step
// and the connection must be dropped.
var ErrProtocol = errors.New("backend protocol error")

// maxReplyLines bounds one multi-line reply. Cyrus's longest (LHLO, the
// long 550 texts) have about a dozen lines.
const maxReplyLines = 64

// maxReplyLine bounds one reply line; RFC 5321 §4.5.3.1.5 allows 512.
const maxReplyLine = 4096

// readReply reads one reply: "ddd-text" lines then a "ddd text" (or bare
// "ddd") line, all with the same code. The enhanced status code (RFC 3463),
// if the last line carries one, is parsed into EnhancedCode; the texts of
// the lines, each without its code and enhanced code, are joined with "\n"
// into Message.
func readReply(r *bufio.Reader) (*smtp.SMTPError, error) {
	var (
		code  int
		texts []string
		ec    = smtp.EnhancedCodeNotSet
	)
	for i := 0; ; i++ {
		if i == maxReplyLines {
			return nil, fmt.Errorf("%w: reply of more than %d lines", ErrProtocol, maxReplyLines)
		}
		line, err := readLine(r)
		if err != nil {
			return nil, err
		}
		c, more, text, err := parseReplyLine(line)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			code = c
		} else if c != code {
			return nil, fmt.Errorf("%w: reply code changed from %d to %d in a multi-line reply", ErrProtocol, code, c)
		}
		e, rest := enhanced(c, text)
		if e != smtp.EnhancedCodeNotSet {
			ec, text = e, rest
		}
		texts = append(texts, text)
		if !more {
			break
		}
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: strings.Join(texts, "\n")}, nil
}

// readCode reads one reply on the transaction's hot path. A single-line
// positive reply (2xx, or 354) costs no allocation: only its code is
// returned, with a nil reply. Anything else is read whole, as readReply
// does, and returned.
func readCode(r *bufio.Reader) (int, *smtp.SMTPError, error) {
	line, err := r.Peek(4)
	if err == nil && line[3] == ' ' {
		code := int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
		if line[0] >= '2' && line[0] <= '3' && line[1] >= '0' && line[1] <= '9' && line[2] >= '0' && line[2] <= '9' &&
			(code/100 == 2 || code == 354) {
			// Skip the line without copying it.
			frag, err := r.ReadSlice('\n')
			for err == bufio.ErrBufferFull && len(frag) > 0 {
				frag, err = r.ReadSlice('\n')
			}
			if err != nil {
				return 0, nil, err
			}
			return code, nil, nil
		}
	}
	rep, err := readReply(r)
	if err != nil {
		return 0, nil, err
	}
	return rep.Code, rep, nil
}

// readLine returns one line without CR LF, refusing one over maxReplyLine.
func readLine(r *bufio.Reader) (string, error) {
	var long []byte
	for {
		frag, err := r.ReadSlice('\n')
		if err == nil {
			if long != nil {
				frag = append(long, frag...)
			}
			if len(frag) > maxReplyLine+2 {
				return "", fmt.Errorf("%w: reply line over %d octets", ErrProtocol, maxReplyLine)
			}
			s := strings.TrimSuffix(string(frag[:len(frag)-1]), "\r")
			return s, nil
		}
		if err != bufio.ErrBufferFull {
			return "", err
		}
		long = append(long, frag...)
		if len(long) > maxReplyLine+2 {
			return "", fmt.Errorf("%w: reply line over %d octets", ErrProtocol, maxReplyLine)
		}
	}
}

// parseReplyLine splits "250-text", "250 text" or "250".
func parseReplyLine(line string) (code int, more bool, text string, err error) {
	if len(line) < 3 {
		return 0, false, "", fmt.Errorf("%w: short reply line %q", ErrProtocol, clip(line))
	}
	for i := 0; i < 3; i++ {
		if line[i] < '0' || line[i] > '9' {
			return 0, false, "", fmt.Errorf("%w: reply line %q has no code", ErrProtocol, clip(line))
		}
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if line[0] < '2' || line[0] > '5' {
		return 0, false, "", fmt.Errorf("%w: reply code %d out of range", ErrProtocol, code)
	}
	if len(line) == 3 {
		return code, false, "", nil
	}
	switch line[3] {
	case '-':
		return code, true, line[4:], nil
	case ' ':
		return code, false, line[4:], nil
	}
	return 0, false, "", fmt.Errorf("%w: reply line %q", ErrProtocol, clip(line))
}

// enhanced parses a leading "c.s.d " enhanced status code whose class
// matches the reply code's (RFC 2034 §4).
func enhanced(code int, text string) (smtp.EnhancedCode, string) {
	word, rest, _ := strings.Cut(text, " ")
	parts := strings.Split(word, ".")
	if len(parts) != 3 {
		return smtp.EnhancedCodeNotSet, text
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		if p == "" || len(p) > 3 {
			return smtp.EnhancedCodeNotSet, text
		}
		n := 0
		for _, c := range p {
			if c < '0' || c > '9' {
				return smtp.EnhancedCodeNotSet, text
			}
			n = n*10 + int(c-'0')
		}
		ec[i] = n
	}
	if ec[0] != code/100 {
		return smtp.EnhancedCodeNotSet, text
	}
	return ec, rest
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// FormatReply renders a reply for logs: "550 5.1.1 User unknown", one line.
func FormatReply(r *smtp.SMTPError) string {
	if r == nil {
		return ""
	}
	msg := strings.ReplaceAll(r.Message, "\n", " ")
	if r.EnhancedCode == smtp.EnhancedCodeNotSet || r.EnhancedCode == smtp.NoEnhancedCode {
		return strings.TrimSpace(fmt.Sprintf("%d %s", r.Code, msg))
	}
	return strings.TrimSpace(fmt.Sprintf("%d %d.%d.%d %s", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2], msg))
}
