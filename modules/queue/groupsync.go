package queue

import "sync"

// Group commit of the spool folder's syncs (as the maildir module does for
// new/). A queued message is committed once its name is in queue/ and
// queue/ itself is synced. Concurrent enqueues share that sync: each
// waits for the next sync that starts after its rename, and one sync
// covers every rename made before it began. N messages queued together
// then cost about one folder sync, not N, and every 250 still follows a
// sync that covers its own file.

// dirSync is the group syncer of one folder.
type dirSync struct {
	dir     string
	mu      sync.Mutex
	running bool
	next    *syncBatch // waiters for the next sync to start
}

type syncBatch struct {
	done chan struct{}
	err  error
}

// sync returns once a sync of the folder that started after the call has
// finished, with its error.
func (ds *dirSync) sync() error {
	ds.mu.Lock()
	if ds.next == nil {
		ds.next = &syncBatch{done: make(chan struct{})}
	}
	b := ds.next
	if !ds.running {
		ds.running = true
		ds.mu.Unlock()
		ds.lead()
	} else {
		ds.mu.Unlock()
	}
	<-b.done
	return b.err
}

// lead runs the sync for the waiting batch; waiters that came during it
// get the following sync, led from a new goroutine so that this caller's
// reply is not held up by later messages.
func (ds *dirSync) lead() {
	ds.mu.Lock()
	b := ds.next
	ds.next = nil
	ds.mu.Unlock()

	if spoolSyncHook != nil {
		spoolSyncHook(ds.dir, true)
	}
	b.err = syncDir(ds.dir)
	if spoolSyncHook != nil {
		spoolSyncHook(ds.dir, false)
	}
	close(b.done)

	ds.mu.Lock()
	if ds.next != nil {
		ds.mu.Unlock()
		go ds.lead()
		return
	}
	ds.running = false
	ds.mu.Unlock()
}

// Test hooks (nil outside tests): spoolSyncHook sees each folder sync
// start and end, spoolRenameHook each message file renamed into queue/.
var (
	spoolSyncHook   func(dir string, start bool)
	spoolRenameHook func(path string)
)
