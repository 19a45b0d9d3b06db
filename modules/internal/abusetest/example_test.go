package abusetest_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	_ "github.com/caddy-smtp/caddy-smtp/caddyfile"
	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	_ "github.com/caddy-smtp/caddy-smtp/modules/ban"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"
	_ "github.com/caddy-smtp/caddy-smtp/modules/ratelimit"
	_ "github.com/caddy-smtp/caddy-smtp/modules/tarpit"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/abusetest"
)

// TestAbuseExample adapts examples/abuse.Caddyfile, checks the handlers'
// JSON and loads it (on test ports and folders).
func TestAbuseExample(t *testing.T) {
	const path = "../../../examples/abuse.Caddyfile"
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": path})
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	app := cfg["apps"].(map[string]any)["smtp"].(map[string]any)
	srv := app["servers"].(map[string]any)["mx"].(map[string]any)
	handlers, _ := json.Marshal(srv["handlers"])
	want := `[{"allow":["10.0.0.0/8","192.168.0.0/16"],"ban_duration":3600000000000,"block":["192.0.2.0/24"],"handler":"ban","threshold":10,"window":600000000000},` +
		`{"account_auth_failures":{"limit":30,"window":3600000000000},"auth_failures":{"limit":5,"window":900000000000},` +
		`"bytes":{"limit":209715200,"window":3600000000000},"concurrent":10,"connections":{"limit":30,"window":60000000000},` +
		`"exempt":["10.0.0.0/8","192.168.0.0/16"],"handler":"ratelimit","messages":{"limit":100,"window":3600000000000},` +
		`"recipients":{"limit":500,"window":3600000000000},"zone":"mx"},` +
		`{"error_delay":1000000000,"exempt":["10.0.0.0/8","192.168.0.0/16"],"greeting_delay":5000000000,"handler":"tarpit","max_delay":20000000000,"score_delay":10000000000,"score_threshold":5}]`
	if string(handlers) != want {
		t.Errorf("handlers:\n got %s\nwant %s", handlers, want)
	}

	// Load it on a free port, with the test's folders.
	env := testenv.New(t)
	addr := abusetest.Addr(t)
	cfg["admin"] = map[string]any{"listen": env.Admin}
	cfg["storage"] = map[string]any{"module": "file_system", "root": env.Storage}
	srv["listen"] = []string{addr}
	app["local_delivery"] = map[string]any{"target": "maildir", "root": env.Path("maildir")}
	app["spool_dir"] = env.Path("spool")
	b, _ := json.Marshal(cfg)
	env.Load(b)
	// The greeting is held for 5s: an early talker is refused at once.
	c := abusetest.DialFrom(t, "127.0.0.1", addr)
	c.Send("EHLO bot.example.org\r\n")
	if r := c.Read(); r.Code != 554 || !strings.HasPrefix(r.Text(), "5.5.1") {
		t.Fatalf("early talker: %s", r)
	}
	abusetest.WaitCertificate(t, env)
}
