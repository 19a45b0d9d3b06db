package ban_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/modules/ban"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/abusetest"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/adapttest"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/limitstore/redistest"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// refuser is a test handler that refuses every recipient with 451, as a
// rate limit would.
type refuser struct{}

func (refuser) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.handlers.test_refuse", New: func() caddy.Module { return new(refuser) }}
}

func (refuser) Rcpt(ctx context.Context, c *smtpapp.Conn, r smtpapp.Recipient) error {
	return smtpapp.Errorf(451, [3]int{4, 7, 1}, "Test limit")
}

func init() { caddy.RegisterModule(refuser{}) }

func bn(fields map[string]any) map[string]any {
	h := map[string]any{"handler": "ban"}
	for k, v := range fields {
		h[k] = v
	}
	return h
}

func start(t *testing.T, handlers ...any) (*testenv.Env, string) {
	t.Helper()
	env := testenv.New(t)
	addr := abusetest.Addr(t)
	env.Load(env.Config(abusetest.App(env, addr, handlers), nil))
	return env, addr
}

// abuse opens a session from the address and makes n unknown-recipient
// errors; it returns the client.
func abuse(t *testing.T, from, addr string, n int) *testenv.Client {
	t.Helper()
	c, g := abusetest.Greet(t, from, addr)
	if g.Code != 220 {
		t.Fatalf("greeting for %s: %s", from, g)
	}
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<s@example.org>", 250)
	for i := 0; i < n; i++ {
		c.Expect("RCPT TO:<nobody@example.test>", 550)
	}
	return c
}

func greeting(t *testing.T, from, addr string) testenv.Reply {
	t.Helper()
	c, g := abusetest.Greet(t, from, addr)
	c.Conn.Close()
	return g
}

func TestBanAtThreshold(t *testing.T) {
	env, addr := start(t, bn(map[string]any{"threshold": 3, "window": "1m", "ban_duration": "1s"}))
	bansBefore := abusetest.MetricValue(t, env, "caddy_smtp_bans_total", `zone="default"`)

	// One event short of the threshold: not banned.
	abuse(t, "127.0.0.2", addr, 2).Expect("RCPT TO:<alice@example.test>", 250)
	if g := greeting(t, "127.0.0.2", addr); g.Code != 220 {
		t.Fatalf("below the threshold: %s", g)
	}

	// The third event bans: the session is closed at its next command...
	c := abuse(t, "127.0.0.1", addr, 3)
	r := c.Cmd("RCPT TO:<alice@example.test>")
	if r.Code != 421 || !strings.HasPrefix(r.Text(), "4.7.1") {
		t.Fatalf("banned session: want 421 4.7.1, got %s", r)
	}
	if !c.Closed() {
		t.Fatal("banned session left open")
	}
	// ...and new connections are refused.
	g := greeting(t, "127.0.0.1", addr)
	if g.Code != 554 || !strings.HasPrefix(g.Text(), "5.7.1") || !strings.Contains(g.Text(), "127.0.0.1/32") {
		t.Fatalf("banned client: want 554 5.7.1, got %s", g)
	}
	// Others are not banned.
	if g := greeting(t, "127.0.0.2", addr); g.Code != 220 {
		t.Fatalf("other client: %s", g)
	}
	if d := abusetest.MetricValue(t, env, "caddy_smtp_bans_total", `zone="default"`) - bansBefore; d != 1 {
		t.Errorf("bans_total grew by %v, want 1", d)
	}
	if m := abusetest.Metric(t, env, "caddy_smtp_bans_active", `zone="default"`); len(m) != 1 || !strings.HasSuffix(m[0], " 1") {
		t.Errorf("bans_active: %v", m)
	}
	// The ban ends after its period, with a fresh count: one more event
	// does not ban again.
	if !testenv.WaitFor(5*time.Second, func() bool { return greeting(t, "127.0.0.1", addr).Code == 220 }) {
		t.Fatal("ban did not end")
	}
	abuse(t, "127.0.0.1", addr, 1)
	if g := greeting(t, "127.0.0.1", addr); g.Code != 220 {
		t.Fatalf("banned again after one event: %s", g)
	}
}

type banList struct {
	Bans []struct {
		Network string    `json:"network"`
		Zone    string    `json:"zone"`
		Reason  string    `json:"reason"`
		Until   time.Time `json:"until"`
	} `json:"bans"`
}

