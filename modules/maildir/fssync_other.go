//go:build !linux

package maildir

import "errors"

// syncFileSystem is never called here: groupsync.FileSystemSupported is
// false, so sync is files.
func syncFileSystem(dir string, auto bool) error { return errors.ErrUnsupported }
