package queue

import (
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync/groupsynctest"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// TestSpoolGroupCommitCoversEveryEnqueue: many enqueues at once share the
// syncs of queue/, and none returns (the server's 250) before a sync of
// queue/ that started after its own file was renamed there has ended.
func TestSpoolGroupCommitCoversEveryEnqueue(t *testing.T) {
	sp, err := openSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	log := groupsynctest.New()
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
			})
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
		log.Covered(t, sp.path(fmt.Sprintf("M%03d", i)), fmt.Sprint(i))
	}
	t.Logf("%d enqueues, %d syncs of queue/", n, log.Syncs())
	if log.Syncs() > n {
		t.Fatalf("%d syncs for %d enqueues", log.Syncs(), n)
	}
}
