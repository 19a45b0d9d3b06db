//go:build !linux

package maildir

import "os"

func openUnnamed(dir, base string) (*os.File, error) { return nil, errNoUnnamed }

func linkUnnamed(f *os.File, dst string) error { return errNoUnnamed }
