//go:build unix

package groupsync

import (
	"os"

	"golang.org/x/sys/unix"
)

// Dir syncs a folder once (fsync of its entries). Plain system calls: an
// os.File would also try the runtime poller and check the descriptor's
// flags, on every message.
func Dir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	for {
		err = unix.Fsync(fd)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return &os.PathError{Op: "sync", Path: dir, Err: err}
	}
	return nil
}
