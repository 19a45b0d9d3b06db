package ratelimit_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/abusetest"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/adapttest"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/limitstore/redistest"
	"github.com/caddy-smtp/caddy-smtp/modules/ratelimit"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// body100 is a message body of exactly 100 bytes.
var body100 = "Subject: b\r\n\r\n" + strings.Repeat("x", 84) + "\r\n"

// body50 is a message body of exactly 50 bytes.
var body50 = "Subject: b\r\n\r\n" + strings.Repeat("x", 34) + "\r\n"

func rl(fields map[string]any) map[string]any {
	h := map[string]any{"handler": "ratelimit"}
	for k, v := range fields {
		h[k] = v
	}
	return h
}

func rate(n int, window string) map[string]any { return map[string]any{"limit": n, "window": window} }

func start(t *testing.T, handler map[string]any, opts ...func(srv map[string]any)) (*testenv.Env, string) {
	t.Helper()
	env := testenv.New(t)
	addr := abusetest.Addr(t)
	env.Load(env.Config(abusetest.App(env, addr, []any{handler}, opts...), nil))
	return env, addr
}

func expectRefused(t *testing.T, r testenv.Reply, code int, enh string) {
	t.Helper()
	if r.Code != code || !strings.HasPrefix(r.Text(), enh) {
		t.Fatalf("want %d %s, got %s", code, enh, r)
	}
}

func TestConnectionsEdge(t *testing.T) {
	env, addr := start(t, rl(map[string]any{"connections": rate(3, "1m")}))
	rlBefore := abusetest.MetricValue(t, env, "caddy_smtp_ratelimit_refusals_total", `limit="connections"`, `zone="default"`)
	appBefore := abusetest.MetricValue(t, env, "caddy_smtp_refusals_total", `module="smtp.handlers.ratelimit"`, `stage="connect"`)
	for i := 1; i <= 3; i++ {
		c, g := abusetest.Greet(t, "127.0.0.1", addr)
		if g.Code != 220 {
			t.Fatalf("connection %d (within the limit): %s", i, g)
		}
		c.Expect("QUIT", 221)
	}
	c, g := abusetest.Greet(t, "127.0.0.1", addr)
	expectRefused(t, g, 421, "4.7.0")
	if !c.Closed() {
		t.Fatal("connection over the limit left open")
	}
	// Another client address has its own allowance.
	if _, g := abusetest.Greet(t, "127.0.0.2", addr); g.Code != 220 {
		t.Fatalf("other client: %s", g)
	}
	if d := abusetest.MetricValue(t, env, "caddy_smtp_ratelimit_refusals_total", `limit="connections"`, `zone="default"`) - rlBefore; d != 1 {
		t.Errorf("ratelimit metric grew by %v, want 1", d)
	}
	if d := abusetest.MetricValue(t, env, "caddy_smtp_refusals_total", `module="smtp.handlers.ratelimit"`, `stage="connect"`) - appBefore; d != 1 {
		t.Errorf("app refusal metric grew by %v, want 1", d)
	}
	status, body := abusetest.Admin(t, env, "GET", "/smtp/ratelimit")
	if status != 200 || !strings.Contains(body, `"limit":"connections"`) || !strings.Contains(body, `"client":"127.0.0.1/32"`) {
		t.Errorf("admin API: %d %s", status, body)
	}
}

func TestConcurrentEdge(t *testing.T) {
	_, addr := start(t, rl(map[string]any{"concurrent": 2}))
	a, g1 := abusetest.Greet(t, "127.0.0.1", addr)
	_, g2 := abusetest.Greet(t, "127.0.0.1", addr)
	if g1.Code != 220 || g2.Code != 220 {
		t.Fatalf("within the limit: %s / %s", g1, g2)
	}
	c, g := abusetest.Greet(t, "127.0.0.1", addr)
	expectRefused(t, g, 421, "4.7.0")
	if !c.Closed() {
		t.Fatal("connection over the limit left open")
	}
	if _, g := abusetest.Greet(t, "127.0.0.2", addr); g.Code != 220 {
		t.Fatalf("other client: %s", g)
	}
	// Closing one frees its slot (and refused connections took none).
	a.Expect("QUIT", 221)
	a.Conn.Close()
	ok := testenv.WaitFor(5*time.Second, func() bool {
		c, g := abusetest.Greet(t, "127.0.0.1", addr)
		c.Conn.Close()
		return g.Code == 220
	})
	if !ok {
		t.Fatal("slot not given back after the connection closed")
	}
}

