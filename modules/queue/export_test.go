package queue

import (
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// EnqueueRequireTLS queues msg with the REQUIRETLS flag in the queue of
// spool path, as Deliver would for a message whose MAIL FROM carried
// REQUIRETLS (smtpapp does not pass that parameter on yet).
func EnqueueRequireTLS(path, from string, rcpts []string, msg string) (string, error) {
	for _, e := range allEngines() {
		if filepath.Clean(e.sp.root) != filepath.Clean(path) {
			continue
		}
		now := time.Now()
		rec := &record{ID: newID(), From: from, Received: now, Queued: now, RequireTLS: true}
		for _, r := range rcpts {
			rec.Recipients = append(rec.Recipients, smtpapp.Recipient{Address: r})
		}
		b := []byte(msg)
		return rec.ID, e.enqueue(e.settings(), rec, func(w io.Writer) (int64, error) {
			n, err := w.Write(b)
			return int64(n), err
		}, func() io.Reader { return bytes.NewReader(b) })
	}
	return "", fmt.Errorf("no queue at %s", path)
}
