package cyrusdb

import (
	"bytes"
	"fmt"
	"strings"
)

// Format names a Cyrus database engine.
type Format int

const (
	// Auto asks Detect to decide from the file's first bytes.
	Auto Format = iota
	// Twoskip is Cyrus's default engine since 2.5.
	Twoskip
	// Skiplist is the 2.3/2.4 default engine (file version 1.2).
	Skiplist
	// Flat is the sorted text engine ("key TAB value LF").
	Flat
)

// String returns the engine name as Cyrus spells it in imapd.conf
// (mboxlist_db) and as ParseFormat accepts it.
func (f Format) String() string {
	switch f {
	case Auto:
		return "auto"
	case Twoskip:
		return "twoskip"
	case Skiplist:
		return "skiplist"
	case Flat:
		return "flat"
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

// ParseFormat maps a configuration word ("auto", "twoskip", "skiplist",
// "flat"; case-insensitive, surrounding blanks ignored) to a Format.
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "auto":
		return Auto, nil
	case "twoskip":
		return Twoskip, nil
	case "skiplist":
		return Skiplist, nil
	case "flat":
		return Flat, nil
	}
	return Auto, fmt.Errorf("cyrusdb: unknown database format %q (want auto, twoskip, skiplist or flat)", s)
}

// The 16-byte magics Cyrus's cyrusdb_detect() compares (lib/cyrusdb.c); the
// full 20-byte header magics of the two engines are checked again by their
// parsers.
var (
	cyrusMagicPrefix = []byte("\xa1\x02\x8b\x0d")
	twoskipMagic     = []byte("\xa1\x02\x8b\x0dtwoskip file\x00\x00\x00\x00")
	skiplistMagic    = []byte("\xa1\x02\x8b\x0dskiplist file\x00\x00\x00")
)

// DetectSize is how many leading bytes Detect looks at when it can.
const DetectSize = 512

// Detect tells the engine of a file from its first bytes (ideally
// DetectSize of them, fewer for a shorter file).
//
// twoskip and skiplist carry a magic. Flat files carry none, so a file is
// called Flat only if its first line looks like flat text: a TAB before the
// first LF and no NUL byte (Cyrus 2.5+ escapes NUL, TAB, CR and LF inside
// keys and values, and 2.4 could not store NUL at all). Anything else,
// notably another Cyrus engine's magic such as the "twom" engine of Cyrus
// 3.13, is an error: guessing could make a binary file parse as an empty or
// wrong flat database and turn every delivery into a bounce.
func Detect(head []byte) (Format, error) {
	if len(head) == 0 {
		return Auto, &FormatError{Format: Auto, Offset: 0, Reason: "empty file"}
	}
	switch {
	case bytes.HasPrefix(head, twoskipMagic[:16]):
		return Twoskip, nil
	case bytes.HasPrefix(head, skiplistMagic[:16]):
		return Skiplist, nil
	case bytes.HasPrefix(head, cyrusMagicPrefix) ||
		(len(head) < len(cyrusMagicPrefix) && bytes.HasPrefix(cyrusMagicPrefix, head)):
		var name []byte
		if len(head) > len(cyrusMagicPrefix) {
			name = head[len(cyrusMagicPrefix):]
		}
		if len(name) > 16 {
			name = name[:16]
		}
		return Auto, &FormatError{Format: Auto, Offset: 0,
			Reason: fmt.Sprintf("unknown Cyrus database magic %q (not twoskip or skiplist)", bytes.TrimRight(name, "\x00"))}
	}
	if i := bytes.IndexByte(head, 0); i >= 0 {
		return Auto, &FormatError{Format: Auto, Offset: int64(i),
			Reason: "no twoskip or skiplist magic, and a NUL byte rules out a flat file"}
	}
	line := head
	if i := bytes.IndexByte(head, '\n'); i >= 0 {
		line = head[:i]
	}
	if bytes.IndexByte(line, '\t') < 0 {
		if len(line) == len(head) && len(head) < DetectSize {
			return Auto, &FormatError{Format: Auto, Offset: 0,
				Reason: "no twoskip or skiplist magic, and not flat text (no TAB in the only line)"}
		}
		if len(line) < len(head) {
			return Auto, &FormatError{Format: Auto, Offset: 0,
				Reason: "no twoskip or skiplist magic, and not flat text (first line has no TAB)"}
		}
		// A flat file whose first key is longer than the sniffed head: the
		// flat parser checks every line anyway.
	}
	return Flat, nil
}

// FormatError reports bytes that are not a valid database of the given
// format. Offset is the byte offset in the file where the problem was found.
type FormatError struct {
	Format Format
	Offset int64
	Reason string
}

func (e *FormatError) Error() string {
	if e.Format == Auto {
		return fmt.Sprintf("cyrusdb: at offset %d: %s", e.Offset, e.Reason)
	}
	return fmt.Sprintf("%s: at offset %d: %s", e.Format, e.Offset, e.Reason)
}

func formatErr(f Format, off int, format string, args ...any) *FormatError {
	return &FormatError{Format: f, Offset: int64(off), Reason: fmt.Sprintf(format, args...)}
}
