package helo_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	"github.com/caddy-smtp/caddy-smtp/modules/helo"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/adapttest"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"
)

type setup struct {
	env  *testenv.Env
	dns  *testenv.DNS
	addr string
}

func start(t *testing.T, handler map[string]any) *setup {
	t.Helper()
	d := testenv.StartDNS(t)
	d.Add(t,
		// 127.0.0.7: forward-confirmed.
		"7.0.0.127.in-addr.arpa. 300 IN PTR good.client.test.",
		"good.client.test. 300 IN A 127.0.0.7",
		// 127.0.0.8: its PTR name points elsewhere.
		"8.0.0.127.in-addr.arpa. 300 IN PTR liar.client.test.",
		"liar.client.test. 300 IN A 192.0.2.8",
		// Sender domains.
		"mx.test. 300 IN MX 10 mail.mx.test.",
		"aonly.test. 300 IN A 192.0.2.1",
		"nullmx.test. 300 IN MX 0 .",
	)
	d.Fail("servfail.test", dns.RcodeServerFailure)
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	handler["handler"] = "helo"
	env.Load(env.Config(testenv.SpamMXApp(env, addr, d.Addr, handler), nil))
	return &setup{env: env, dns: d, addr: addr}
}

// rcpt runs EHLO, MAIL and RCPT from client address ip and returns the
// client and the RCPT reply.
func (s *setup) rcpt(t *testing.T, ip, heloName, from string) (*testenv.Client, testenv.Reply) {
	t.Helper()
	c, _ := testenv.DialFrom(t, ip, s.addr)
	c.Expect("EHLO "+heloName, 250)
	c.Expect("MAIL FROM:<"+from+">", 250)
	return c, c.Cmd("RCPT TO:<alice@example.test>")
}

// deliver finishes a transaction and returns the stored message.
func (s *setup) deliver(t *testing.T, c *testenv.Client, r testenv.Reply, folder string) string {
	t.Helper()
	if r.Code != 250 {
		t.Fatalf("RCPT: %s", r)
	}
	c.Expect("DATA", 354)
	c.Send("From: x@example.org\r\nSubject: helo\r\n\r\nhi\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("end of DATA: %s", r)
	}
	files := testenv.Maildir(t, s.env.Path("maildir"), "example.test", folder)
	if len(files) != 1 {
		t.Fatalf("%s: want 1 message, got %d", folder, len(files))
	}
	b, _ := os.ReadFile(files[0])
	os.Remove(files[0])
	return string(b)
}

func want(t *testing.T, got string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(got, p) {
			t.Errorf("lacks %q:\n%s", p, got)
		}
	}
}

func TestForgedHelo(t *testing.T) {
	s := start(t, map[string]any{})
	for _, name := range []string{"mail.example.test", "MAIL.example.test.", "example.test", "[127.0.0.1]", "127.0.0.1"} {
		_, r := s.rcpt(t, "127.0.0.7", name, "x@mx.test")
		if r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.1") || !strings.Contains(r.Text(), "claims to be this server") {
			t.Errorf("HELO %s: want 550 5.7.1, got %s", name, r)
		}
	}
	// An honest client with forward-confirmed reverse DNS: nothing to say.
	c, r := s.rcpt(t, "127.0.0.7", "good.client.test", "x@mx.test")
	got := s.deliver(t, c, r, "alice")
	if strings.Contains(got, "X-Spam") {
		t.Errorf("honest client scored:\n%s", got)
	}
	want(t, got, "Authentication-Results: mail.example.test;\r\n\tiprev=pass policy.iprev=127.0.0.7 (good.client.test)\r\n")
}

func TestReverseDNS(t *testing.T) {
	s := start(t, map[string]any{
		"no_rdns":       map[string]any{"score": 6},
		"rdns_mismatch": map[string]any{"action": "reject"},
	})
	// No PTR: scored into Junk.
	c, r := s.rcpt(t, "127.0.0.6", "client.example.org", "x@mx.test")
	got := s.deliver(t, c, r, "alice/.Junk")
	want(t, got, "helo(+6.0): client 127.0.0.6 has no reverse DNS", "iprev=permerror policy.iprev=127.0.0.6")
	// A PTR that does not resolve back: refused.
	_, r = s.rcpt(t, "127.0.0.8", "liar.client.test", "x@mx.test")
	if r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.25") {
		t.Fatalf("rDNS mismatch: want 550 5.7.25, got %s", r)
	}
}

