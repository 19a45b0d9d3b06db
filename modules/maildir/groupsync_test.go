package maildir

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync/groupsynctest"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// TestGroupCommitCoversEveryReply: many deliveries to one mailbox at once
// share folder syncs, and none returns (the server's 250) before a sync of
// new/ that started after its own file was linked there has ended.
func TestGroupCommitCoversEveryReply(t *testing.T) {
	m := &Maildir{root: t.TempDir(), hostname: "h", JunkFolder: "Junk", unnamed: true}
	log := hookLog(t)
	const n = 64
	files := deliverAtOnce(t, m, n, log)
	for path, key := range files {
		log.Covered(t, path, key)
	}
	t.Logf("%d deliveries, %d folder syncs", n, log.Syncs())
	if log.Syncs() > n {
		t.Fatalf("%d syncs for %d deliveries", log.Syncs(), n)
	}
	if log.FileSystemSyncs() != 0 {
		t.Fatalf("sync files made %d file system syncs", log.FileSystemSyncs())
	}
}

// TestFileSystemSyncCoversEveryCopy (sync file_system): concurrent
// deliveries share syncs of the whole file system instead of one fsync
// per copy, and still every copy is covered by a file system sync that
// started after it was written and ended before it became visible in new/,
// and every reply by a sync of new/ after that.
func TestFileSystemSyncCoversEveryCopy(t *testing.T) {
	if !groupsync.FileSystemSupported() {
		t.Skip("no syncfs here")
	}
	m := &Maildir{root: t.TempDir(), hostname: "h", JunkFolder: "Junk", unnamed: true, sync: groupsync.FileSystem}
	log := hookLog(t)
	const n = 64
	files := deliverAtOnce(t, m, n, log)
	for path, key := range files {
		log.SyncedBeforeVisible(t, path)
		log.Covered(t, path, key)
	}
	t.Logf("%d deliveries, %d file system syncs, %d folder syncs", n, log.FileSystemSyncs(), log.Syncs())
	if log.FileSystemSyncs() == 0 || log.FileSystemSyncs() >= n {
		t.Fatalf("%d file system syncs for %d deliveries: want shared ones", log.FileSystemSyncs(), n)
	}
	if fileSyncs.Load() != 0 {
		t.Fatalf("%d copies synced one by one", fileSyncs.Load())
	}
}

// TestAutoSyncsEachCopyWhenBusy (sync auto): when the system has more
// unwritten data than allowed, no file system sync runs (it would wait for
// a neighbour's data) and each copy is synced on its own before it
// becomes visible; when it has little, the shared sync runs.
func TestAutoSyncsEachCopyWhenBusy(t *testing.T) {
	if !groupsync.FileSystemSupported() {
		t.Skip("no syncfs here")
	}
	defer func(v int64) { groupsync.MaxUnwritten = v }(groupsync.MaxUnwritten)
	groupsync.MaxUnwritten = -1 // always busy
	m := &Maildir{root: t.TempDir(), hostname: "h", JunkFolder: "Junk", unnamed: true, sync: groupsync.Auto}
	log := hookLog(t)
	const n = 16
	files := deliverAtOnce(t, m, n, log)
	for path, key := range files {
		log.SyncedAloneBeforeVisible(t, strings.SplitN(filepath.Base(path), ",", 2)[0], path)
		log.Covered(t, path, key)
	}
	if log.FileSystemSyncs() != 0 || fileSyncs.Load() != n {
		t.Fatalf("busy: %d file system syncs, %d copies synced on their own; want 0 and %d", log.FileSystemSyncs(), fileSyncs.Load(), n)
	}

	groupsync.MaxUnwritten = 1 << 62 // never busy
	fileSyncs.Store(0)
	m.root = t.TempDir()
	log = hookLog(t)
	files = deliverAtOnce(t, m, n, log)
	for path, key := range files {
		log.SyncedBeforeVisible(t, path)
		log.Covered(t, path, key)
	}
	if log.FileSystemSyncs() == 0 || fileSyncs.Load() != 0 {
		t.Fatalf("calm: %d file system syncs, %d copies synced on their own", log.FileSystemSyncs(), fileSyncs.Load())
	}
}