func TestMessagesEdge(t *testing.T) {
	env, addr := start(t, rl(map[string]any{"messages": rate(2, "1m")}), abusetest.WithTLS)
	c, _ := abusetest.Greet(t, "127.0.0.1", addr)
	c.Expect("EHLO client.example.org", 250)
	for i := 1; i <= 2; i++ {
		if r := abusetest.Send(c, "s@example.org", []string{"alice@example.test"}, body100); r.Code != 250 {
			t.Fatalf("message %d: %s", i, r)
		}
	}
	expectRefused(t, c.Cmd("MAIL FROM:<s@example.org>"), 451, "4.7.1")
	// The session goes on; a new connection from the address is limited too.
	c.Expect("NOOP", 250)
	c2, _ := abusetest.Greet(t, "127.0.0.1", addr)
	c2.Expect("EHLO client.example.org", 250)
	expectRefused(t, c2.Cmd("MAIL FROM:<s@example.org>"), 451, "4.7.1")

	// An authenticated session counts for its account, not the address.
	a, _ := abusetest.Greet(t, "127.0.0.1", addr)
	abusetest.StartTLS(t, env, a)
	if r := abusetest.AuthPlain(a, "alice@example.test", "demo-alice"); r.Code != 235 {
		t.Fatalf("AUTH: %s", r)
	}
	for i := 1; i <= 2; i++ {
		if r := abusetest.Send(a, "alice@example.test", []string{"alice@example.test"}, body100); r.Code != 250 {
			t.Fatalf("alice's message %d: %s", i, r)
		}
	}
	r := a.Cmd("MAIL FROM:<alice@example.test>")
	expectRefused(t, r, 451, "4.7.1")
	if !strings.Contains(r.Text(), "alice@example.test") {
		t.Errorf("refusal does not name the account: %s", r)
	}
}

func TestRecipientsEdge(t *testing.T) {
	_, addr := start(t, rl(map[string]any{"recipients": rate(3, "1m")}))
	c, _ := abusetest.Greet(t, "127.0.0.1", addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<s@example.org>", 250)
	for i := 1; i <= 3; i++ {
		c.Expect("RCPT TO:<alice@example.test>", 250)
	}
	expectRefused(t, c.Cmd("RCPT TO:<alice@example.test>"), 451, "4.7.1")
	// The accepted recipients still get the message.
	c.Expect("DATA", 354)
	c.Send(body100 + ".\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("DATA after a refused recipient: %s", r)
	}
	o, _ := abusetest.Greet(t, "127.0.0.2", addr)
	o.Expect("EHLO client.example.org", 250)
	o.Expect("MAIL FROM:<s@example.org>", 250)
	o.Expect("RCPT TO:<alice@example.test>", 250)
}

func TestBytesEdge(t *testing.T) {
	env, addr := start(t, rl(map[string]any{"bytes": rate(250, "1m")}))
	c, _ := abusetest.Greet(t, "127.0.0.1", addr)
	c.Expect("EHLO client.example.org", 250)
	to := []string{"alice@example.test"}
	for i := 1; i <= 2; i++ {
		if r := abusetest.Send(c, "s@example.org", to, body100); r.Code != 250 {
			t.Fatalf("message %d: %s", i, r)
		}
	}
	// 50 bytes left: 100 do not fit (refused at the end of DATA)...
	expectRefused(t, abusetest.Send(c, "s@example.org", to, body100), 451, "4.7.1")
	// ...50 do, exactly (the last allowed)...
	if r := abusetest.Send(c, "s@example.org", to, body50); r.Code != 250 {
		t.Fatalf("message filling the allowance exactly: %s", r)
	}
	// ...and then nothing does: refused at MAIL, before any byte is sent.
	expectRefused(t, c.Cmd("MAIL FROM:<s@example.org>"), 451, "4.7.1")
	if n := len(testenv.Maildir(t, env.Path("maildir"), "example.test", "alice")); n != 3 {
		t.Fatalf("want 3 messages stored, got %d", n)
	}
}

func TestAuthFailuresEdge(t *testing.T) {
	env, addr := start(t, rl(map[string]any{
		"auth_failures":         rate(2, "1m"),
		"account_auth_failures": rate(3, "1m"),
	}), abusetest.WithTLS)
	login := func(from, user, pass string) (*testenv.Client, testenv.Reply) {
		c, g := abusetest.Greet(t, from, addr)
		if g.Code != 220 {
			t.Fatalf("greeting: %s", g)
		}
		abusetest.StartTLS(t, env, c)
		return c, abusetest.AuthPlain(c, user, pass)
	}
	// Per address: two failures are answered, the third attempt is
	// refused before the password is checked, even the right one.
	for i := 1; i <= 2; i++ {
		if _, r := login("127.0.0.1", "mallory@example.test", "guess"); r.Code != 535 {
			t.Fatalf("failure %d: %s", i, r)
		}
	}
	c, r := login("127.0.0.1", "alice@example.test", "demo-alice")
	expectRefused(t, r, 421, "4.7.0")
	if !c.Closed() {
		t.Fatal("connection left open after the per-address refusal")
	}
	// Per account: alice's password guessed from three addresses...
	for i, from := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		if _, r := login(from, "Alice@example.test", "guess"); r.Code != 535 {
			t.Fatalf("account failure %d: %s", i+1, r)
		}
	}
	// ...locks the account for everyone for a while, not other accounts.
	_, r = login("127.0.0.5", "alice@example.test", "demo-alice")
	expectRefused(t, r, 454, "4.7.0")
	if _, r := login("127.0.0.5", "bob@example.test", "x"); r.Code != 535 {
		t.Fatalf("other account: %s", r)
	}
}

