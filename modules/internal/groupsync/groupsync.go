// Package groupsync is the group commit of folder syncs shared by the
// maildir module and the queue's spool. A file is durable once its name is
// in its folder and the folder itself is synced. Concurrent writers to one
// folder share that sync: each waits for the next sync that starts after
// its link or rename, and one sync covers every one made before it began.
// N files arriving together then cost about one folder sync, not N, and
// every caller still returns after a sync that covers its own file.
//
// The same group commit works for a whole file system (NewFileSystem): one
// syncfs(2) writes out every file written on it so far, so N new files cost
// one sync instead of N fsyncs.
package groupsync

import (
	"errors"
	"sync"
)

// Folder is the group syncer of one folder. The zero value is not usable:
// make one with New.
type Folder struct {
	dir     string
	sync    func(dir string) error // Dir, or a file system's syncfs
	busy    func() bool            // if set and true, skip the sync: ErrBusy
	hook    func(dir string, start bool)
	dev     uint64 // file system syncers: the device
	close   func() // file system syncers: closes the folder
	mu      sync.Mutex
	running bool
	next    *batch // waiters for the next sync to start
}

type batch struct {
	done chan struct{}
	err  error
}

// New returns the syncer of dir. hook, if not nil (tests), sees each sync
// start and end.
func New(dir string, hook func(dir string, start bool)) *Folder {
	return &Folder{dir: dir, sync: Dir, hook: hook}
}

// ErrBusy is Sync's answer when a file system syncer skipped its sync
// because the system had more unwritten data than it allows: each caller
// then syncs its own files instead.
var ErrBusy = errors.New("too much unwritten data for a file system sync")

// NewFileSystem returns a group syncer of the whole file system that holds
// dir (see SyncFileSystem); its Sync covers every file written on it before
// the call. It keeps dir open for good (one per file system), so it syncs
// the right file system even once dir is gone. Only where
// FileSystemSupported.
//
// busy, if not nil, is asked before each sync; when it says yes the sync
// is skipped and Sync returns ErrBusy (see Busy).
func NewFileSystem(dir string, busy func() bool, hook func(dir string, start bool)) (*Folder, error) {
	fs, dev, err := openFileSystem(dir)
	if err != nil {
		return nil, err
	}
	return &Folder{dir: dir, sync: fs.run, busy: busy, hook: hook, dev: dev, close: fs.close}, nil
}

// Busy reports whether the system has more than max bytes not yet written
// to disk (Dirty and Writeback in /proc/meminfo), or cannot tell. A
// syncfs also writes out what other programs left unwritten, so past a
// small max it would make a caller wait for a neighbour's data.
func Busy(max int64) bool {
	n, ok := Unwritten()
	return !ok || n > max
}

// Sync returns once a sync of the folder that started after the call has
// finished, with its error.
func (f *Folder) Sync() error {
	f.mu.Lock()
	if f.next == nil {
		f.next = &batch{done: make(chan struct{})}
	}
	b := f.next
	if !f.running {
		f.running = true
		f.mu.Unlock()
		f.lead()
	} else {
		f.mu.Unlock()
	}
	<-b.done
	return b.err
}

// lead runs the sync for the waiting batch; waiters that came during it
// get the following sync, led from a new goroutine so that this caller is
// not held up by later ones.
func (f *Folder) lead() {
	f.mu.Lock()
	b := f.next
	f.next = nil
	f.mu.Unlock()

	if f.busy != nil && f.busy() {
		b.err = ErrBusy
	} else {
		if f.hook != nil {
			f.hook(f.dir, true)
		}
		b.err = f.sync(f.dir)
		if f.hook != nil {
			f.hook(f.dir, false)
		}
	}
	if f.close != nil { // a file system syncer
		countFileSystemSync(b.err)
	}
	close(b.done)

	f.mu.Lock()
	if f.next != nil {
		f.mu.Unlock()
		go f.lead()
		return
	}
	f.running = false
	f.mu.Unlock()
}
