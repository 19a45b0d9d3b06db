package tarpit_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/abusetest"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/adapttest"
	"github.com/caddy-smtp/caddy-smtp/modules/tarpit"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// scorer is a test handler that gives every client a spam score at
// connect, as a DNSBL would.
type scorer struct {
	Points float64 `json:"points"`
}

func (scorer) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.handlers.test_score", New: func() caddy.Module { return new(scorer) }}
}

func (s *scorer) Connect(ctx context.Context, c *smtpapp.Conn) error {
	c.AddScore("test_score", s.Points, "test")
	return nil
}

func init() { caddy.RegisterModule(scorer{}) }

func start(t testing.TB, handlers []any, opts ...func(srv map[string]any)) (*testenv.Env, string) {
	t.Helper()
	env := testenv.New(t)
	addr := abusetest.Addr(t)
	env.Load(env.Config(abusetest.App(env, addr, handlers, opts...), nil))
	return env, addr
}

func tp(fields map[string]any) map[string]any {
	h := map[string]any{"handler": "tarpit"}
	for k, v := range fields {
		h[k] = v
	}
	return h
}

// timed runs f and returns how long it took.
func timed(f func()) time.Duration {
	t0 := time.Now()
	f()
	return time.Since(t0)
}

func TestEarlyTalker(t *testing.T) {
	env, addr := start(t, []any{tp(map[string]any{"greeting_delay": "300ms", "exempt": []string{"127.0.0.3"}})})
	earlyBefore := abusetest.MetricValue(t, env, "caddy_smtp_tarpit_early_talkers_total")
	refusedBefore := abusetest.MetricValue(t, env, "caddy_smtp_refusals_total", `module="smtp.handlers.tarpit"`, `reason="early_talker"`)

	// A bot that talks first is refused and disconnected.
	bot := abusetest.DialFrom(t, "127.0.0.1", addr)
	bot.Send("EHLO bot.example.org\r\n")
	r := bot.Read()
	if r.Code != 554 || !strings.HasPrefix(r.Text(), "5.5.1") {
		t.Fatalf("early talker: want 554 5.5.1, got %s", r)
	}
	if !bot.Closed() {
		t.Fatal("early talker left connected")
	}

	// A patient client gets the greeting after the delay.
	var g testenv.Reply
	var c *testenv.Client
	d := timed(func() { c, g = abusetest.Greet(t, "127.0.0.2", addr) })
	if g.Code != 220 || d < 280*time.Millisecond {
		t.Fatalf("patient client: %s after %v", g, d)
	}
	c.Expect("EHLO client.example.org", 250)

	// An exempt client is not held: it may even talk first.
	x := abusetest.DialFrom(t, "127.0.0.3", addr)
	if g := x.Read(); g.Code != 220 {
		t.Fatalf("exempt client: %s", g)
	}
	x.Expect("EHLO client.example.org", 250)

	if d := abusetest.MetricValue(t, env, "caddy_smtp_tarpit_early_talkers_total") - earlyBefore; d != 1 {
		t.Errorf("early talker metric grew by %v, want 1", d)
	}
	if d := abusetest.MetricValue(t, env, "caddy_smtp_refusals_total", `module="smtp.handlers.tarpit"`, `reason="early_talker"`) - refusedBefore; d != 1 {
		t.Errorf("refusal metric grew by %v, want 1", d)
	}
}

