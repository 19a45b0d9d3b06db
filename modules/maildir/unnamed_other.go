//go:build !linux

package maildir

import (
	"errors"
	"os"
)

var errNoUnnamed = errors.New("unnamed files are not supported here")

func openUnnamed(dir string) (*os.File, error) { return nil, errNoUnnamed }

func linkUnnamed(f *os.File, dst string) error { return errNoUnnamed }
