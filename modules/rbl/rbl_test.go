package rbl_test

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/adapttest"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"
	"github.com/caddy-smtp/caddy-smtp/modules/rbl"
)

// zone publishes a list's RFC 5782 test entry (127.0.0.2 listed; 127.0.0.1
// is left out, so NXDOMAIN).
func zone(t *testing.T, d *testenv.DNS, name string) {
	d.Add(t, "2.0.0.127."+name+". 300 IN A 127.0.0.2")
}

// list lists a client IPv4 address in a zone with the answer code.
func list(t *testing.T, d *testenv.DNS, name, ip, code string) {
	d.Add(t, rev(ip)+"."+name+". 300 IN A "+code)
}

func rev(ip string) string {
	p := strings.Split(ip, ".")
	return p[3] + "." + p[2] + "." + p[1] + "." + p[0]
}

type setup struct {
	env  *testenv.Env
	dns  *testenv.DNS
	addr string
}

// start loads an MX whose handlers are the given rbl config; records must
// be in d already (the zones are self-tested at load).
func start(t *testing.T, d *testenv.DNS, handler map[string]any, mods ...func(app map[string]any)) *setup {
	t.Helper()
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	handler["handler"] = "rbl"
	app := testenv.SpamMXApp(env, addr, d.Addr, handler)
	for _, m := range mods {
		m(app)
	}
	env.Load(env.Config(app, nil))
	return &setup{env: env, dns: d, addr: addr}
}

func (s *setup) inbox(t *testing.T) []string {
	return testenv.Maildir(t, s.env.Path("maildir"), "example.test", "alice")
}

func (s *setup) junk(t *testing.T) []string {
	return testenv.Maildir(t, s.env.Path("maildir"), "example.test", "alice/.Junk")
}

// deliver sends one message from client address from and returns the
// reply to the end of DATA.
func (s *setup) deliver(t *testing.T, from string) testenv.Reply {
	t.Helper()
	c, greet := testenv.DialFrom(t, from, s.addr)
	if greet.Code != 220 {
		t.Fatalf("greeting: %s", greet)
	}
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage("sender@example.org", "alice@example.test")
	c.Send("From: sender@example.org\r\nTo: alice@example.test\r\nSubject: test\r\n\r\nhello\r\n.\r\n")
	r := c.Read()
	c.Cmd("QUIT")
	return r
}

