package caddyfile_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// TestQuickStartExample runs examples/Caddyfile as the README's quick start
// does (its own ports and ./data folder) and delivers a message to alice.
func TestQuickStartExample(t *testing.T) {
	cfgJSON := adapt(t, "../examples/Caddyfile")
	t.Chdir(t.TempDir())
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatalf("loading the quick-start example (are its ports 2525/2587/2465/2019 free?): %v", err)
	}
	t.Cleanup(func() { caddy.Stop() })

	c, greet := testenv.Dial(t, "127.0.0.1:2525")
	if greet.Code != 220 {
		t.Fatalf("greeting: %s", greet)
	}
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<someone@example.org>", 250)
	c.Expect("RCPT TO:<alice@example.test>", 250)
	c.Expect("RCPT TO:<nobody@example.test>", 550)
	c.Expect("DATA", 354)
	c.Send("Subject: quick start\r\n\r\nhello alice\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("DATA: %s", r)
	}
	files, _ := filepath.Glob("data/maildir/example.test/alice/new/*")
	if len(files) != 1 {
		t.Fatalf("want 1 message in ./data/maildir/example.test/alice/new, got %v", files)
	}
	body, _ := os.ReadFile(files[0])
	if !strings.HasSuffix(string(body), "Subject: quick start\r\n\r\nhello alice\r\n") {
		t.Fatalf("stored: %q", body)
	}
}