// TestErrorDelayGrows: each error makes the following replies slower, up
// to the cap. Only lower bounds are exact (a timer never fires early);
// the cap is checked with a wide margin.
func TestErrorDelayGrows(t *testing.T) {
	const step, maxDelay = 150 * time.Millisecond, 300 * time.Millisecond
	_, addr := start(t, []any{tp(map[string]any{"error_delay": "150ms", "max_delay": "300ms"})})
	c, _ := abusetest.Greet(t, "127.0.0.1", addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<s@example.org>", 250)
	var took []time.Duration
	for i := 1; i <= 12; i++ {
		d := timed(func() { c.Expect("RCPT TO:<nobody@example.test>", 550) })
		took = append(took, d)
		want := min(time.Duration(i)*step, maxDelay)
		if d < want-10*time.Millisecond {
			t.Fatalf("error %d answered after %v, want at least %v (all: %v)", i, d, want, took)
		}
	}
	// Uncapped, the 12th would wait 1.8s.
	if last := took[len(took)-1]; last > 1200*time.Millisecond {
		t.Fatalf("delay not capped: the 12th error waited %v (all: %v)", last, took)
	}
	// Replies that succeed are slower after errors too.
	if d := timed(func() { c.Expect("RCPT TO:<alice@example.test>", 250) }); d < maxDelay-10*time.Millisecond {
		t.Fatalf("accepted recipient after errors answered after %v", d)
	}
	// A relay attempt is an error like the others.
	if d := timed(func() { c.Expect("RCPT TO:<someone@example.org>", 554) }); d < maxDelay-10*time.Millisecond {
		t.Fatalf("refused relay answered after %v", d)
	}
	// A fresh session starts without delay (bounded generously).
	f, _ := abusetest.Greet(t, "127.0.0.1", addr)
	f.Expect("EHLO client.example.org", 250)
	if d := timed(func() { f.Expect("MAIL FROM:<s@example.org>", 250) }); d >= step {
		t.Logf("note: fresh session's MAIL took %v", d)
	}
}

func TestScoreDelay(t *testing.T) {
	delays := map[float64]time.Duration{}
	for _, points := range []float64{1, 10} {
		_, addr := start(t, []any{
			map[string]any{"handler": "test_score", "points": points},
			tp(map[string]any{"score_threshold": 5, "score_delay": "300ms"}),
		})
		var g testenv.Reply
		var c *testenv.Client
		d := timed(func() { c, g = abusetest.Greet(t, "127.0.0.1", addr) })
		if g.Code != 220 {
			t.Fatalf("greeting: %s", g)
		}
		c.Expect("EHLO client.example.org", 250)
		d += timed(func() { c.Expect("MAIL FROM:<s@example.org>", 250) })
		delays[points] = d
		caddy.Stop()
	}
	if delays[10] < 600*time.Millisecond || delays[10] <= delays[1] {
		t.Fatalf("high score not slowed: score 10 took %v, score 1 took %v", delays[10], delays[1])
	}
}

// TestDelayEndsWithSession: a tarpitted client is let go when the session
// time is up, not when the delay would end.
func TestDelayEndsWithSession(t *testing.T) {
	env, addr := start(t, []any{tp(map[string]any{"greeting_delay": "1m"})}, func(srv map[string]any) {
		srv["limits"] = map[string]any{"session_timeout": "1s"}
	})
	var g testenv.Reply
	d := timed(func() { _, g = abusetest.Greet(t, "127.0.0.1", addr) })
	if g.Code != 421 || d > 10*time.Second {
		t.Fatalf("want a 421 at the session limit, got %s after %v", g, d)
	}
	ok := testenv.WaitFor(5*time.Second, func() bool {
		m := abusetest.Metric(t, env, "caddy_smtp_tarpit_waiting ")
		return len(m) == 1 && strings.HasSuffix(m[0], " 0")
	})
	if !ok {
		t.Fatal("waiting gauge did not go back to 0")
	}
}

// TestClientLeavesDuringDelay: a client that hangs up during the greeting
// delay frees its session at once.
func TestClientLeavesDuringDelay(t *testing.T) {
	env, addr := start(t, []any{tp(map[string]any{"greeting_delay": "1m"})})
	for i := 0; i < 20; i++ {
		c := abusetest.DialFrom(t, "127.0.0.1", addr)
		c.Conn.Close()
	}
	ok := testenv.WaitFor(10*time.Second, func() bool {
		m := abusetest.Metric(t, env, "caddy_smtp_connections_open", `server="mx"`)
		return len(m) == 1 && strings.HasSuffix(m[0], " 0")
	})
	if !ok {
		t.Fatalf("sessions not freed: %v", abusetest.Metric(t, env, "caddy_smtp_connections_open"))
	}
}

func TestConfigErrors(t *testing.T) {
	env := testenv.New(t)
	addr := abusetest.Addr(t)
	for _, tc := range []struct {
		h     map[string]any
		field string
	}{
		{tp(map[string]any{"greeting_delay": "-1s"}), "greeting_delay"},
		{tp(map[string]any{"score_delay": "1s"}), "score_threshold"},
		{tp(map[string]any{"exempt": []string{"bad"}}), "exempt[0]"},
	} {
		err := env.LoadErr(env.Config(abusetest.App(env, addr, []any{tc.h}), nil))
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%v: want an error naming %q, got %v", tc.h, tc.field, err)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	adapttest.Run(t, func() caddyfile.Unmarshaler { return new(tarpit.Tarpit) },
		"tarpit {\n greeting_delay\n}",
		"tarpit {\n score x 1s\n}",
		"tarpit {\n nonsense 1\n}",
		"tarpit arg")
}