func readOne(t *testing.T, files []string, where string) string {
	t.Helper()
	if len(files) != 1 {
		t.Fatalf("%s: want 1 message, got %d", where, len(files))
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestListedClientRefusedAtRcpt(t *testing.T) {
	d := testenv.StartDNS(t)
	zone(t, d, "bl.test")
	list(t, d, "bl.test", "127.0.0.10", "127.0.0.2")
	d.Add(t, `10.0.0.127.bl.test. 300 IN TXT "Listed\001\010 see\009bl.test/q?127.0.0.10"`)
	s := start(t, d, map[string]any{"zones": []any{map[string]any{"name": "bl.test", "action": "reject"}}})

	c, _ := testenv.DialFrom(t, "127.0.0.10", s.addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	r := c.Cmd("RCPT TO:<alice@example.test>")
	if r.Code != 554 || !strings.HasPrefix(r.Text(), "5.7.1") {
		t.Fatalf("RCPT from a listed client: want 554 5.7.1, got %s", r)
	}
	want := "Service unavailable; client [127.0.0.10] blocked using bl.test; Listed see bl.test/q?127.0.0.10"
	if !strings.Contains(r.Text(), want) {
		t.Fatalf("reply %q lacks %q", r.Text(), want)
	}
	for _, ch := range r.Text() {
		if ch < 0x20 || ch > 0x7e {
			t.Fatalf("reply has a control or non-ASCII character %q: %q", ch, r.Text())
		}
	}

	// A client that is not listed gets through.
	if r := s.deliver(t, "127.0.0.11"); r.Code != 250 {
		t.Fatalf("unlisted client: %s", r)
	}
	if got := readOne(t, s.inbox(t), "inbox"); strings.Contains(got, "X-Spam") {
		t.Fatalf("unlisted client's message has spam headers:\n%s", got)
	}
}

func TestListedClientScored(t *testing.T) {
	d := testenv.StartDNS(t)
	zone(t, d, "bl.test")
	list(t, d, "bl.test", "127.0.0.12", "127.0.0.2")
	s := start(t, d, map[string]any{"zones": []any{map[string]any{"name": "bl.test", "weight": 6}}})
	if r := s.deliver(t, "127.0.0.12"); r.Code != 250 {
		t.Fatalf("scored client: %s", r)
	}
	got := readOne(t, s.junk(t), "Junk")
	for _, want := range []string{"X-Spam-Score: 6.0", "X-Spam-Status: Yes, score=6.0", "rbl(+6.0): 127.0.0.12 listed in bl.test (127.0.0.2)"} {
		if !strings.Contains(got, want) {
			t.Errorf("message lacks %q:\n%s", want, got)
		}
	}
	if n := len(s.inbox(t)); n != 0 {
		t.Errorf("inbox has %d messages, want 0", n)
	}
}

// Two lists, weights and codes add up: over the tag threshold the
// message is filed in Junk with its headers; over the reject threshold
// it is refused at the end of DATA and nothing is stored.
func TestWeightsAddUp(t *testing.T) {
	d := testenv.StartDNS(t)
	zone(t, d, "one.test")
	zone(t, d, "two.test")
	list(t, d, "one.test", "127.0.0.20", "127.0.0.2") // only in one: 3
	list(t, d, "one.test", "127.0.0.21", "127.0.0.2") // in both: 3 + 3
	list(t, d, "two.test", "127.0.0.21", "127.0.0.2")
	list(t, d, "one.test", "127.0.0.22", "127.0.0.2") // in both, code 127.0.0.4 and 127.0.0.10: 3 + 4 + 5
	list(t, d, "two.test", "127.0.0.22", "127.0.0.4")
	list(t, d, "two.test", "127.0.0.22", "127.0.0.10")
	s := start(t, d, map[string]any{"zones": []any{
		map[string]any{"name": "one.test", "weight": 3},
		map[string]any{"name": "two.test", "weight": 3, "codes": map[string]float64{"127.0.0.4": 4, "127.0.0.8/29": 5}},
	}})

	if r := s.deliver(t, "127.0.0.20"); r.Code != 250 {
		t.Fatalf("client in one list: %s", r)
	}
	got := readOne(t, s.inbox(t), "inbox")
	if !strings.Contains(got, "X-Spam-Status: No, score=3.0") {
		t.Fatalf("client in one list: want score 3 in the inbox:\n%s", got)
	}

	if r := s.deliver(t, "127.0.0.21"); r.Code != 250 {
		t.Fatalf("client in two lists: %s", r)
	}
	got = readOne(t, s.junk(t), "Junk")
	for _, want := range []string{"X-Spam-Score: 6.0\r\n", "X-Spam-Status: Yes, score=6.0 tag=5.0 reject=10.0",
		"rbl(+3.0): 127.0.0.21 listed in one.test (127.0.0.2)", "rbl(+3.0): 127.0.0.21 listed in two.test (127.0.0.2)"} {
		if !strings.Contains(got, want) {
			t.Errorf("junk message lacks %q:\n%s", want, got)
		}
	}

	r := s.deliver(t, "127.0.0.22")
	if r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.1") {
		t.Fatalf("client scoring 12: want 550 5.7.1 at end of DATA, got %s", r)
	}
	if n, j := len(s.inbox(t)), len(s.junk(t)); n != 1 || j != 1 {
		t.Fatalf("a refused message was stored: inbox %d, junk %d", n, j)
	}
}

func TestRejectThreshold(t *testing.T) {
	d := testenv.StartDNS(t)
	zone(t, d, "one.test")
	zone(t, d, "two.test")
	list(t, d, "one.test", "127.0.0.23", "127.0.0.2")
	list(t, d, "two.test", "127.0.0.23", "127.0.0.2")
	list(t, d, "one.test", "127.0.0.24", "127.0.0.2")
	s := start(t, d, map[string]any{"reject_threshold": 4, "zones": []any{
		map[string]any{"name": "one.test", "weight": 2},
		map[string]any{"name": "two.test", "weight": 2},
	}})
	c, _ := testenv.DialFrom(t, "127.0.0.23", s.addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	if r := c.Cmd("RCPT TO:<alice@example.test>"); r.Code != 554 || !strings.Contains(r.Text(), "blocked using one.test, two.test") {
		t.Fatalf("client over the module's threshold: %s", r)
	}
	if r := s.deliver(t, "127.0.0.24"); r.Code != 250 {
		t.Fatalf("client under the module's threshold: %s", r)
	}
}

func TestAllowlistOffsetsListing(t *testing.T) {
	d := testenv.StartDNS(t)
	zone(t, d, "bl.test")
	zone(t, d, "wl.test")
	list(t, d, "bl.test", "127.0.0.30", "127.0.0.2")
	list(t, d, "wl.test", "127.0.0.30", "127.0.0.2")
	list(t, d, "bl.test", "127.0.0.31", "127.0.0.2")
	list(t, d, "wl.test", "127.0.0.31", "127.0.0.2")
	list(t, d, "sc.test", "127.0.0.31", "127.0.0.2")
	zone(t, d, "sc.test")
	s := start(t, d, map[string]any{"zones": []any{
		map[string]any{"name": "bl.test", "action": "reject", "weight": 6},
		map[string]any{"name": "sc.test", "weight": 6},
		map[string]any{"name": "wl.test", "allowlist": true, "weight": 6},
	}})
	// Listed in a rejecting list and an allow list: not refused, offset.
	if r := s.deliver(t, "127.0.0.30"); r.Code != 250 {
		t.Fatalf("allowlisted client: %s", r)
	}
	got := readOne(t, s.inbox(t), "inbox")
	for _, want := range []string{"X-Spam-Status: No, score=0.0", "rbl(+6.0): 127.0.0.30 listed in bl.test", "rbl(-6.0): 127.0.0.30 allowlisted by wl.test"} {
		if !strings.Contains(got, want) {
			t.Errorf("message lacks %q:\n%s", want, got)
		}
	}
	// Two listings of 6, one allowlisting of 6: 6, tagged.
	if r := s.deliver(t, "127.0.0.31"); r.Code != 250 {
		t.Fatalf("allowlisted client in two lists: %s", r)
	}
	if got := readOne(t, s.junk(t), "Junk"); !strings.Contains(got, "score=6.0") {
		t.Errorf("want score 6:\n%s", got)
	}
}

// A list that answers an error code, times out, fails (SERVFAIL) or fails
// its self-test never causes a refusal, even with action reject.
func TestBrokenListsNeverReject(t *testing.T) {
	d := testenv.StartDNS(t)
	const ip = "127.0.0.40"
	for _, z := range []string{"good.test", "errcode.test", "slow.test", "servfail.test", "all.test"} {
		zone(t, d, z)
	}
	list(t, d, "good.test", ip, "127.0.0.2")
	list(t, d, "errcode.test", ip, "127.255.255.254")
	list(t, d, "slow.test", ip, "127.0.0.2")
	d.Delay(rev(ip)+".slow.test", 700*time.Millisecond)
	list(t, d, "servfail.test", ip, "127.0.0.2")
	d.Fail(rev(ip)+".servfail.test", dns.RcodeServerFailure)
	// all.test lists everyone, its 127.0.0.1 test entry too.
	list(t, d, "all.test", ip, "127.0.0.2")
	d.Add(t, "1.0.0.127.all.test. 300 IN A 127.0.0.2")
	// none.test lists nobody, not even its 127.0.0.2 test entry.
	list(t, d, "none.test", ip, "127.0.0.2")

	zones := []any{map[string]any{"name": "good.test", "weight": 1}}
	for _, z := range []string{"errcode.test", "slow.test", "servfail.test", "all.test", "none.test"} {
		zones = append(zones, map[string]any{"name": z, "action": "reject", "weight": 20, "timeout": "200ms"})
	}
	s := start(t, d, map[string]any{"zones": zones})
	if r := s.deliver(t, ip); r.Code != 250 {
		t.Fatalf("broken lists refused a client: %s", r)
	}
	got := readOne(t, s.inbox(t), "inbox")
	if !strings.Contains(got, "X-Spam-Status: No, score=1.0") || !strings.Contains(got, "listed in good.test") {
		t.Fatalf("want only good.test's point:\n%s", got)
	}
}

func TestAuthenticatedNotChecked(t *testing.T) {
	d := testenv.StartDNS(t)
	zone(t, d, "bl.test")
	list(t, d, "bl.test", "127.0.0.50", "127.0.0.2")
	s := start(t, d, map[string]any{"zones": []any{map[string]any{"name": "bl.test", "action": "reject"}}},
		func(app map[string]any) {
			srv := app["servers"].(map[string]any)["mx"].(map[string]any)
			srv["tls"] = map[string]any{"issuer": "internal"}
			app["accounts"] = map[string]any{"provider": "static", "accounts": []any{map[string]any{
				"address": "alice@example.test", "password": "$2a$10$6jgH4C347SKTxHE7VlXyvelsUdMGEQ3kgJM74mhrsF2/2Cq.BILyG", // demo-alice
			}}}
		})
	if !testenv.WaitFor(10*time.Second, func() bool {
		_, err := os.Stat(s.env.Path("caddy", "pki", "authorities", "local", "root.crt"))
		return err == nil
	}) {
		t.Fatal("no internal CA")
	}
	tlsConfig := &tls.Config{RootCAs: s.env.RootCAs(), ServerName: "mail.example.test"}
	testenv.WaitForCertificate(t, s.addr, tlsConfig) // issued and in use
	c, _ := testenv.DialFrom(t, "127.0.0.50", s.addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartTLS(tlsConfig)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00alice@example.test\x00demo-alice")), 235)
	c.Expect("MAIL FROM:<alice@example.test>", 250)
	c.Expect("RCPT TO:<alice@example.test>", 250)

	// The same client without AUTH is refused.
	c2, _ := testenv.DialFrom(t, "127.0.0.50", s.addr)
	c2.Expect("EHLO client.example.org", 250)
	c2.Expect("MAIL FROM:<sender@example.org>", 250)
	c2.Expect("RCPT TO:<alice@example.test>", 554)
}

// IPv6 clients are looked up by nibbles (RFC 5782 2.4).
func TestIPv6Client(t *testing.T) {
	d := testenv.StartDNS(t)
	zone(t, d, "bl.test")
	rev6, err := dns.ReverseAddr("::1")
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimSuffix(rev6, "ip6.arpa.") + "bl.test."
	d.Add(t, name+" 300 IN A 127.0.0.2")
	env := testenv.New(t)
	addr := fmt.Sprintf("[::1]:%d", testenv.FreePort(t))
	app := testenv.SpamMXApp(env, addr, d.Addr, map[string]any{"handler": "rbl", "zones": []any{map[string]any{"name": "bl.test", "action": "reject"}}})
	if err := env.LoadErr(env.Config(app, nil)); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	c, _ := testenv.DialFrom(t, "::1", addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	if r := c.Cmd("RCPT TO:<alice@example.test>"); r.Code != 554 || !strings.Contains(r.Text(), "client [::1] blocked using bl.test") {
		t.Fatalf("IPv6 client listed by nibbles: %s", r)
	}
}

// A second connection from the same address is answered from the cache.
func TestAnswersCached(t *testing.T) {
	d := testenv.StartDNS(t)
	zone(t, d, "bl.test")
	zone(t, d, "bl2.test")
	list(t, d, "bl.test", "127.0.0.60", "127.0.0.2")
	s := start(t, d, map[string]any{"zones": []any{map[string]any{"name": "bl.test"}, map[string]any{"name": "bl2.test"}}})
	if r := s.deliver(t, "127.0.0.60"); r.Code != 250 {
		t.Fatal(r)
	}
	before := d.Queries.Load()
	if r := s.deliver(t, "127.0.0.60"); r.Code != 250 {
		t.Fatal(r)
	}
	if after := d.Queries.Load(); after != before {
		t.Fatalf("second connection sent %d DNS queries, want 0 (cached)", after-before)
	}
	// Both messages got the listing (from the cache the second time).
	for _, f := range s.inbox(t) {
		b, _ := os.ReadFile(f)
		if !strings.Contains(string(b), "listed in bl.test") {
			t.Errorf("message lacks the listing:\n%s", b)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	d := testenv.StartDNS(t)
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	for _, tc := range []struct {
		handler map[string]any
		want    string
	}{
		{map[string]any{}, "zones: at least one zone"},
		{map[string]any{"zones": []any{map[string]any{"name": "ok.test"}, map[string]any{"name": ""}}}, "zones[1].name: "},
		{map[string]any{"zones": []any{map[string]any{"name": "bad name"}}}, "zones[0].name: "},
		{map[string]any{"zones": []any{map[string]any{"name": "a.test", "action": "drop"}}}, "zones[0].action: "},
		{map[string]any{"zones": []any{map[string]any{"name": "a.test", "allowlist": true, "action": "reject"}}}, "zones[0].action: an allowlist zone cannot reject"},
		{map[string]any{"zones": []any{map[string]any{"name": "a.test", "codes": map[string]float64{"x": 1}}}}, "zones[0].codes: "},
		{map[string]any{"zones": []any{map[string]any{"name": "a.test", "listed": []string{"127.0.0.0/33"}}}}, "zones[0].listed[0]: "},
		{map[string]any{"zones": []any{map[string]any{"name": "a.test", "weight": -1}}}, "zones[0].weight: "},
		{map[string]any{"zones": []any{map[string]any{"name": "a.test"}, map[string]any{"name": "A.test."}}}, "zones[1].name: a.test is also zones[0]"},
		{map[string]any{"skip_networks": []string{"nope"}, "zones": []any{map[string]any{"name": "a.test"}}}, "skip_networks[0]: "},
	} {
		tc.handler["handler"] = "rbl"
		err := env.LoadErr(env.Config(testenv.SpamMXApp(env, addr, d.Addr, tc.handler), nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want error with %q, got %v", tc.handler, tc.want, err)
		}
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	adapttest.Run(t, func() caddyfile.Unmarshaler { return new(rbl.RBL) },
		"rbl {\n zone\n}",
		"rbl {\n zone a.test maybe\n}",
		"rbl {\n bogus 1\n}",
		"rbl {\n zone a.test {\n self_test perhaps\n }\n}")
}

// The cache and the zones' health survive a config reload: a reloaded
// config asks the DNS nothing it already knows, and does not test the
// zones again.
func TestCacheSurvivesReload(t *testing.T) {
	d := testenv.StartDNS(t)
	zone(t, d, "bl.test")
	list(t, d, "bl.test", "127.0.0.61", "127.0.0.2")
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	handler := map[string]any{"handler": "rbl", "zones": []any{map[string]any{"name": "bl.test", "weight": 2}}}
	app := testenv.SpamMXApp(env, addr, d.Addr, handler)
	env.Load(env.Config(app, nil))
	s := &setup{env: env, dns: d, addr: addr}
	if r := s.deliver(t, "127.0.0.61"); r.Code != 250 {
		t.Fatal(r)
	}
	before := d.Queries.Load()
	app["servers"].(map[string]any)["mx"].(map[string]any)["spam"] = map[string]any{"tag_score": 1, "reject_score": 10}
	env.Load(env.Config(app, nil))
	if r := s.deliver(t, "127.0.0.61"); r.Code != 250 {
		t.Fatal(r)
	}
	if after := d.Queries.Load(); after != before {
		t.Fatalf("after a reload: %d DNS queries, want 0 (cache and self-test kept)", after-before)
	}
	// The new config's thresholds apply: 2 points are now over the tag.
	if got := readOne(t, s.junk(t), "Junk"); !strings.Contains(got, "listed in bl.test") {
		t.Fatalf("want the cached listing:\n%s", got)
	}
}

var metricsRuns int

// The decisions are counted in the metrics that Caddy's admin API serves.
func TestMetrics(t *testing.T) {
	// The counters are process-wide: a zone name of its own for each run.
	metricsRuns++
	zn := fmt.Sprintf("run%d.metrics.test", metricsRuns)
	d := testenv.StartDNS(t)
	zone(t, d, zn)
	list(t, d, zn, "127.0.0.62", "127.0.0.2")
	s := start(t, d, map[string]any{"zones": []any{map[string]any{"name": zn, "action": "reject"}}})
	c, _ := testenv.DialFrom(t, "127.0.0.62", s.addr)
	c.Expect("EHLO client.example.org", 250)
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	c.Expect("RCPT TO:<alice@example.test>", 554)
	resp, err := http.Get("http://" + s.env.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, w := range []string{
		`caddy_smtp_rbl_checks_total{result="listed",zone="metrics.test"} 1`,
		`caddy_smtp_rbl_rejections_total{zone="metrics.test"} 1`,
		`caddy_smtp_rbl_zone_up{zone="metrics.test"} 1`,
		`caddy_smtp_rbl_self_tests_total{result="pass",zone="metrics.test"} 1`,
		`caddy_smtp_rbl_queries_total{result="listed",zone="metrics.test"} 1`,
	} {
		w = strings.Replace(w, "metrics.test", zn, 1)
		if !strings.Contains(string(body), w) {
			t.Errorf("metrics lack %s", w)
		}
	}
}