func TestExempt(t *testing.T) {
	_, addr := start(t, rl(map[string]any{"connections": rate(1, "1m"), "recipients": rate(1, "1m"), "exempt": []string{"127.0.0.2"}}))
	for i := 0; i < 3; i++ {
		c, g := abusetest.Greet(t, "127.0.0.2", addr)
		if g.Code != 220 {
			t.Fatalf("exempt client refused: %s", g)
		}
		c.Expect("EHLO client.example.org", 250)
		c.Expect("MAIL FROM:<s@example.org>", 250)
		c.Expect("RCPT TO:<alice@example.test>", 250)
		c.Expect("RCPT TO:<alice@example.test>", 250)
	}
	abusetest.Greet(t, "127.0.0.1", addr)
	if _, g := abusetest.Greet(t, "127.0.0.1", addr); g.Code != 421 {
		t.Fatalf("non-exempt client: %s", g)
	}
}

func TestPrefixGrouping(t *testing.T) {
	_, addr := start(t, rl(map[string]any{"connections": rate(2, "1m"), "ipv4_prefix": 24}))
	abusetest.Greet(t, "127.0.0.1", addr)
	abusetest.Greet(t, "127.0.0.2", addr)
	if _, g := abusetest.Greet(t, "127.0.0.3", addr); g.Code != 421 || !strings.Contains(g.Text(), "127.0.0.0/24") {
		t.Fatalf("third address of the /24: %s", g)
	}
}

