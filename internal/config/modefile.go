package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// The mode file, <state_dir>/mode, is written by `lmtpgate mode` and
// overrides mode: in the configuration while it exists. It is read and
// written here and nowhere else.

// ModeFile returns the path of the mode file in stateDir.
func ModeFile(stateDir string) string { return filepath.Join(stateDir, "mode") }

// ReadModeFile returns the mode the file sets and whether it exists. An
// error means the file exists but cannot be used.
func ReadModeFile(stateDir string) (Mode, bool, error) {
	data, err := os.ReadFile(ModeFile(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", true, err
	}
	m, err := ParseMode(string(data))
	if err != nil {
		return "", true, err
	}
	return m, true, nil
}

// WriteModeFile writes the mode file atomically (a temporary file renamed
// over it), so that a crash never leaves half a mode behind.
func WriteModeFile(stateDir string, m Mode) error {
	if _, err := ParseMode(string(m)); err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	file := ModeFile(stateDir)
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(string(m)+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, file); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// ClearModeFile removes the mode file; it is not an error if there is none.
func ClearModeFile(stateDir string) error {
	err := os.Remove(ModeFile(stateDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", ModeFile(stateDir), err)
	}
	return nil
}
