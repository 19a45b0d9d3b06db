package maildir

import (
	"context"
	"testing"

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
