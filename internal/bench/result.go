package bench

import (
	"encoding/json"
	"fmt"
)

// DecodeResult parses a JSON result and checks it is one lmtpbench wrote.
func DecodeResult(b []byte) (*Result, error) {
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("result: %w", err)
	}
	if r.Messages < 0 || r.Completed < 0 || r.Completed > r.Messages {
		return nil, fmt.Errorf("result: inconsistent counts (messages %d, completed %d)", r.Messages, r.Completed)
	}
	return &r, nil
}

// EncodeResult writes r as indented JSON.
func EncodeResult(r *Result) ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
