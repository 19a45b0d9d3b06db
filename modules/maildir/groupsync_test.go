package maildir

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync/groupsynctest"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// TestGroupCommitCoversEveryReply: many deliveries to one mailbox at once
// share folder syncs, and none returns (the server's 250) before a sync of
// new/ that started after its own file was linked there has ended.
func TestGroupCommitCoversEveryReply(t *testing.T) {
	m := &Maildir{root: t.TempDir(), hostname: "h", JunkFolder: "Junk", unnamed: true}
	log := groupsynctest.New()
	linkHook, syncHook = log.Visible, log.Sync
	t.Cleanup(func() { linkHook, syncHook = nil, nil })

	const n = 64
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
		log.Covered(t, path, fmt.Sprint(i))
	}
	t.Logf("%d deliveries, %d folder syncs", n, log.Syncs())
	if log.Syncs() > n {
		t.Fatalf("%d syncs for %d deliveries", log.Syncs(), n)
	}
}
