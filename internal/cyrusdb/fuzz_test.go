package cyrusdb

import (
	"errors"
	"testing"
)

// fuzzParse checks the parser contract on arbitrary bytes: no panic, any
// failure is a *FormatError, and any success yields records that lie
// inside the DB's buffer.
func fuzzParse(t *testing.T, data []byte, f Format) {
	db, err := Parse(data, f)
	if err != nil {
		var fe *FormatError
		if !errors.As(err, &fe) {
			t.Fatalf("error is not a FormatError: %T %v", err, err)
		}
		return
	}
	checkInvariants(t, data, db)
}

func FuzzParseTwoskip(f *testing.F) {
	b, _ := threeRecs(true)
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) { fuzzParse(t, data, Twoskip) })
}

func FuzzParseSkiplist(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) { fuzzParse(t, data, Skiplist) })
}

func FuzzParseFlat(f *testing.F) {
	f.Add([]byte("a\tb\nc\xff\x89d\te\xff\xff\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzParse(t, data, Flat)
		fuzzParse(t, data, Auto)
	})
}
