package spf_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/miekg/dns"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/adapttest"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"
	"github.com/caddy-smtp/caddy-smtp/modules/spf"
)

type setup struct {
	env  *testenv.Env
	addr string
}

func start(t *testing.T, d *testenv.DNS, handler map[string]any) *setup {
	t.Helper()
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	handler["handler"] = "spf"
	env.Load(env.Config(testenv.SpamMXApp(env, addr, d.Addr, handler), nil))
	return &setup{env: env, addr: addr}
}

// records publishes SPF records for the test domains: 127.0.0.2 is the
// only authorized client.
func records(t *testing.T, d *testenv.DNS) {
	d.Add(t,
		`pass.test. 300 IN TXT "v=spf1 ip4:127.0.0.2 -all"`,
		`soft.test. 300 IN TXT "v=spf1 ip4:127.0.0.2 ~all"`,
		`neutral.test. 300 IN TXT "v=spf1 ip4:127.0.0.2 ?all"`,
		`broken.test. 300 IN TXT "v=spf1 bogus:x ip4:127.0.0.2 -all"`,
		`nospf.test. 300 IN TXT "some other record"`,
		`helo.test. 300 IN TXT "v=spf1 a -all"`,
		`helo.test. 300 IN A 127.0.0.2`,
		// The record in two strings, as long records are published.
		`split.test. 300 IN TXT "v=spf1 ip4:127.0.0.9 " "ip4:127.0.0.2 -all"`,
	)
	d.Fail("tempfail.test", dns.RcodeServerFailure)
}

// transaction runs EHLO and MAIL from client address ip; it returns the
// client and the MAIL reply.
func (s *setup) mail(t *testing.T, ip, helo, from string) (*testenv.Client, testenv.Reply) {
	t.Helper()
	c, _ := testenv.DialFrom(t, ip, s.addr)
	c.Expect("EHLO "+helo, 250)
	return c, c.Cmd("MAIL FROM:<" + from + ">")
}

func (s *setup) finish(t *testing.T, c *testenv.Client) {
	t.Helper()
	c.Expect("RCPT TO:<alice@example.test>", 250)
	c.Expect("DATA", 354)
	c.Send("From: someone@example.org\r\nSubject: spf\r\n\r\nhello\r\n.\r\n")
	if r := c.Read(); r.Code != 250 {
		t.Fatalf("end of data: %s", r)
	}
	c.Cmd("QUIT")
}

// newest returns the only message in folder (alice, or alice/.Junk) and
// removes it.
func (s *setup) take(t *testing.T, folder string) string {
	t.Helper()
	files := testenv.Maildir(t, s.env.Path("maildir"), "example.test", folder)
	if len(files) != 1 {
		t.Fatalf("%s: want 1 message, got %d", folder, len(files))
	}
	b, _ := os.ReadFile(files[0])
	os.Remove(files[0])
	return string(b)
}

func TestSPFOutcomes(t *testing.T) {
	d := testenv.StartDNS(t)
	records(t, d)
	s := start(t, d, map[string]any{
		"pass":     map[string]any{"score": -1},
		"fail":     map[string]any{"action": "reject"},
		"softfail": map[string]any{"score": 6},
	})

	// pass: accepted, with a Received-SPF field and 1 point off.
	c, r := s.mail(t, "127.0.0.2", "client.pass.test", "sender@pass.test")
	if r.Code != 250 {
		t.Fatalf("SPF pass: %s", r)
	}
	s.finish(t, c)
	got := s.take(t, "alice")
	for _, want := range []string{
		"Received-SPF: pass (mail.example.test: domain of sender@pass.test designates 127.0.0.2 as permitted sender)\r\n\tclient-ip=127.0.0.2; envelope-from=\"sender@pass.test\"; helo=client.pass.test;\r\n\treceiver=mail.example.test; identity=mailfrom;\r\n",
		"X-Spam-Status: No, score=-1.0", "spf(-1.0): SPF pass for mailfrom pass.test",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("SPF pass: message lacks %q:\n%s", want, got)
		}
	}

	// fail: MAIL refused.
	_, r = s.mail(t, "127.0.0.3", "client.example.org", "sender@pass.test")
	if r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.23") || !strings.Contains(r.Text(), "does not designate 127.0.0.3") {
		t.Fatalf("SPF fail: want 550 5.7.23, got %s", r)
	}

	// softfail: accepted, scored over the tag threshold: Junk.
	c, r = s.mail(t, "127.0.0.3", "client.example.org", "sender@soft.test")
	if r.Code != 250 {
		t.Fatalf("SPF softfail: %s", r)
	}
	s.finish(t, c)
	got = s.take(t, "alice/.Junk")
	for _, want := range []string{"Received-SPF: softfail ", "X-Spam-Status: Yes, score=6.0", "spf(+6.0): SPF softfail for mailfrom soft.test"} {
		if !strings.Contains(got, want) {
			t.Errorf("SPF softfail: message lacks %q:\n%s", want, got)
		}
	}

	// The default outcomes: neutral 0, none 0.5, permerror 1, temperror 0.
	for _, tc := range []struct{ ip, from, result, score string }{
		{"127.0.0.3", "x@neutral.test", "neutral", ""},
		{"127.0.0.3", "x@nospf.test", "none", "score=0.5"},
		{"127.0.0.3", "x@nxdomain.test", "none", "score=0.5"},
		{"127.0.0.3", "x@broken.test", "permerror", "score=1.0"},
		{"127.0.0.3", "x@tempfail.test", "temperror", ""},
		{"127.0.0.2", "x@split.test", "pass", "score=-1.0"},
	} {
		c, r := s.mail(t, tc.ip, "client.example.org", tc.from)
		if r.Code != 250 {
			t.Fatalf("%s: %s", tc.from, r)
		}
		s.finish(t, c)
		got := s.take(t, "alice")
		if !strings.Contains(got, "Received-SPF: "+tc.result+" ") {
			t.Errorf("%s: want Received-SPF %s:\n%s", tc.from, tc.result, got)
		}
		if tc.score == "" && strings.Contains(got, "X-Spam-Status") || tc.score != "" && !strings.Contains(got, tc.score) {
			t.Errorf("%s: want score %q:\n%s", tc.from, tc.score, got)
		}
	}
}

