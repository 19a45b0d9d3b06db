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

// deviceOf cannot tell here: WrittenAll syncs each file.
func deviceOf(f *os.File) (uint64, error) { return 0, errNoShared }

func checkWritten(f *os.File) error { return errors.ErrUnsupported }

// Unwritten cannot tell here.
func Unwritten() (int64, bool) { return 0, false }
