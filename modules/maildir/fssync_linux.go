package maildir

import (
	"os"
	"sync"
	"syscall"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync"
)

// fileSystems holds one group syncer per file system (by device) and mode,
// so that deliveries to every mailbox on it share one syncfs; mailboxOn
// caches the syncer of each Maildir folder (bounded by the mailboxes).
var (
	fileSystems sync.Map // fsKey -> *groupsync.Folder
	mailboxOn   sync.Map // fsKey with the Maildir folder -> *groupsync.Folder
)

type fsKey struct {
	dev  uint64
	dir  string // "" in fileSystems
	auto bool
}

// syncFileSystem returns once a sync of the file system that holds dir,
// started after the call, has ended. With auto it may skip the sync when
// the system has much unwritten data: groupsync.ErrBusy.
func syncFileSystem(dir string, auto bool) error {
	v, ok := mailboxOn.Load(fsKey{dir: dir, auto: auto})
	if !ok {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		key := fsKey{dev: uint64(fi.Sys().(*syscall.Stat_t).Dev), auto: auto}
		if v, ok = fileSystems.Load(key); !ok {
			var busy func() bool
			if auto {
				busy = func() bool { return groupsync.Busy(maxUnwritten) }
			}
			f, err := groupsync.NewFileSystem(dir, busy, callFileSystemSyncHook)
			if err != nil {
				return err
			}
			v, _ = fileSystems.LoadOrStore(key, f)
		}
		mailboxOn.Store(fsKey{dir: dir, auto: auto}, v)
	}
	return v.(*groupsync.Folder).Sync()
}
