// Package groupsync is the group commit of folder syncs shared by the
// maildir module and the queue's spool. A file is durable once its name is
// in its folder and the folder itself is synced. Concurrent writers to one
// folder share that sync: each waits for the next sync that starts after
// its link or rename, and one sync covers every one made before it began.
// N files arriving together then cost about one folder sync, not N, and
// every caller still returns after a sync that covers its own file.
package groupsync

import (
	"sync"
)

// Folder is the group syncer of one folder. The zero value is not usable:
// make one with New.
type Folder struct {
	dir     string
	hook    func(dir string, start bool)
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
	return &Folder{dir: dir, hook: hook}
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

	if f.hook != nil {
		f.hook(f.dir, true)
	}
	b.err = Dir(f.dir)
	if f.hook != nil {
		f.hook(f.dir, false)
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
