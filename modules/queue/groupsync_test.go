package queue

import (
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync/groupsynctest"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// TestSpoolGroupCommitCoversEveryEnqueue: many enqueues at once share the
// syncs of queue/, and none returns (the server's 250) before a sync of
// queue/ that started after its own file was renamed there has ended. With
// sync file_system they also share the syncs of their files, each still
// synced before its rename into queue/.
func TestSpoolGroupCommitCoversEveryEnqueue(t *testing.T) {
	t.Run("files", func(t *testing.T) { testSpoolGroupCommit(t, groupsync.Files) })
	t.Run("file_system", func(t *testing.T) {
		if !groupsync.FileSystemSupported() {
			t.Skip("no syncfs here")
		}
		testSpoolGroupCommit(t, groupsync.FileSystem)
	})
}

func testSpoolGroupCommit(t *testing.T, mode groupsync.Mode) {
	sp, err := openSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	log := groupsynctest.New()
	fileSyncs := 0
	var mu sync.Mutex
	spoolWriteHook = log.Written
	groupsync.FileSystemSyncHook = func(dir string, start bool) {
		log.FileSystemSync(dir, start)
		if start { // the others arrive meanwhile and share the next sync, even where syncfs is instant (tmpfs)
			time.Sleep(20 * time.Millisecond)
		}
	}
	groupsync.FileSyncHook = func(string) { mu.Lock(); fileSyncs++; mu.Unlock() }
	defer func() { spoolWriteHook, groupsync.FileSystemSyncHook, groupsync.FileSyncHook = nil, nil, nil }()
	spoolRenameHook = log.Visible
	spoolSyncHook = func(dir string, start bool) {
		if dir != sp.qdir {
			t.Errorf("sync of %s", dir)
		}
		log.Sync(dir, start)
	}
	t.Cleanup(func() { spoolRenameHook, spoolSyncHook = nil, nil })

	const n = 64
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := &record{ID: fmt.Sprintf("M%03d", i), From: "a@example.test",
				Recipients: []smtpapp.Recipient{{Address: "b@example.org"}}}
			_, _, err := sp.write(rec, nil, func(w io.Writer) (int64, error) {
				n, err := fmt.Fprintf(w, "Subject: %d\r\n\r\nhi\r\n", i)
				return int64(n), err
			}, mode)
			if err != nil {
				t.Error(err)
				return
			}
			log.Returned(fmt.Sprint(i))
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range n {
		path := sp.path(fmt.Sprintf("M%03d", i))
		log.Covered(t, path, fmt.Sprint(i))
		if mode == groupsync.FileSystem {
			log.SyncedBeforeVisible(t, path)
		}
	}
	t.Logf("%d enqueues, %d syncs of queue/, %d file system syncs, %d files synced alone", n, log.Syncs(), log.FileSystemSyncs(), fileSyncs)
	if log.Syncs() > n {
		t.Fatalf("%d syncs for %d enqueues", log.Syncs(), n)
	}
	if mode == groupsync.FileSystem && (fileSyncs != 0 || log.FileSystemSyncs() == 0 || log.FileSystemSyncs() >= n) {
		t.Fatalf("file_system: %d file system syncs, %d files synced alone", log.FileSystemSyncs(), fileSyncs)
	}
	if mode == groupsync.Files && (fileSyncs != n || log.FileSystemSyncs() != 0) {
		t.Fatalf("files: %d file system syncs, %d files synced alone", log.FileSystemSyncs(), fileSyncs)
	}
}
