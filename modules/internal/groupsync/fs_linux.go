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

// deviceOf is the file system (device) that holds f, whatever its folder
// has become since f was made.
func deviceOf(f *os.File) (uint64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return uint64(fi.Sys().(*syscall.Stat_t).Dev), nil
}

// checkWritten writes and waits for whatever of f is still dirty (nothing,
// after a sync that covered it) and reports any write-back error on f
// since it was opened (sync_file_range checks the file's own error
// sequence), without a disk cache flush.
func checkWritten(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for {
			serr = unix.SyncFileRange(int(fd), 0, 0,
				unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
			if serr != unix.EINTR {
				return
			}
		}
	})
	if err == nil && serr != nil {
		err = &os.PathError{Op: "sync_file_range", Path: f.Name(), Err: serr}
	}
	return err
}

// SyncFileSystem writes out everything not yet on disk in the file system
// that holds dir (syncfs(2): data, inodes and folders, then a cache flush)
// and reports a write-back error there not yet reported to anyone.
func SyncFileSystem(dir string) error {
	fs, _, err := openFileSystem(dir)
	if err != nil {
		return err
	}
	defer fs.close()
	return fs.run(dir)
}

type fsSync int // a descriptor of a folder on the file system

// openFileSystem opens dir, and says on which device it is.
func openFileSystem(dir string) (fsSync, uint64, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, 0, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	return fsSync(fd), uint64(st.Dev), nil
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
