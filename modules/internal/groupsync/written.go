package groupsync

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// Mode is how a file that was just written, and is not yet visible under
// its final name, reaches the disk (the sync setting of the maildir and
// queue modules).
type Mode uint8

const (
	// Files syncs each file on its own (fsync): a caller waits only for
	// its own file.
	Files Mode = iota
	// FileSystem lets concurrent callers share one sync of the whole file
	// system (syncfs): N files cost one sync instead of N. It also writes
	// out what other programs left unwritten there.
	FileSystem
	// Auto is FileSystem while the system has at most MaxUnwritten bytes
	// not yet written (Busy), Files otherwise.
	Auto
)

// ParseMode reads a sync setting: "files", "file_system" or "auto"; ""
// is DefaultMode.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "":
		return DefaultMode(), nil
	case "files":
		return Files, nil
	case "file_system", "auto":
		if !FileSystemSupported() {
			return Files, fmt.Errorf("%s needs Linux 5.8 or later (a syncfs that reports write errors); use files", s)
		}
		if s == "auto" {
			return Auto, nil
		}
		return FileSystem, nil
	}
	return Files, fmt.Errorf(`%q is not "files", "file_system" or "auto"`, s)
}

// DefaultMode is Auto where FileSystemSupported, Files elsewhere.
func DefaultMode() Mode {
	if FileSystemSupported() {
		return Auto
	}
	return Files
}

func (m Mode) String() string {
	switch m {
	case FileSystem:
		return "file_system"
	case Auto:
		return "auto"
	}
	return "files"
}

// MaxUnwritten is how much unwritten data (system-wide) Auto allows before
// it syncs each file on its own: 16 MiB, a fraction of a second even for a
// slow disk, so that a shared sync never waits long for a neighbour's data.
var MaxUnwritten int64 = 16 << 20

// Test hooks: FileSystemSyncHook sees each shared file system sync start
// and end, FileSyncHook each file Written synced on its own.
var (
	FileSystemSyncHook func(dir string, start bool)
	FileSyncHook       func(path string)
)

// errNoShared: no shared sync can cover the file (its file system's
// syncer could not be set up); it is synced on its own.
var errNoShared = errors.New("no shared sync for this file")

// Written returns once f, a file just written in dir and not yet visible
// under its final name, is on disk: synced on its own (Files, or Auto on a
// busy system), or covered by a sync of its file system that started after
// the call, then checked for write errors of its own.
func Written(f *os.File, dir string, mode Mode) error {
	return WrittenAll([]*os.File{f}, []string{dir}, mode)
}

// WrittenAll is Written for several files at once (the copies of one
// message), files[i] written in dirs[i]: one shared sync per file system
// covers all of its files.
//
// After a shared sync each file is asked for its own write errors
// (checkWritten): syncfs reports an error once per descriptor, to the
// batch whose sync saw it, so a failed write of this file's pages by an
// earlier batch's sync would leave this batch's sync returning success.
func WrittenAll(files []*os.File, dirs []string, mode Mode) error {
	alone := files // synced one by one
	if mode != Files {
		alone = nil
		done := map[uint64]error{} // by device: the shared sync's outcome
		for i, f := range files {
			dev, err := deviceOf(f)
			if err != nil {
				err = errNoShared
			} else {
				shared, ok := done[dev]
				if !ok {
					var fs *Folder
					if fs, shared = fileSystem(dev, dirs[i], mode == Auto); shared == nil {
						shared = fs.Sync()
					}
					done[dev] = shared
				}
				err = shared
			}
			switch {
			case err == nil:
				if err := checkWritten(f); err != nil {
					return err
				}
				filesShared.Inc()
			case errors.Is(err, ErrBusy) || errors.Is(err, errNoShared):
				alone = append(alone, f)
			default:
				return err
			}
		}
	}
	for _, f := range alone {
		if err := f.Sync(); err != nil {
			return err
		}
		filesAlone.Inc()
		if FileSyncHook != nil {
			FileSyncHook(f.Name())
		}
	}
	return nil
}

// fileSystems holds one group syncer per file system (by device) and mode
// (Auto or not), shared by every caller on it.
var fileSystems [2]sync.Map // device -> *Folder

// fileSystem returns the syncer of the file system dev, dir being a folder
// on it (opened, and kept open, the first time), or errNoShared.
func fileSystem(dev uint64, dir string, auto bool) (*Folder, error) {
	cache := &fileSystems[0]
	if auto {
		cache = &fileSystems[1]
	}
	if v, ok := cache.Load(dev); ok {
		return v.(*Folder), nil
	}
	var busy func() bool
	if auto {
		busy = recentlyBusy()
	}
	f, err := NewFileSystem(dir, busy, callFileSystemSyncHook)
	if err != nil {
		return nil, errNoShared
	}
	if f.dev != dev { // something was mounted there since the file was made
		f.close()
		return nil, errNoShared
	}
	v, loaded := cache.LoadOrStore(dev, f)
	if loaded {
		f.close()
	}
	return v.(*Folder), nil
}

// busyFor is how long Auto trusts its last look at /proc/meminfo: reading
// it costs three system calls and a parse, once per batch otherwise, and
// how much is unwritten changes far more slowly than batches follow each
// other.
const busyFor = 100 * time.Millisecond

// recentlyBusy returns Busy(MaxUnwritten), asked at most every busyFor
// (and again when MaxUnwritten changes). Only a Folder's leader calls it,
// one at a time.
func recentlyBusy() func() bool {
	var at time.Time
	var busy bool
	var limit int64
	return func() bool {
		if now := time.Now(); now.Sub(at) >= busyFor || limit != MaxUnwritten {
			at, limit = now, MaxUnwritten
			busy = Busy(limit)
		}
		return busy
	}
}

// callFileSystemSyncHook reads the hook when a sync runs, so tests may set
// it late.
func callFileSystemSyncHook(dir string, start bool) {
	if FileSystemSyncHook != nil {
		FileSystemSyncHook(dir, start)
	}
}

// countFileSystemSync counts one shared sync (or its skip) by its leader.
func countFileSystemSync(err error) {
	result := "synced"
	if errors.Is(err, ErrBusy) {
		result = "busy"
	} else if err != nil {
		result = "failed"
	}
	metricFileSystemSyncs.WithLabelValues(result).Inc()
}
