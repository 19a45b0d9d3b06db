package dmarc_test

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	_ "github.com/caddy-smtp/caddy-smtp/modules/auth/static"
	"github.com/caddy-smtp/caddy-smtp/modules/dmarc"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/adapttest"
	_ "github.com/caddy-smtp/caddy-smtp/modules/maildir"
	_ "github.com/caddy-smtp/caddy-smtp/modules/spf"
)

type setup struct {
	env  *testenv.Env
	dns  *testenv.DNS
	addr string
	keys map[string]crypto.Signer // by domain
}

// world publishes the test domains' DKIM keys, SPF and DMARC records.
func world(t *testing.T) *setup {
	t.Helper()
	d := testenv.StartDNS(t)
	s := &setup{dns: d, keys: map[string]crypto.Signer{}}
	// ed25519 keys (selector "ed") for most domains.
	for _, dom := range []string{"signed.test", "org.test", "strict.test", "other.test"} {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		s.keys[dom] = priv
		d.Add(t, fmt.Sprintf(`ed._domainkey.%s. 300 IN TXT "v=DKIM1; k=ed25519; p=%s"`, dom, base64.StdEncoding.EncodeToString(pub)))
	}
	// An RSA key (selector "rsa"), published in 255-byte strings.
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s.keys["rsa.test"] = rk
	der, _ := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	txt := "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	var chunks []string
	for len(txt) > 255 {
		chunks, txt = append(chunks, `"`+txt[:255]+`"`), txt[255:]
	}
	chunks = append(chunks, `"`+txt+`"`)
	d.Add(t, "rsa._domainkey.rsa.test. 300 IN TXT "+strings.Join(chunks, " "))

	d.Add(t,
		`_dmarc.signed.test. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.rsa.test. 300 IN TXT "v=DMARC1; p=reject"`,
		`_dmarc.quar.test. 300 IN TXT "v=DMARC1; p=quarantine"`,
		`_dmarc.spf.test. 300 IN TXT "v=DMARC1; p=reject"`,
		`spf.test. 300 IN TXT "v=spf1 ip4:127.0.0.2 -all"`,
		`_dmarc.org.test. 300 IN TXT "v=DMARC1; p=none; sp=reject"`,
		`_dmarc.strict.test. 300 IN TXT "v=DMARC1; p=reject; adkim=s"`,
		`_dmarc.half.test. 300 IN TXT "v=DMARC1; p=reject; pct=0"`,
	)
	d.Fail("_dmarc.tmp.test", dns.RcodeServerFailure)
	return s
}

func (s *setup) start(t *testing.T, handlers ...any) {
	t.Helper()
	s.env = testenv.New(t)
	s.addr = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	s.env.Load(s.env.Config(testenv.SpamMXApp(s.env, s.addr, s.dns.Addr, handlers...), nil))
}

// message is a plain message from the given From: address.
func message(from string) string {
	return "From: Someone <" + from + ">\r\nTo: alice@example.test\r\nSubject: hello\r\nMessage-ID: <1@x>\r\n\r\nHello Alice,\r\nthis is a test.\r\n"
}

