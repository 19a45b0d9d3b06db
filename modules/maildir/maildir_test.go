package maildir

import (
	"context"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// TestNoUnnamedNewMailbox: without O_TMPFILE (no /proc, other systems),
// the first message to a new mailbox creates it and is stored.
func TestNoUnnamedNewMailbox(t *testing.T) {
	t.Parallel()
	m := &Maildir{root: t.TempDir(), hostname: "h", JunkFolder: "Junk", unnamed: false}
	env := &smtpapp.Envelope{ID: "X", From: "a@b", Recipients: []smtpapp.Recipient{{Address: "new@example.test", Mailbox: "new@example.test"}}}
	err := m.Deliver(context.Background(), env, smtpapp.NewMessage([]byte("Subject: x\r\n\r\nhi\r\n")))
	if err != nil {
		t.Fatalf("first message to a new mailbox without O_TMPFILE: %v", err)
	}
}

// TestSyncSetting: the default is auto where syncfs can stand in for
// fsync, and a wrong value fails at load naming the field.
func TestSyncSetting(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	m := &Maildir{Root: t.TempDir()}
	if err := m.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	want := "files"
	if groupsync.FileSystemSupported() {
		want = "auto"
	}
	if m.Sync != want || m.sync.String() != want {
		t.Fatalf("default sync %q (%v), want %s", m.Sync, m.sync, want)
	}
	m = &Maildir{Root: t.TempDir(), Sync: "sometimes"}
	if err := m.Provision(ctx); err == nil || !strings.HasPrefix(err.Error(), "sync: ") {
		t.Fatalf("sync sometimes: %v, want an error naming sync", err)
	}
}
