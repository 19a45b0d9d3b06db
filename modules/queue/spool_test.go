package queue_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// While another process holds the spool lock, messages are accepted and
// kept but not delivered; once the lock is free they are.
func TestSpoolLockedElsewhere(t *testing.T) {
	h := newHarness(t, "127.0.0.2")
	spool := h.env.Path("queue")
	os.MkdirAll(spool, 0o700)
	lf, err := os.OpenFile(filepath.Join(spool, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	h.load()
	h.send("alice@example.test", []string{"bob@example.org"}, message("locked", "bob@example.org"))
	mx := h.mx["127.0.0.2"]
	if mx.WaitMessages(1, 700*time.Millisecond) {
		t.Fatal("delivered while another process holds the spool lock")
	}
	if files, _ := os.ReadDir(filepath.Join(spool, "queue")); len(files) != 1 {
		t.Fatalf("the message is not in the spool: %v", files)
	}
	lf.Close() // the other process exits
	if !mx.WaitMessages(1, 5*time.Second) {
		t.Fatal("not delivered after the lock was released")
	}
}