// sign signs msg for domain with its key and selector.
func (s *setup) sign(t *testing.T, msg, domain, selector string) string {
	t.Helper()
	var b bytes.Buffer
	if err := dkim.Sign(&b, strings.NewReader(msg), &dkim.SignOptions{Domain: domain, Selector: selector, Signer: s.keys[domain]}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// send sends raw from client address ip with MAIL FROM mailFrom and
// returns the reply to the end of DATA.
func (s *setup) send(t *testing.T, ip, mailFrom, raw string) testenv.Reply {
	t.Helper()
	c, _ := testenv.DialFrom(t, ip, s.addr)
	c.Expect("EHLO client.example.org", 250)
	c.StartMessage(""+mailFrom+"", "alice@example.test")
	c.Send(raw + ".\r\n")
	r := c.Read()
	c.Cmd("QUIT")
	return r
}

// take returns the only message in folder (alice or alice/.Junk) and
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

func (s *setup) count(t *testing.T) int {
	return len(testenv.Maildir(t, s.env.Path("maildir"), "example.test", "alice")) +
		len(testenv.Maildir(t, s.env.Path("maildir"), "example.test", "alice/.Junk"))
}

// authResults parses the Authentication-Results field of a stored message.
func authResults(t *testing.T, stored string) (string, map[string]authres.Result) {
	t.Helper()
	i := strings.Index(stored, "Authentication-Results: ")
	if i < 0 {
		t.Fatalf("no Authentication-Results:\n%s", stored)
	}
	v := stored[i+len("Authentication-Results: "):]
	// Unfold the field.
	end := 0
	for {
		j := strings.Index(v[end:], "\r\n")
		end += j + 2
		if end >= len(v) || (v[end] != ' ' && v[end] != '\t') {
			break
		}
	}
	field := strings.ReplaceAll(v[:end-2], "\r\n", "")
	id, results, err := authres.Parse(field)
	if err != nil {
		t.Fatalf("Authentication-Results does not parse: %v\n%s", err, field)
	}
	out := map[string]authres.Result{}
	for _, r := range results {
		switch r := r.(type) {
		case *authres.SPFResult:
			out["spf"] = r
		case *authres.DKIMResult:
			out["dkim"] = r
		case *authres.DMARCResult:
			out["dmarc"] = r
		}
	}
	return id, out
}

func want(t *testing.T, stored string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(stored, p) {
			t.Errorf("message lacks %q:\n%s", p, stored)
		}
	}
}

func TestDKIMAndDMARC(t *testing.T) {
	s := world(t)
	s.start(t, map[string]any{"handler": "dmarc"})

	// Signed by the From: domain: DKIM and DMARC pass.
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", s.sign(t, message("a@signed.test"), "signed.test", "ed")); r.Code != 250 {
		t.Fatalf("signed message: %s", r)
	}
	got := s.take(t, "alice")
	id, res := authResults(t, got)
	if id != "mail.example.test" {
		t.Errorf("authserv-id %q, want the hostname", id)
	}
	if r, _ := res["dkim"].(*authres.DKIMResult); r == nil || r.Value != authres.ResultPass || r.Domain != "signed.test" {
		t.Errorf("dkim: %+v", res["dkim"])
	}
	if r, _ := res["dmarc"].(*authres.DMARCResult); r == nil || r.Value != authres.ResultPass || r.From != "signed.test" {
		t.Errorf("dmarc: %+v", res["dmarc"])
	}
	if r, _ := res["spf"].(*authres.SPFResult); r == nil || r.Value != authres.ResultNone || r.From != "nospf.test" {
		t.Errorf("spf: %+v", res["spf"])
	}
	want(t, got, "dkim=pass header.d=signed.test", "dmarc=pass (p=reject) header.from=signed.test")

	// RSA signature.
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", s.sign(t, message("a@rsa.test"), "rsa.test", "rsa")); r.Code != 250 {
		t.Fatalf("RSA-signed message: %s", r)
	}
	want(t, s.take(t, "alice"), "dkim=pass header.d=rsa.test", "dmarc=pass")

	// Changed after signing: DKIM fails, no aligned SPF, p=reject: refused.
	tampered := strings.Replace(s.sign(t, message("a@signed.test"), "signed.test", "ed"), "this is a test", "this is a scam", 1)
	r := s.send(t, "127.0.0.3", "bounce@nospf.test", tampered)
	if r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.26") || !strings.Contains(r.Text(), "DMARC policy of signed.test is reject") {
		t.Fatalf("tampered message from a p=reject domain: want 550 5.7.26, got %s", r)
	}
	if n := s.count(t); n != 0 {
		t.Fatalf("a refused message was stored (%d)", n)
	}

	// Unsigned, p=quarantine: the default 5 points file it in Junk.
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", message("a@quar.test")); r.Code != 250 {
		t.Fatalf("p=quarantine: %s", r)
	}
	got = s.take(t, "alice/.Junk")
	want(t, got, "dkim=none", "dmarc=fail (p=quarantine) header.from=quar.test", "dmarc(+5.0): DMARC fail for quar.test, policy quarantine")

	// Signed by another domain: DKIM passes, but not aligned.
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", s.sign(t, message("a@signed.test"), "other.test", "ed")); r.Code != 550 {
		t.Fatalf("signature not aligned: want 550, got %s", r)
	}

	// SPF aligned (the module checks SPF itself): DMARC passes unsigned.
	if r := s.send(t, "127.0.0.2", "x@spf.test", message("y@spf.test")); r.Code != 250 {
		t.Fatalf("SPF-aligned message: %s", r)
	}
	want(t, s.take(t, "alice"), "spf=pass smtp.mailfrom=spf.test", "dmarc=pass (p=reject) header.from=spf.test")
	// ... and from an unauthorized address: refused.
	if r := s.send(t, "127.0.0.3", "x@spf.test", message("y@spf.test")); r.Code != 550 {
		t.Fatalf("SPF fail on a p=reject domain: want 550, got %s", r)
	}

	// Subdomain without a record: the organizational domain's sp=reject.
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", message("a@news.org.test")); r.Code != 550 {
		t.Fatalf("sp=reject: want 550, got %s", r)
	}
	// Relaxed alignment: signed by org.test, From: news.org.test.
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", s.sign(t, message("a@news.org.test"), "org.test", "ed")); r.Code != 250 {
		t.Fatalf("relaxed DKIM alignment: %s", r)
	}
	want(t, s.take(t, "alice"), "dmarc=pass (p=reject) header.from=news.org.test")
	// Strict alignment (adkim=s): signed by strict.test, From: news.strict.test.
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", s.sign(t, message("a@news.strict.test"), "strict.test", "ed")); r.Code != 550 {
		t.Fatalf("strict DKIM alignment: want 550, got %s", r)
	}

	// No DMARC record: none. A DNS failure: temperror, never a refusal.
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", message("a@nodmarc.test")); r.Code != 250 {
		t.Fatalf("no DMARC record: %s", r)
	}
	want(t, s.take(t, "alice"), "dmarc=none header.from=nodmarc.test")
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", message("a@tmp.test")); r.Code != 250 {
		t.Fatalf("DMARC lookup failure: %s", r)
	}
	want(t, s.take(t, "alice"), "dmarc=temperror header.from=tmp.test")

	// pct=0: a failing message is not sampled: quarantine instead of reject.
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", message("a@half.test")); r.Code != 250 {
		t.Fatalf("pct=0: %s", r)
	}
	want(t, s.take(t, "alice/.Junk"), "dmarc=fail (p=reject dis=quarantine by pct) header.from=half.test")

	// Two From: domains: the worse decides.
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", s.sign(t, "From: a@signed.test, b@quar.test\r\nSubject: two\r\n\r\nhi\r\n", "signed.test", "ed")); r.Code != 250 {
		t.Fatalf("two From domains: %s", r)
	}
	want(t, s.take(t, "alice/.Junk"), "dmarc=fail (p=quarantine) header.from=quar.test")
}