// The null sender is checked with the HELO name.
func TestSPFNullSenderUsesHelo(t *testing.T) {
	d := testenv.StartDNS(t)
	records(t, d)
	s := start(t, d, map[string]any{"fail": map[string]any{"action": "reject"}})
	c, r := s.mail(t, "127.0.0.2", "helo.test", "")
	if r.Code != 250 {
		t.Fatalf("null sender, authorized HELO: %s", r)
	}
	s.finish(t, c)
	if got := s.take(t, "alice"); !strings.Contains(got, "Received-SPF: pass (mail.example.test: domain of helo.test designates 127.0.0.2 as permitted sender)") ||
		!strings.Contains(got, "identity=helo;") || !strings.Contains(got, `envelope-from="";`) {
		t.Errorf("null sender: want a pass for the HELO identity:\n%s", got)
	}
	if _, r := s.mail(t, "127.0.0.3", "helo.test", ""); r.Code != 550 {
		t.Fatalf("null sender, HELO not authorized: want 550, got %s", r)
	}
	// An address literal: nothing to check (none).
	c, r = s.mail(t, "127.0.0.3", "[127.0.0.3]", "")
	if r.Code != 250 {
		t.Fatalf("null sender, address literal: %s", r)
	}
	s.finish(t, c)
	if got := s.take(t, "alice"); !strings.Contains(got, "Received-SPF: none ") {
		t.Errorf("address literal: want none:\n%s", got)
	}
}

// A DNS failure can defer (4xx), never refuse for good.
func TestSPFTempErrorDefers(t *testing.T) {
	d := testenv.StartDNS(t)
	records(t, d)
	s := start(t, d, map[string]any{"temperror": map[string]any{"action": "defer"}})
	if _, r := s.mail(t, "127.0.0.2", "client.example.org", "x@tempfail.test"); r.Code != 451 || !strings.HasPrefix(r.Text(), "4.7.24") {
		t.Fatalf("temperror with defer: want 451 4.7.24, got %s", r)
	}
}

func TestSPFConfigErrors(t *testing.T) {
	d := testenv.StartDNS(t)
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	for _, tc := range []struct {
		handler map[string]any
		want    string
	}{
		{map[string]any{"temperror": map[string]any{"action": "reject"}}, "temperror.action: "},
		{map[string]any{"softfail": map[string]any{"action": "drop"}}, "softfail.action: "},
		{map[string]any{"timeout": "-1s"}, "timeout: "},
	} {
		tc.handler["handler"] = "spf"
		err := env.LoadErr(env.Config(testenv.SpamMXApp(env, addr, d.Addr, tc.handler), nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want error with %q, got %v", tc.handler, tc.want, err)
		}
	}
}

func TestSPFUnmarshalCaddyfile(t *testing.T) {
	adapttest.Run(t, func() caddyfile.Unmarshaler { return new(spf.SPF) },
		"spf {\n fail maybe\n}",
		"spf {\n bogus 1\n}",
		"spf {\n fail\n}",
		"spf {\n header perhaps\n}")
}

// One session gets at most max_domains_per_session sender domains
// checked: a sender checked already costs no DNS query, a new domain
// beyond the limit is deferred (451 4.7.1) without a query, and a new
// session starts afresh.
func TestSPFDomainsPerSessionBounded(t *testing.T) {
	d := testenv.StartDNS(t)
	records(t, d)
	s := start(t, d, map[string]any{"max_domains_per_session": 3})
	c, r := s.mail(t, "127.0.0.2", "client.example.org", "a@pass.test")
	if r.Code != 250 {
		t.Fatalf("first domain: %s", r)
	}
	c.Expect("RSET", 250)
	before := d.Queries.Load()
	c.Expect("MAIL FROM:<a@pass.test>", 250)
	if n := d.Queries.Load() - before; n != 0 {
		t.Errorf("the same sender again: %d DNS queries, want 0", n)
	}
	for _, from := range []string{"b@soft.test", "c@neutral.test", "other@pass.test"} {
		c.Expect("RSET", 250)
		c.Expect("MAIL FROM:<"+from+">", 250)
	}
	c.Expect("RSET", 250)
	before = d.Queries.Load()
	r = c.Cmd("MAIL FROM:<d@nospf.test>")
	if r.Code != 451 || r.Text() != "4.7.1 Too many sender domains in one session, try again later" {
		t.Errorf("a fourth domain: want 451 4.7.1 Too many sender domains..., got %s", r)
	}
	if n := d.Queries.Load() - before; n != 0 {
		t.Errorf("the refused domain: %d DNS queries, want 0", n)
	}
	c.Expect("MAIL FROM:<e@PASS.test>", 250) // a domain of the session's
	s.finish(t, c)
	if got := s.take(t, "alice"); !strings.Contains(got, "Received-SPF: pass ") {
		t.Errorf("want a pass for a domain checked before:\n%s", got)
	}
	if _, r := s.mail(t, "127.0.0.2", "client.example.org", "d@nospf.test"); r.Code != 250 {
		t.Errorf("a new session: %s", r)
	}
}
