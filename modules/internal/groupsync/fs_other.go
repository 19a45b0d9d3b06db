//go:build !linux

package groupsync

import (
	"errors"
	"os"
)

// SyncFileSystem is Linux's syncfs(2); elsewhere it is not supported.
func SyncFileSystem(dir string) error { return errors.ErrUnsupported }

// FileSystemSupported is false where there is no syncfs(2).
func FileSystemSupported() bool { return false }

type fsSync struct{}

func openFileSystem(dir string) (fsSync, uint64, error) { return fsSync{}, 0, errors.ErrUnsupported }

func (fsSync) run(dir string) error { return errors.ErrUnsupported }

func (fsSync) close() {}

// sharedSync: no shared sync here; Written syncs each file.
func sharedSync(f *os.File, dir string, auto bool) error { return errNoShared }

// Unwritten cannot tell here.
func Unwritten() (int64, bool) { return 0, false }
