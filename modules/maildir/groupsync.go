package maildir

import (
	"os"
	"sync"
)

// Group commit of folder syncs. A message is visible once its name is in
// new/, and durable once new/ itself is synced. Concurrent deliveries to
// one folder share that sync: each waits for the next sync that starts
// after its link, and one sync covers every link made before it began.
// N messages arriving together then cost about one folder sync, not N,
// and every 250 still follows a sync that covers its own file.

// folderSyncs holds one syncer per folder (bounded by the mailboxes).
var folderSyncs sync.Map // folder path -> *folderSync

type folderSync struct {
	mu      sync.Mutex
	running bool
	next    *syncBatch // waiters for the next sync to start
}

type syncBatch struct {
	done chan struct{}
	err  error
}

// syncFolder returns once a sync of dir that started after the call has
// finished, with its error.
func syncFolder(dir string) error {
	v, _ := folderSyncs.LoadOrStore(dir, &folderSync{})
	fs := v.(*folderSync)
	fs.mu.Lock()
	if fs.next == nil {
		fs.next = &syncBatch{done: make(chan struct{})}
	}
	b := fs.next
	if !fs.running {
		fs.running = true
		fs.mu.Unlock()
		fs.lead(dir)
	} else {
		fs.mu.Unlock()
	}
	<-b.done
	return b.err
}

// lead runs the sync for the waiting batch; waiters that came during it
// get the following sync, led from a new goroutine so that this caller's
// reply is not held up by later messages.
func (fs *folderSync) lead(dir string) {
	fs.mu.Lock()
	b := fs.next
	fs.next = nil
	fs.mu.Unlock()

	if syncHook != nil {
		syncHook(dir, true)
	}
	b.err = syncDir(dir)
	if syncHook != nil {
		syncHook(dir, false)
	}
	close(b.done)

	fs.mu.Lock()
	if fs.next != nil {
		fs.mu.Unlock()
		go fs.lead(dir)
		return
	}
	fs.running = false
	fs.mu.Unlock()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// syncHook, in tests only, sees each folder sync start and end.
var syncHook func(dir string, start bool)