func TestHeloSyntax(t *testing.T) {
	s := start(t, map[string]any{"invalid_syntax": map[string]any{"score": 3}, "not_fqdn": map[string]any{"score": 2.5}})
	for _, tc := range []struct{ name, reason string }{
		{"192.0.2.9", `helo(+3.0): HELO "192.0.2.9" is not a host name or address literal`},
		{"bad_name..test", `helo(+3.0): HELO "bad_name..test" is not a host name`},
		{"[300.1.1.1]", `helo(+3.0): HELO "[300.1.1.1]" is not a host name`},
		{"localhost", `helo(+2.5): HELO "localhost" is not fully qualified`},
	} {
		c, r := s.rcpt(t, "127.0.0.7", tc.name, "x@mx.test")
		want(t, s.deliver(t, c, r, "alice"), tc.reason)
	}
	for _, ok := range []string{"[192.0.2.9]", "[IPv6:2001:db8::1]", "good.client.test"} {
		c, r := s.rcpt(t, "127.0.0.7", ok, "x@mx.test")
		if got := s.deliver(t, c, r, "alice"); strings.Contains(got, "X-Spam") {
			t.Errorf("HELO %s scored:\n%s", ok, got)
		}
	}
}

func TestSenderDomain(t *testing.T) {
	s := start(t, map[string]any{"unknown_sender_domain": map[string]any{"action": "reject"}})
	_, r := s.rcpt(t, "127.0.0.7", "good.client.test", "x@nowhere.test")
	if r.Code != 550 || !strings.HasPrefix(r.Text(), "5.1.8") {
		t.Errorf("sender domain without records: want 550 5.1.8, got %s", r)
	}
	_, r = s.rcpt(t, "127.0.0.7", "good.client.test", "x@nullmx.test")
	if r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.27") {
		t.Errorf("sender domain with a null MX: want 550 5.7.27, got %s", r)
	}
	for _, from := range []string{"x@mx.test", "x@aonly.test", "x@servfail.test", ""} {
		c, r := s.rcpt(t, "127.0.0.7", "good.client.test", from)
		s.deliver(t, c, r, "alice")
	}
}

func TestHeloConfigErrors(t *testing.T) {
	d := testenv.StartDNS(t)
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	for _, tc := range []struct {
		handler map[string]any
		want    string
	}{
		{map[string]any{"forged": map[string]any{"action": "defer"}}, "forged.action: "},
		{map[string]any{"own_names": []string{"ok.test", "not a name"}}, "own_names[1]: "},
		{map[string]any{"own_addresses": []string{"x"}}, "own_addresses[0]: "},
	} {
		tc.handler["handler"] = "helo"
		err := env.LoadErr(env.Config(testenv.SpamMXApp(env, addr, d.Addr, tc.handler), nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want error with %q, got %v", tc.handler, tc.want, err)
		}
	}
}

func TestHeloUnmarshalCaddyfile(t *testing.T) {
	adapttest.Run(t, func() caddyfile.Unmarshaler { return new(helo.HELO) },
		"helo {\n forged maybe\n}",
		"helo {\n nope\n}",
		"helo {\n own_names\n}")
}

// One session gets at most max_domains_per_session sender domains looked
// up: a domain looked up already costs no DNS query, a new one beyond the
// limit is deferred (451 4.7.1) without a query, and a new session starts
// afresh.
func TestSenderDomainsPerSessionBounded(t *testing.T) {
	s := start(t, map[string]any{"max_domains_per_session": 2, "unknown_sender_domain": map[string]any{"action": "reject"}})
	c, _ := testenv.DialFrom(t, "127.0.0.7", s.addr)
	c.Expect("EHLO good.client.test", 250)
	c.Expect("MAIL FROM:<a@mx.test>", 250)
	c.Expect("RSET", 250)
	c.Expect("MAIL FROM:<b@nowhere.test>", 250)
	if r := c.Cmd("RCPT TO:<alice@example.test>"); r.Code != 550 {
		t.Errorf("unknown domain: want 550 at RCPT, got %s", r)
	}
	c.Expect("RSET", 250)
	before := s.dns.Queries.Load()
	if r := c.Cmd("MAIL FROM:<c@aonly.test>"); r.Code != 451 || r.Text() != "4.7.1 Too many sender domains in one session, try again later" {
		t.Errorf("a third domain: want 451 4.7.1 Too many sender domains..., got %s", r)
	}
	c.Expect("MAIL FROM:<d@MX.test>", 250) // a domain of the session's
	if n := s.dns.Queries.Load() - before; n != 0 {
		t.Errorf("%d DNS queries, want 0", n)
	}
	c.Expect("RCPT TO:<alice@example.test>", 250)
	c2, r := s.rcpt(t, "127.0.0.7", "good.client.test", "c@aonly.test")
	s.deliver(t, c2, r, "alice")
}