// TestReload: the counters survive a reload that keeps the limit, and
// start afresh when the limit's config changes.
func TestReload(t *testing.T) {
	env := testenv.New(t)
	addr := abusetest.Addr(t)
	load := func(limit int, maxErrors int) {
		h := rl(map[string]any{"connections": rate(limit, "1m"), "recipients": rate(2, "1m")})
		env.Load(env.Config(abusetest.App(env, addr, []any{h}, func(srv map[string]any) {
			srv["limits"] = map[string]any{"max_errors": maxErrors}
		}), nil))
	}
	load(2, 10)
	abusetest.Greet(t, "127.0.0.1", addr)
	c, _ := abusetest.Greet(t, "127.0.0.1", addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<s@example.org>", 250)
	c.Expect("RCPT TO:<alice@example.test>", 250)
	c.Expect("RCPT TO:<alice@example.test>", 250)

	// An unrelated change: both limits keep their counts.
	load(2, 20)
	if _, g := abusetest.Greet(t, "127.0.0.1", addr); g.Code != 421 {
		t.Fatalf("connection count lost in a reload: %s", g)
	}
	n, _ := abusetest.Greet(t, "127.0.0.2", addr)
	n.Expect("EHLO client.example.org", 250)
	n.Expect("MAIL FROM:<s@example.org>", 250)
	n.Expect("RCPT TO:<alice@example.test>", 250)

	// A changed connections limit takes effect at once, with fresh
	// counters; the unchanged recipients limit keeps counting.
	load(3, 20)
	for i := 1; i <= 3; i++ {
		if _, g := abusetest.Greet(t, "127.0.0.1", addr); g.Code != 220 {
			t.Fatalf("connection %d under the new limit: %s", i, g)
		}
	}
	if _, g := abusetest.Greet(t, "127.0.0.1", addr); g.Code != 421 {
		t.Fatalf("new limit not enforced: %s", g)
	}
	o, _ := abusetest.Greet(t, "127.0.0.2", addr)
	o.Expect("EHLO client.example.org", 250)
	o.Expect("MAIL FROM:<s@example.org>", 250)
	o.Expect("RCPT TO:<alice@example.test>", 250)
	expectRefused(t, o.Cmd("RCPT TO:<alice@example.test>"), 451, "4.7.1")
}

// TestFloodDoesNotStarveOthers: while one address floods the server with
// connections, another address is served promptly.
func TestFloodDoesNotStarveOthers(t *testing.T) {
	_, addr := start(t, rl(map[string]any{"concurrent": 5, "connections": rate(1000000, "1m")}))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var refused, served atomic.Int64
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				conn, err := abusetest.TryDialFrom("127.0.0.1", addr)
				if err != nil {
					continue
				}
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				line, _ := bufio.NewReader(conn).ReadString('\n')
				switch {
				case strings.HasPrefix(line, "421"):
					refused.Add(1)
					conn.Close()
				case strings.HasPrefix(line, "220"):
					// Hold it (like a bot) until the end of the flood.
					served.Add(1)
					go func() { <-stop; conn.Close() }()
				default:
					conn.Close()
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	var worst time.Duration
	for i := 0; i < 10; i++ {
		t0 := time.Now()
		c, g := abusetest.Greet(t, "127.0.0.2", addr)
		if g.Code != 220 {
			t.Fatalf("second client refused during the flood: %s", g)
		}
		c.Expect("EHLO client.example.org", 250)
		c.Expect("QUIT", 221)
		worst = max(worst, time.Since(t0))
		time.Sleep(50 * time.Millisecond)
	}
	// Slots free up once the flood stops: count what got in before.
	admitted := served.Load()
	close(stop)
	wg.Wait()
	t.Logf("flood: %d refused, %d admitted; worst time for the other client: %v", refused.Load(), admitted, worst)
	if refused.Load() < 10 || admitted > 5 {
		t.Fatalf("flood not limited: %d refused, %d admitted", refused.Load(), admitted)
	}
	// Generous: a loaded 2-core machine; unlimited it takes milliseconds.
	if worst > 3*time.Second {
		t.Fatalf("the other client waited %v", worst)
	}
}

func TestConfigErrors(t *testing.T) {
	env := testenv.New(t)
	addr := abusetest.Addr(t)
	for _, tc := range []struct {
		h     map[string]any
		field string
	}{
		{rl(map[string]any{"messages": rate(0, "1m")}), "messages.limit"},
		{rl(map[string]any{"recipients": map[string]any{"limit": 5}}), "recipients.window"},
		{rl(map[string]any{"concurrent": -1}), "concurrent"},
		{rl(map[string]any{"ipv4_prefix": 33}), "ipv4_prefix"},
		{rl(map[string]any{"ipv6_prefix": 129}), "ipv6_prefix"},
		{rl(map[string]any{"exempt": []string{"10.0.0.0/40"}}), "exempt[0]"},
		{rl(map[string]any{"store": map[string]any{"type": "etcd"}}), "store.type"},
		{rl(map[string]any{"store": map[string]any{"address": "x:1"}}), "store"},
		{rl(map[string]any{"store": map[string]any{"type": "redis", "address": "nope"}}), "store.address"},
		{rl(map[string]any{"zone": "a:b"}), "zone"},
	} {
		err := env.LoadErr(env.Config(abusetest.App(env, addr, []any{tc.h}), nil))
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%v: want an error naming %q, got %v", tc.h, tc.field, err)
		}
	}
}

// The Redis test runs a second instance as a child process: this test
// binary, with RATELIMIT_TEST_CHILD set to the config to load.
func TestMain(m *testing.M) {
	if cfg := os.Getenv("RATELIMIT_TEST_CHILD"); cfg != "" {
		runChild(cfg)
		return
	}
	os.Exit(m.Run())
}

func runChild(path string) {
	cfg, err := os.ReadFile(path)
	if err == nil {
		err = caddy.Load(cfg, true)
	}
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("READY")
	// Run until the parent closes our stdin.
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	_ = caddy.Stop()
	os.Exit(0)
}

func startChild(t *testing.T, cfg []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "child.json")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "RATELIMIT_TEST_CHILD="+path)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if !strings.HasPrefix(line, "READY") {
			t.Fatalf("child instance: %q", line)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("child instance did not start")
	}
}

