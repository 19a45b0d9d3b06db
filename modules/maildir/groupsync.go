package maildir

import (
	"sync"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync"
)

// Concurrent deliveries to one Maildir folder share the sync of new/
// (modules/internal/groupsync): N messages arriving together cost about
// one folder sync, and every 250 still follows a sync that covers its own
// file.

// folderSyncs holds one syncer per folder (bounded by the mailboxes).
var folderSyncs sync.Map // folder path -> *groupsync.Folder

// syncFolder returns once a sync of dir that started after the call has
// finished, with its error.
func syncFolder(dir string) error {
	v, ok := folderSyncs.Load(dir)
	if !ok {
		v, _ = folderSyncs.LoadOrStore(dir, groupsync.New(dir, callSyncHook))
	}
	return v.(*groupsync.Folder).Sync()
}

// syncHook, in tests only, sees each folder sync start and end.
var syncHook func(dir string, start bool)

// callSyncHook reads the hook when a sync runs, so tests may set it late.
func callSyncHook(dir string, start bool) {
	if syncHook != nil {
		syncHook(dir, start)
	}
}

// writeHook, in tests only, sees each copy written, before any sync.
var writeHook func(path string)
