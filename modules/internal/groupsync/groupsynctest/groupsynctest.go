// Package groupsynctest checks group commit in tests: it records, on one
// logical clock, when each file becomes visible (link or rename), when
// each folder sync starts and ends and when each caller returns, and
// tells whether a caller's file was covered by a sync in between. It is
// for tests only.
package groupsynctest

import (
	"sync"
	"testing"
)

// Log is the record; its methods are safe for concurrent use.
type Log struct {
	mu       sync.Mutex
	clock    int
	visible  map[string]int
	open     map[string]int
	syncs    []span
	returned map[string]int
	written  map[string]int
	alone    map[string]int
	fsOpen   map[string]int
	fsSyncs  []span
}

type span struct{ start, end int }

// New returns an empty Log.
func New() *Log {
	return &Log{visible: map[string]int{}, open: map[string]int{}, returned: map[string]int{},
		written: map[string]int{}, alone: map[string]int{}, fsOpen: map[string]int{}}
}

func (l *Log) tick() int { l.clock++; return l.clock }

// Visible records that the file at path became visible (the link or
// rename hook).
func (l *Log) Visible(path string) { l.mu.Lock(); l.visible[path] = l.tick(); l.mu.Unlock() }

// Sync records the start or the end of a sync of dir (the sync hook).
func (l *Log) Sync(dir string, start bool) { l.span(l.open, &l.syncs, dir, start) }

// span records the start (in open) or the end (a span in spans) of a sync.
func (l *Log) span(open map[string]int, spans *[]span, dir string, start bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if start {
		open[dir] = l.tick()
	} else {
		*spans = append(*spans, span{open[dir], l.tick()})
	}
}

// Returned records that the caller named key got its answer.
func (l *Log) Returned(key string) { l.mu.Lock(); l.returned[key] = l.tick(); l.mu.Unlock() }

// Syncs is how many syncs ended.
func (l *Log) Syncs() int { l.mu.Lock(); defer l.mu.Unlock(); return len(l.syncs) }

// Covered fails t unless a sync that started after the file at path
// became visible ended before the caller key returned.
func (l *Log) Covered(t testing.TB, path, key string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	v, r := l.visible[path], l.returned[key]
	if v == 0 {
		t.Fatalf("%s: never became visible", path)
	}
	for _, s := range l.syncs {
		if s.start > v && s.end < r {
			return
		}
	}
	t.Fatalf("%s (visible at %d, caller %s returned at %d): no sync in between", path, v, key, r)
}

// Written records that the file to become visible at path is written (not
// yet synced, not yet visible).
func (l *Log) Written(path string) { l.mu.Lock(); l.written[path] = l.tick(); l.mu.Unlock() }

// FileSystemSync records the start or the end of a sync of a whole file
// system.
func (l *Log) FileSystemSync(dir string, start bool) { l.span(l.fsOpen, &l.fsSyncs, dir, start) }

// FileSystemSyncs is how many file system syncs ended.
func (l *Log) FileSystemSyncs() int { l.mu.Lock(); defer l.mu.Unlock(); return len(l.fsSyncs) }

// SyncedBeforeVisible fails t unless a file system sync that started
// after the file at path was written ended before it became visible.
func (l *Log) SyncedBeforeVisible(t testing.TB, path string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	w, v := l.written[path], l.visible[path]
	if w == 0 || v == 0 {
		t.Fatalf("%s: written at %d, visible at %d", path, w, v)
	}
	for _, s := range l.fsSyncs {
		if s.start > w && s.end < v {
			return
		}
	}
	t.Fatalf("%s (written at %d, visible at %d): no file system sync in between", path, w, v)
}

// SyncedAlone records that the file known as key was synced on its own
// (an fsync; the file has no final path yet).
func (l *Log) SyncedAlone(key string) { l.mu.Lock(); l.alone[key] = l.tick(); l.mu.Unlock() }

// SyncedAloneBeforeVisible fails t unless the file known as key was
// synced on its own before it became visible at path.
func (l *Log) SyncedAloneBeforeVisible(t testing.TB, key, path string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	s, v := l.alone[key], l.visible[path]
	if s == 0 || v == 0 || s > v {
		t.Fatalf("%s: synced alone at %d, visible at %d", path, s, v)
	}
}