// TestRedisSharedAcrossInstances: two Caddy processes with the Redis
// store enforce one limit together.
func TestRedisSharedAcrossInstances(t *testing.T) {
	redisAddr := redistest.Start(t)
	h := rl(map[string]any{
		"connections": rate(3, "1m"),
		"concurrent":  2,
		"store":       map[string]any{"type": "redis", "address": redisAddr, "key_prefix": "test:"},
	})
	childEnv := testenv.New(t)
	addr2 := abusetest.Addr(t)
	startChild(t, childEnv.Config(abusetest.App(childEnv, addr2, []any{h}), nil))

	env := testenv.New(t)
	addr1 := abusetest.Addr(t)
	env.Load(env.Config(abusetest.App(env, addr1, []any{h}), nil))

	// Concurrent: one open here, one there; a third anywhere is refused.
	a, g := abusetest.Greet(t, "127.0.0.1", addr1)
	if g.Code != 220 {
		t.Fatalf("first: %s", g)
	}
	if _, g := abusetest.Greet(t, "127.0.0.1", addr2); g.Code != 220 {
		t.Fatalf("second (other instance): %s", g)
	}
	if _, g := abusetest.Greet(t, "127.0.0.1", addr1); g.Code != 421 || !strings.Contains(g.Text(), "concurrent") {
		t.Fatalf("third open connection: %s", g)
	}
	// Closing one here frees a slot for the other instance (the third
	// new connection of the window), and then the rate is used up.
	a.Expect("QUIT", 221)
	a.Conn.Close()
	time.Sleep(200 * time.Millisecond)
	// The refused connection above took a connection token too: 3 used.
	if _, g := abusetest.Greet(t, "127.0.0.1", addr2); g.Code != 421 || !strings.Contains(g.Text(), "Too many connections") {
		t.Fatalf("fourth new connection (other instance): %s", g)
	}
	// A different address is counted apart, on both instances.
	if _, g := abusetest.Greet(t, "127.0.0.2", addr2); g.Code != 220 {
		t.Fatalf("other address: %s", g)
	}
	if _, g := abusetest.Greet(t, "127.0.0.2", addr1); g.Code != 220 {
		t.Fatalf("other address, this instance: %s", g)
	}
}

// TestRedisDownFailsOpen: with the store unreachable, mail flows.
func TestRedisDownFailsOpen(t *testing.T) {
	h := rl(map[string]any{
		"connections": rate(1, "1m"),
		"messages":    rate(1, "1m"),
		"store":       map[string]any{"type": "redis", "address": abusetest.Addr(t), "timeout": "200ms"},
	})
	env, addr := start(t, h)
	for i := 0; i < 2; i++ {
		c, g := abusetest.Greet(t, "127.0.0.1", addr)
		if g.Code != 220 {
			t.Fatalf("greeting with the store down: %s", g)
		}
		c.Expect("EHLO client.example.org", 250)
		if r := abusetest.Send(c, "s@example.org", []string{"alice@example.test"}, body100); r.Code != 250 {
			t.Fatalf("message with the store down: %s", r)
		}
	}
	if m := abusetest.Metric(t, env, "caddy_smtp_limit_store_errors_total"); len(m) == 0 {
		t.Error("store errors not counted")
	}
}

func TestCaddyfile(t *testing.T) {
	adapttest.Run(t, func() caddyfile.Unmarshaler { return new(ratelimit.RateLimit) },
		"ratelimit {\n messages 10\n}",
		"ratelimit {\n messages ten 1m\n}",
		"ratelimit {\n bytes 10 forever\n}",
		"ratelimit {\n nonsense 1\n}",
		"ratelimit {\n store etcd\n}",
		"ratelimit arg")
}
