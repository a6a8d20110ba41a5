package config

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ImapdConf holds the options of a Cyrus imapd.conf file. Cyrus's own parser
// (lib/libconfig.c) reads "key: value" lines, ignores blank lines and lines
// starting with '#', and lower-cases nothing: option names are lower case by
// convention. A later line overrides an earlier one.
type ImapdConf struct {
	Path    string
	options map[string]string
	lines   map[string]int
}

// ParseImapdConf parses the bytes of an imapd.conf. It rejects lines that are
// not "key: value" with the line number, because an operator who points
// lmtpgate at a damaged file wants to hear where it is damaged.
func ParseImapdConf(path string, data []byte) (*ImapdConf, error) {
	c := &ImapdConf{Path: path, options: map[string]string{}, lines: map[string]int{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		key = strings.TrimSpace(key)
		if !ok || key == "" || strings.ContainsAny(key, " \t") {
			return nil, fmt.Errorf("%s:%d: not an option line (want \"name: value\"): %q", path, n, truncate(line, 60))
		}
		c.options[strings.ToLower(key)] = strings.TrimSpace(val)
		c.lines[strings.ToLower(key)] = n
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// LoadImapdConf reads and parses an imapd.conf file.
func LoadImapdConf(path string) (*ImapdConf, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseImapdConf(path, data)
}

// String returns the value of an option and whether it is set.
func (c *ImapdConf) String(key string) (string, bool) {
	if c == nil {
		return "", false
	}
	v, ok := c.options[key]
	return v, ok
}

// Bool returns a boolean option. Cyrus accepts yes/no, on/off, true/false
// and 1/0 (libconfig's switch parsing).
func (c *ImapdConf) Bool(key string) (val, set bool, err error) {
	s, ok := c.String(key)
	if !ok {
		return false, false, nil
	}
	switch strings.ToLower(s) {
	case "1", "yes", "on", "true", "t", "y":
		return true, true, nil
	case "0", "no", "off", "false", "f", "n":
		return false, true, nil
	}
	return false, true, fmt.Errorf("%s:%d: %s: %q is not a boolean", c.Path, c.lines[key], key, s)
}

// Int returns an integer option.
func (c *ImapdConf) Int(key string) (val int64, set bool, err error) {
	s, ok := c.String(key)
	if !ok {
		return 0, false, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, true, fmt.Errorf("%s:%d: %s: %q is not an integer", c.Path, c.lines[key], key, s)
	}
	return v, true, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