var fileSyncs atomic.Int64

// hookLog points the package's test hooks at a new log.
func hookLog(t *testing.T) *groupsynctest.Log {
	log := groupsynctest.New()
	linkHook, syncHook, writeHook = log.Visible, log.Sync, log.Written
	groupsync.FileSystemSyncHook = func(dir string, start bool) {
		log.FileSystemSync(dir, start)
		if start { // the others arrive meanwhile and share the next sync, even where syncfs is instant (tmpfs)
			time.Sleep(20 * time.Millisecond)
		}
	}
	groupsync.FileSyncHook = func(name string) {
		fileSyncs.Add(1)
		// "tmp/(unnamed <base>)": the copy's base, which its final name starts with
		_, base, _ := strings.Cut(strings.TrimSuffix(filepath.Base(name), ")"), "(unnamed ")
		log.SyncedAlone(base)
	}
	t.Cleanup(func() {
		linkHook, syncHook, writeHook, groupsync.FileSystemSyncHook, groupsync.FileSyncHook = nil, nil, nil, nil, nil
		fileSyncs.Store(0)
	})
	return log
}

// deliverAtOnce delivers n messages to alice at once, each returning into
// log, and returns the stored files with the key (the Subject) of the
// delivery that stored each.
func deliverAtOnce(t *testing.T, m *Maildir, n int, log *groupsynctest.Log) map[string]string {
	t.Helper()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			env := &smtpapp.Envelope{ID: fmt.Sprint(i), From: "a@example.org",
				Recipients: []smtpapp.Recipient{{Address: "alice@example.test", Mailbox: "alice@example.test"}}}
			if err := m.Deliver(context.Background(), env, smtpapp.NewMessage([]byte(fmt.Sprintf("Subject: %d\r\n\r\nhi\r\n", i)))); err != nil {
				t.Error(err)
				return
			}
			log.Returned(fmt.Sprint(i))
		}()
	}
	wg.Wait()
	paths, _ := filepath.Glob(filepath.Join(m.root, "example.test", "alice", "new", "*"))
	if len(paths) != n {
		t.Fatalf("stored %d of %d", len(paths), n)
	}
	files := map[string]string{}
	for _, path := range paths {
		body, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var i int
		if _, err := fmt.Sscanf(string(body[strings.Index(string(body), "Subject: "):]), "Subject: %d", &i); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		files[path] = fmt.Sprint(i)
	}
	return files
}

// TestFileSystemSyncOncePerMessage (sync file_system): the copies of one
// message to three mailboxes share one file system sync, and each is
// synced before it becomes visible.
func TestFileSystemSyncOncePerMessage(t *testing.T) {
	if !groupsync.FileSystemSupported() {
		t.Skip("no syncfs here")
	}
	m := &Maildir{root: t.TempDir(), hostname: "h", JunkFolder: "Junk", unnamed: true, sync: groupsync.FileSystem}
	log := hookLog(t)
	var rcpts []smtpapp.Recipient
	for _, u := range []string{"alice", "bob", "carol"} {
		rcpts = append(rcpts, smtpapp.Recipient{Address: u + "@example.test", Mailbox: u + "@example.test"})
	}
	env := &smtpapp.Envelope{ID: "1", From: "a@example.org", Recipients: rcpts}
	if err := m.Deliver(context.Background(), env, smtpapp.NewMessage([]byte("Subject: 1\r\n\r\nhi\r\n"))); err != nil {
		t.Fatal(err)
	}
	log.Returned("1")
	for _, u := range []string{"alice", "bob", "carol"} {
		paths, _ := filepath.Glob(filepath.Join(m.root, "example.test", u, "new", "*"))
		if len(paths) != 1 {
			t.Fatalf("%s: %d files", u, len(paths))
		}
		log.SyncedBeforeVisible(t, paths[0])
		log.Covered(t, paths[0], "1")
	}
	if n := log.FileSystemSyncs(); n != 1 {
		t.Fatalf("%d file system syncs for one message to three mailboxes, want 1", n)
	}
}
