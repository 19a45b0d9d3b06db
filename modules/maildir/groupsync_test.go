package maildir

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// TestGroupCommitCoversEveryReply: many deliveries to one mailbox at once
// share folder syncs, and none returns (the server's 250) before a sync of
// new/ that started after its own file was linked there has ended.
func TestGroupCommitCoversEveryReply(t *testing.T) {
	m := &Maildir{root: t.TempDir(), hostname: "h", JunkFolder: "Junk", unnamed: true}
	var mu sync.Mutex
	seq := 0
	next := func() int { seq++; return seq }
	linked := map[string]int{}
	type span struct{ start, end int }
	var syncs []span
	open := map[string]int{}
	linkHook = func(path string) { mu.Lock(); linked[path] = next(); mu.Unlock() }
	syncHook = func(dir string, start bool) {
		mu.Lock()
		defer mu.Unlock()
		if start {
			open[dir] = next()
		} else {
			syncs = append(syncs, span{open[dir], next()})
		}
	}
	t.Cleanup(func() { linkHook, syncHook = nil, nil })

	const n = 64
	returned := make([]int, n)
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
			mu.Lock()
			returned[i] = next()
			mu.Unlock()
		}()
	}
	wg.Wait()
	files, _ := filepath.Glob(filepath.Join(m.root, "example.test", "alice", "new", "*"))
	if len(files) != n {
		t.Fatalf("stored %d of %d", len(files), n)
	}
	// Each delivery's own file (found by its Subject) must have been
	// covered by a sync that started after the file was linked and ended
	// before the delivery returned.
	for _, path := range files {
		body, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var i int
		if _, err := fmt.Sscanf(string(body[strings.Index(string(body), "Subject: "):]), "Subject: %d", &i); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		l, r := linked[path], returned[i]
		covered := false
		for _, s := range syncs {
			if s.start > l && s.end < r {
				covered = true
			}
		}
		if !covered {
			t.Fatalf("delivery %d (linked at %d) returned at %d with no folder sync between", i, l, r)
		}
	}
	t.Logf("%d deliveries, %d folder syncs", n, len(syncs))
	if len(syncs) > n {
		t.Fatalf("%d syncs for %d deliveries", len(syncs), n)
	}
}