// With the spf handler in front, its result is used, and a p=reject
// failure can be turned into points.
func TestDMARCWithSPFHandlerAndScores(t *testing.T) {
	s := world(t)
	s.start(t, map[string]any{"handler": "spf", "fail": map[string]any{"score": 0}},
		map[string]any{"handler": "dmarc", "fail_reject": map[string]any{"score": 6}, "dkim_fail": map[string]any{"score": 0.5}})
	if r := s.send(t, "127.0.0.3", "x@spf.test", message("y@spf.test")); r.Code != 250 {
		t.Fatalf("fail_reject as score: %s", r)
	}
	got := s.take(t, "alice/.Junk")
	want(t, got, "Received-SPF: fail ", "spf=fail smtp.mailfrom=spf.test", "dmarc=fail (p=reject) header.from=spf.test", "dmarc(+6.0): DMARC fail for spf.test, policy reject")

	tampered := strings.Replace(s.sign(t, message("a@signed.test"), "signed.test", "ed"), "Hello", "Hi", 1)
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", tampered); r.Code != 250 {
		t.Fatalf("tampered: %s", r)
	}
	got = s.take(t, "alice/.Junk")
	want(t, got, "dkim=fail", "dkim(+0.5): DKIM signatures fail (fail signed.test)", "spf(+0.5): SPF none", "score=7.0")
}

func TestDMARCConfigErrors(t *testing.T) {
	s := world(t)
	env := testenv.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	for _, tc := range []struct {
		handler map[string]any
		want    string
	}{
		{map[string]any{"temperror": map[string]any{"action": "reject"}}, "temperror.action: "},
		{map[string]any{"fail_none": map[string]any{"action": "bounce"}}, "fail_none.action: "},
		{map[string]any{"max_signatures": -1}, "max_signatures: "},
	} {
		tc.handler["handler"] = "dmarc"
		err := env.LoadErr(env.Config(testenv.SpamMXApp(env, addr, s.dns.Addr, tc.handler), nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want error with %q, got %v", tc.handler, tc.want, err)
		}
	}
}

func TestDMARCUnmarshalCaddyfile(t *testing.T) {
	adapttest.Run(t, func() caddyfile.Unmarshaler { return new(dmarc.DMARC) },
		"dmarc {\n fail_reject maybe\n}",
		"dmarc {\n nope\n}",
		"dmarc {\n max_signatures x\n}")
}

// TestFromSpoofingTricks: "From :" is a From field, so a p=reject policy
// applies to it; an unparsable From gets the permerror outcome (Junk).
func TestFromSpoofingTricks(t *testing.T) {
	s := world(t)
	s.start(t, map[string]any{"handler": "dmarc"})
	spaced := strings.Replace(message("a@signed.test"), "From: ", "From : ", 1)
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", spaced); r.Code != 550 || !strings.HasPrefix(r.Text(), "5.7.26") {
		t.Fatalf(`unauthenticated "From :" of a p=reject domain: want 550 5.7.26, got %s`, r)
	}
	broken := strings.Replace(message("a@signed.test"), "From: Someone <a@signed.test>", "From: <a@signed.test", 1)
	if r := s.send(t, "127.0.0.3", "bounce@nospf.test", broken); r.Code != 250 {
		t.Fatalf("unparsable From: %s", r)
	}
	got := s.take(t, "alice/.Junk")
	want(t, got, "dmarc=permerror", "X-Spam-Status: Yes")
}
