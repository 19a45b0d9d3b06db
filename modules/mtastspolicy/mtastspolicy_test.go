package mtastspolicy_test

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"testing"

	_ "github.com/caddy-smtp/caddy-smtp"
	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/mtasts"
)

func smtpApp(env *testenv.Env, mxHost string, mxPort, subPort int) map[string]any {
	return map[string]any{
		"local_domains":  []string{"example.test"},
		"local_delivery": map[string]any{"target": "maildir", "root": env.Path("maildir")},
		"spool_dir":      env.Path("spool"),
		"servers": map[string]any{
			"mx": map[string]any{"listen": []string{fmt.Sprintf("127.0.0.1:%d", mxPort)}, "hostname": mxHost,
				"tls": map[string]any{"issuer": "internal"}},
			"submission": map[string]any{"listen": []string{fmt.Sprintf("127.0.0.1:%d", subPort)}, "hostname": "smtp.example.test",
				"require_auth": true, "tls": map[string]any{"issuer": "internal"}},
		},
	}
}

// TestPolicyFollowsTheSMTPApp: through Caddy's http app on loopback (the
// internal CA), the policy lists the smtp app's MX hostname (not the
// submission server's), and another one after a reload of the smtp
// config.
func TestPolicyFollowsTheSMTPApp(t *testing.T) {
	env := testenv.New(t)
	web := testenv.NewWeb(t, "mta-sts.example.test")
	routes := []any{map[string]any{
		"match":  []any{map[string]any{"host": []string{"mta-sts.example.test"}}},
		"handle": []any{map[string]any{"handler": "mta_sts", "max_age": "24h"}, map[string]any{"handler": "static_response", "status_code": 404}},
	}}
	mxPort, subPort := testenv.FreePort(t), testenv.FreePort(t)
	env.Load(env.Config(smtpApp(env, "mail.example.test", mxPort, subPort), web.Apps(t, routes)))
	web.WaitForHost(t, env, "mta-sts.example.test")
	waitSMTP(t, env, mxPort, "mail.example.test")
	waitSMTP(t, env, subPort, "smtp.example.test")
	client := web.Client(env)

	get := func() string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "https://mta-sts.example.test/.well-known/mta-sts.txt", nil)
		status, hdr, body := web.Do(t, client, req)
		if status != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") {
			t.Fatalf("policy: %d %s %q", status, hdr.Get("Content-Type"), body)
		}
		return string(body)
	}
	// The MX uses the internal CA, which senders do not trust: testing.
	want := "version: STSv1\r\nmode: testing\r\nmx: mail.example.test\r\nmax_age: 86400\r\n"
	if got := get(); got != want {
		t.Fatalf("policy:\n%q\nwant\n%q", got, want)
	}
	req, _ := http.NewRequest(http.MethodGet, "https://mta-sts.example.test/other", nil)
	if status, _, _ := web.Do(t, client, req); status != 404 {
		t.Fatalf("other path: %d, want the next handler's 404", status)
	}

	// Reload with another MX hostname: the policy follows at once.
	env.Load(env.Config(smtpApp(env, "mx2.example.test", mxPort, subPort), web.Apps(t, routes)))
	waitSMTP(t, env, mxPort, "mx2.example.test")
	want2 := "version: STSv1\r\nmode: testing\r\nmx: mx2.example.test\r\nmax_age: 86400\r\n"
	if got := get(); got != want2 {
		t.Fatalf("policy after reload:\n%q\nwant\n%q", got, want2)
	}
}

// waitSMTP waits for the certificate of an SMTP server, so that nothing
// is still being issued when the test ends.
func waitSMTP(t *testing.T, env *testenv.Env, port int, host string) {
	testenv.WaitForCertificate(t, fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{RootCAs: env.RootCAs(), ServerName: host})
}

func TestPolicyText(t *testing.T) {
	p := mtasts.Policy{Mode: "enforce", MaxAge: mtasts.DefaultMaxAge, MX: []string{"a.example", "b.example"}}
	if got, want := p.Text(), "version: STSv1\r\nmode: enforce\r\nmx: a.example\r\nmx: b.example\r\nmax_age: 604800\r\n"; got != want {
		t.Fatalf("%q", got)
	}
	q := p
	q.MX = []string{"a.example"}
	if p.ID() == q.ID() || len(p.ID()) != 20 {
		t.Fatalf("ids %s %s", p.ID(), q.ID())
	}
	if err := mtasts.Validate("strict", 0, nil); err == nil || !strings.HasPrefix(err.Error(), "mode:") {
		t.Fatalf("bad mode: %v", err)
	}
}
