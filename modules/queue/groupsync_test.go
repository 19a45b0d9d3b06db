package queue

import (
	"fmt"
	"io"
	"sync"
	"testing"

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
	var mu sync.Mutex
	seq := 0
	next := func() int { seq++; return seq }
	renamed := map[string]int{}
	type span struct{ start, end int }
	var syncs []span
	open := 0
	spoolRenameHook = func(path string) { mu.Lock(); renamed[path] = next(); mu.Unlock() }
	spoolSyncHook = func(dir string, start bool) {
		mu.Lock()
		defer mu.Unlock()
		if dir != sp.qdir {
			t.Errorf("sync of %s", dir)
		}
		if start {
			open = next()
		} else {
			syncs = append(syncs, span{open, next()})
		}
	}
	t.Cleanup(func() { spoolRenameHook, spoolSyncHook = nil, nil })

	const n = 64
	returned := make([]int, n)
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
			mu.Lock()
			returned[i] = next()
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range n {
		l, r := renamed[sp.path(fmt.Sprintf("M%03d", i))], returned[i]
		if l == 0 {
			t.Fatalf("enqueue %d: no rename seen", i)
		}
		covered := false
		for _, s := range syncs {
			if s.start > l && s.end < r {
				covered = true
			}
		}
		if !covered {
			t.Fatalf("enqueue %d (renamed at %d) returned at %d with no sync of queue/ between", i, l, r)
		}
	}
	t.Logf("%d enqueues, %d syncs of queue/", n, len(syncs))
	if len(syncs) > n {
		t.Fatalf("%d syncs for %d enqueues", len(syncs), n)
	}
}