func listBans(t *testing.T, env *testenv.Env) banList {
	t.Helper()
	status, body := abusetest.Admin(t, env, "GET", "/smtp/bans")
	if status != 200 {
		t.Fatalf("GET /smtp/bans: %d %s", status, body)
	}
	var l banList
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		t.Fatalf("GET /smtp/bans: %v: %s", err, body)
	}
	return l
}

func TestAdminAPI(t *testing.T) {
	env, addr := start(t, bn(map[string]any{"threshold": 2, "ban_duration": "1h"}))
	liftedBefore := abusetest.MetricValue(t, env, "caddy_smtp_bans_lifted_total", `zone="default"`)
	abuse(t, "127.0.0.1", addr, 2)
	if g := greeting(t, "127.0.0.1", addr); g.Code != 554 {
		t.Fatalf("not banned: %s", g)
	}
	l := listBans(t, env)
	if len(l.Bans) != 1 || l.Bans[0].Network != "127.0.0.1/32" || l.Bans[0].Zone != "default" ||
		!strings.Contains(l.Bans[0].Reason, "unknown_recipient") || time.Until(l.Bans[0].Until) < 50*time.Minute {
		t.Fatalf("ban list: %+v", l)
	}
	if status, body := abusetest.Admin(t, env, "DELETE", "/smtp/bans/127.0.0.1"); status != 200 || !strings.Contains(body, "127.0.0.1/32") {
		t.Fatalf("lifting: %d %s", status, body)
	}
	if g := greeting(t, "127.0.0.1", addr); g.Code != 220 {
		t.Fatalf("after the ban was lifted: %s", g)
	}
	if l := listBans(t, env); len(l.Bans) != 0 {
		t.Fatalf("ban still listed: %+v", l)
	}
	if status, _ := abusetest.Admin(t, env, "DELETE", "/smtp/bans/127.0.0.1"); status != http.StatusNotFound {
		t.Fatalf("lifting a missing ban: %d", status)
	}
	if status, _ := abusetest.Admin(t, env, "DELETE", "/smtp/bans/not-an-ip"); status != http.StatusBadRequest {
		t.Fatalf("lifting garbage: %d", status)
	}
	// A ban by hand.
	req, _ := http.NewRequest("POST", "http://"+env.Admin+"/smtp/bans", strings.NewReader(`{"network":"127.0.0.3","duration":"10m","reason":"by hand"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST /smtp/bans: %v %v", err, resp)
	}
	resp.Body.Close()
	if g := greeting(t, "127.0.0.3", addr); g.Code != 554 {
		t.Fatalf("banned by hand: %s", g)
	}
	if d := abusetest.MetricValue(t, env, "caddy_smtp_bans_lifted_total", `zone="default"`) - liftedBefore; d != 1 {
		t.Errorf("bans_lifted_total grew by %v, want 1", d)
	}
}

func TestStaticLists(t *testing.T) {
	_, addr := start(t, bn(map[string]any{"threshold": 2, "allow": []string{"127.0.0.4", "127.0.0.5"}, "block": []string{"127.0.0.3/32", "127.0.0.5"}}))
	if g := greeting(t, "127.0.0.3", addr); g.Code != 554 || !strings.HasPrefix(g.Text(), "5.7.1") {
		t.Fatalf("blocked: %s", g)
	}
	if g := greeting(t, "127.0.0.5", addr); g.Code != 220 {
		t.Fatalf("allowed and blocked: allow wins, got %s", g)
	}
	abuse(t, "127.0.0.4", addr, 5).Expect("RCPT TO:<alice@example.test>", 250)
	if g := greeting(t, "127.0.0.4", addr); g.Code != 220 {
		t.Fatalf("allowed client banned: %s", g)
	}
}

// TestRefusalsCount: refusals by other handlers (rate limits and the
// like) are abuse events.
func TestRefusalsCount(t *testing.T) {
	_, addr := start(t, bn(map[string]any{"threshold": 2}), map[string]any{"handler": "test_refuse"})
	c, _ := abusetest.Greet(t, "127.0.0.1", addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<s@example.org>", 250)
	c.Expect("RCPT TO:<alice@example.test>", 451)
	c.Expect("RCPT TO:<alice@example.test>", 451)
	if g := greeting(t, "127.0.0.1", addr); g.Code != 554 {
		t.Fatalf("not banned after two refusals: %s", g)
	}
}

func TestEventsFilter(t *testing.T) {
	_, addr := start(t, bn(map[string]any{"threshold": 2, "events": []string{"relay_denied"}}))
	abuse(t, "127.0.0.1", addr, 3)
	if g := greeting(t, "127.0.0.1", addr); g.Code != 220 {
		t.Fatalf("uncounted kind banned: %s", g)
	}
	c, _ := abusetest.Greet(t, "127.0.0.1", addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<s@example.org>", 250)
	c.Expect("RCPT TO:<a@example.org>", 554)
	c.Expect("RCPT TO:<b@example.org>", 554)
	if g := greeting(t, "127.0.0.1", addr); g.Code != 554 {
		t.Fatalf("relay attempts not counted: %s", g)
	}
}

func TestBansSurviveReload(t *testing.T) {
	env := testenv.New(t)
	addr := abusetest.Addr(t)
	load := func(maxErrors int) {
		env.Load(env.Config(abusetest.App(env, addr, []any{bn(map[string]any{"threshold": 2})}, func(srv map[string]any) {
			srv["limits"] = map[string]any{"max_errors": maxErrors}
		}), nil))
	}
	load(10)
	abuse(t, "127.0.0.1", addr, 2)
	abuse(t, "127.0.0.2", addr, 1)
	load(20)
	if g := greeting(t, "127.0.0.1", addr); g.Code != 554 {
		t.Fatalf("ban lost in a reload: %s", g)
	}
	// The count of events survives too.
	abuse(t, "127.0.0.2", addr, 1)
	if g := greeting(t, "127.0.0.2", addr); g.Code != 554 {
		t.Fatalf("event count lost in a reload: %s", g)
	}
}

// TestRedisStore: bans in Redis outlive the process's memory and are
// seen and lifted by any instance.
func TestRedisStore(t *testing.T) {
	redisAddr := redistest.Start(t)
	h := bn(map[string]any{"threshold": 2, "store": map[string]any{"type": "redis", "address": redisAddr}})
	env, addr := start(t, h)
	abuse(t, "127.0.0.1", addr, 2)
	if g := greeting(t, "127.0.0.1", addr); g.Code != 554 {
		t.Fatalf("not banned: %s", g)
	}
	// A new instance (the in-memory state is gone with the old one).
	caddy.Stop()
	env2 := testenv.New(t)
	addr2 := abusetest.Addr(t)
	env2.Load(env2.Config(abusetest.App(env2, addr2, []any{h}), nil))
	if g := greeting(t, "127.0.0.1", addr2); g.Code != 554 {
		t.Fatalf("ban not shared through Redis: %s", g)
	}
	if l := listBans(t, env2); len(l.Bans) != 1 {
		t.Fatalf("ban list: %+v", l)
	}
	if status, body := abusetest.Admin(t, env2, "DELETE", "/smtp/bans/127.0.0.1/32"); status != 200 {
		t.Fatalf("lifting: %d %s", status, body)
	}
	if g := greeting(t, "127.0.0.1", addr2); g.Code != 220 {
		t.Fatalf("after lifting: %s", g)
	}
	_ = env
}

func TestConfigErrors(t *testing.T) {
	env := testenv.New(t)
	addr := abusetest.Addr(t)
	for _, tc := range []struct {
		h     map[string]any
		field string
	}{
		{bn(map[string]any{"threshold": -1}), "threshold"},
		{bn(map[string]any{"window": "-1s"}), "window"},
		{bn(map[string]any{"ban_duration": "-1s"}), "ban_duration"},
		{bn(map[string]any{"events": []string{"auth_failed", "sneezed"}}), "events[1]"},
		{bn(map[string]any{"allow": []string{"x"}}), "allow[0]"},
		{bn(map[string]any{"block": []string{"1.2.3.4/99"}}), "block[0]"},
		{bn(map[string]any{"ipv6_prefix": 200}), "ipv6_prefix"},
		{bn(map[string]any{"store": map[string]any{"type": "disk"}}), "store.type"},
	} {
		err := env.LoadErr(env.Config(abusetest.App(env, addr, []any{tc.h}), nil))
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%v: want an error naming %q, got %v", tc.h, tc.field, err)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	adapttest.Run(t, func() caddyfile.Unmarshaler { return new(ban.Ban) },
		"ban {\n threshold\n}",
		"ban {\n threshold 0\n}",
		"ban {\n threshold 3 soon\n}",
		"ban {\n allow\n}",
		"ban {\n nonsense\n}",
		"ban x")
}
