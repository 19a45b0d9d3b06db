package groupsync

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// device is the file system (device number) that holds dir.
func device(dir string) (uint64, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, err
	}
	return uint64(fi.Sys().(*syscall.Stat_t).Dev), nil
}

// SyncFileSystem writes out everything not yet on disk in the file system that
// holds dir (syncfs(2): data, inodes and folders, then a cache flush) and
// reports any write-back error since the last call.
func SyncFileSystem(dir string) error {
	fs, err := openFileSystem(dir)
	if err != nil {
		return err
	}
	defer fs.close()
	return fs.run(dir)
}

type fsSync int // a descriptor of a folder on the file system

func openFileSystem(dir string) (fsSync, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return fsSync(fd), nil
}

func (fd fsSync) run(dir string) error {
	var err error
	for {
		err = unix.Syncfs(int(fd))
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return &os.PathError{Op: "syncfs", Path: dir, Err: err}
	}
	return nil
}

func (fd fsSync) close() { unix.Close(int(fd)) }

// FileSystemSupported reports whether SyncFileSystem can stand in for fsync:
// syncfs reports write-back errors only since Linux 5.8, and before that a
// failed write would still look synced.
var FileSystemSupported = sync.OnceValue(func() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	return kernelAtLeast(unix.ByteSliceToString(u.Release[:]), 5, 8)
})

// kernelAtLeast reports whether a release like "6.1.0-13-amd64" is at
// least major.minor.
func kernelAtLeast(release string, major, minor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(leadingDigits(parts[1])) // "10-rc1", "19+"
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

func leadingDigits(s string) string {
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	if i < 0 {
		return s
	}
	return s[:i]
}

// Unwritten is how many bytes the whole system has in memory not yet on
// disk (Dirty plus Writeback in /proc/meminfo), and whether it could tell.
func Unwritten() (int64, bool) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	return parseUnwritten(b)
}

func parseUnwritten(meminfo []byte) (int64, bool) {
	var total int64
	found := 0
	for _, line := range bytes.Split(meminfo, []byte("\n")) {
		name, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok || (string(name) != "Dirty" && string(name) != "Writeback") {
			continue
		}
		f := strings.Fields(string(rest)) // "1234 kB"
		if len(f) != 2 || f[1] != "kB" {
			return 0, false
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, false
		}
		total += kb << 10
		found++
	}
	return total, found == 2
}
