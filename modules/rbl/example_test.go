package rbl_test

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	// The example uses every spam-check module and the smtp global option.
	_ "github.com/caddy-smtp/caddy-smtp/caddyfile"
	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/dmarc"
	_ "github.com/caddy-smtp/caddy-smtp/modules/helo"
	_ "github.com/caddy-smtp/caddy-smtp/modules/rspamd" // examples/spam.Caddyfile names it
	_ "github.com/caddy-smtp/caddy-smtp/modules/spf"
)

// TestSpamExample adapts examples/spam.Caddyfile, points it at the test's
// DNS server, folders and port, loads it and sends it mail: a clean
// client, then one listed in zen and without reverse DNS.
func TestSpamExample(t *testing.T) {
	src, err := os.ReadFile("../../examples/spam.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "spam.Caddyfile"})
	if err != nil {
		t.Fatalf("adapting the example: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("warning: %s", w)
	}
	var cfg map[string]any
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatal(err)
	}
	app := cfg["apps"].(map[string]any)["smtp"].(map[string]any)
	mx := app["servers"].(map[string]any)["mx"].(map[string]any)
	// rbl, spf, helo, dmarc and rspamd (not running here: its failure
	// policy accepts, so the outcomes below are the four checks').
	if n := len(mx["handlers"].([]any)); n != 5 {
		t.Fatalf("want 5 handlers in the example, got %d", n)
	}

	d := testenv.StartDNS(t)
	for _, z := range []string{"zen.spamhaus.org", "bl.spamcop.net", "list.dnswl.org"} {
		d.Add(t, "2.0.0.127."+z+". 300 IN A 127.0.0.2")
	}
	d.Add(t,
		"70.0.0.127.in-addr.arpa. 300 IN PTR client.example.org.",
		"client.example.org. 300 IN A 127.0.0.70",
		"example.org. 300 IN MX 10 client.example.org.",
		`example.org. 300 IN TXT "v=spf1 ip4:127.0.0.70 -all"`,
		`_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"`,
		"71.0.0.127.zen.spamhaus.org. 300 IN A 127.0.0.4",
	)

	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	app["resolver"] = map[string]any{"servers": []string{d.Addr}, "timeout": "500ms"}
	app["local_delivery"] = map[string]any{"target": "maildir", "root": env.Path("maildir")}
	app["spool_dir"] = env.Path("spool")
	mx["listen"] = []string{addr}
	mx["tls"] = map[string]any{"disable_starttls": true}
	env.Load(env.Config(app, nil))

	send := func(ip, helo, from string) testenv.Reply {
		c, _ := testenv.DialFrom(t, ip, addr)
		c.Expect("EHLO "+helo, 250)
		c.StartMessage("news@example.org", "alice@example.test")
		c.Send("From: " + from + "\r\nTo: alice@example.test\r\nSubject: example\r\n\r\nhello\r\n.\r\n")
		return c.Read()
	}
	if r := send("127.0.0.70", "client.example.org", "news@example.org"); r.Code != 250 {
		t.Fatalf("clean client: %s", r)
	}
	files := testenv.Maildir(t, env.Path("maildir"), "example.test", "alice")
	if len(files) != 1 {
		t.Fatalf("clean client: want 1 message in the inbox, got %d", len(files))
	}
	got, _ := os.ReadFile(files[0])
	for _, w := range []string{"Received-SPF: pass", "spf=pass smtp.mailfrom=example.org", "dmarc=pass (p=reject) header.from=example.org", "iprev=pass"} {
		if !strings.Contains(string(got), w) {
			t.Errorf("clean message lacks %q:\n%s", w, got)
		}
	}

	// Listed in zen's XBL (6), no reverse DNS (1.5), SPF fail (4), a From:
	// domain without DMARC (0): 11.5, over the reject threshold.
	r := send("127.0.0.71", "client.example.org", "news@nodmarc.example")
	if r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.1") {
		t.Fatalf("spammy client: want 550 5.7.1, got %s", r)
	}
	// The same with a From: domain whose DMARC policy is reject: refused
	// by the dmarc handler.
	if r := send("127.0.0.71", "client.example.org", "news@example.org"); r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.26") {
		t.Fatalf("DMARC reject: want 550 5.7.26, got %s", r)
	}
	if n := len(testenv.Maildir(t, env.Path("maildir"), "example.test", "alice")) +
		len(testenv.Maildir(t, env.Path("maildir"), "example.test", "alice/.Junk")); n != 1 {
		t.Fatalf("the refused message was stored")
	}
}
