package queue_test

import (
	"bytes"
	"compress/gzip"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/modules/queue"
	"github.com/caddy-smtp/caddy-smtp/modules/queue/dane"
)

// tlsWorld adds to a harness a test CA, two MX hosts with STARTTLS
// (127.0.0.4 "good", whose certificate names every *.good host used
// below, and which offers REQUIRETLS; 127.0.0.5 "bad", with a certificate for wrong.example.net), an
// HTTPS server on 127.0.0.6 serving MTA-STS policies by Host, and a
// DNSSEC-validating front of the test DNS.
type tlsWorld struct {
	*harness
	ca       *testenv.TLSCA
	good     *testenv.MX
	bad      *testenv.MX
	badLeaf  *x509.Certificate
	https    *testenv.HTTPS
	sec      *testenv.DNSSEC
	mu       sync.Mutex
	policies map[string]string // by domain
}

var goodNames = []string{"mx.policy.example", "mx.testing.example", "a.report.example", "mx.reports.example"}

func newTLSWorld(t testing.TB) *tlsWorld {
	h := newHarness(t, "127.0.0.2")
	w := &tlsWorld{harness: h, ca: testenv.NewTLSCA(t), policies: map[string]string{}}
	goodTLS := w.ca.Issue(goodNames...)
	badTLS := w.ca.Issue("wrong.example.net")
	w.badLeaf = badTLS.Certificates[0].Leaf
	w.good = testenv.StartMX(t, fmt.Sprintf("127.0.0.4:%d", h.port), testenv.MXOptions{TLS: goodTLS, Host: "mx.policy.example", RequireTLS: true})
	w.bad = testenv.StartMX(t, fmt.Sprintf("127.0.0.5:%d", h.port), testenv.MXOptions{TLS: badTLS, Host: "wrong.example.net"})
	w.https = testenv.StartHTTPS(t, "127.0.0.6:0", w.ca.Issue("mta-sts.policy.example", "mta-sts.rogue.example",
		"mta-sts.wrongcert.example", "mta-sts.testing.example", "mta-sts.report.example"),
		http.HandlerFunc(w.servePolicy))
	w.sec = testenv.StartDNSSEC(t, h.dns)
	caFile := w.ca.WriteFile(h.env.Dir)
	h.queue["tls"] = map[string]any{"ca_file": caFile}
	h.queue["mta_sts"] = map[string]any{"port": w.https.Port, "ca_file": caFile}
	h.queue["tls_reports"] = map[string]any{"ca_file": caFile, "organization_name": "Test Org", "contact_info": "tls@example.test"}
	h.queue["dane"] = map[string]any{"resolver": w.sec.Addr}
	return w
}

// servePolicy serves the policies published by sts, by Host.
func (w *tlsWorld) servePolicy(rw http.ResponseWriter, r *http.Request) {
	domain := strings.TrimPrefix(strings.Split(r.Host, ":")[0], "mta-sts.")
	w.mu.Lock()
	p, ok := w.policies[domain]
	w.mu.Unlock()
	if !ok || r.URL.Path != "/.well-known/mta-sts.txt" {
		http.NotFound(rw, r)
		return
	}
	rw.Header().Set("Content-Type", "text/plain")
	io.WriteString(rw, p)
}

// sts publishes an MTA-STS policy for domain.
func (w *tlsWorld) sts(domain, id, mode string, mx ...string) {
	p := "version: STSv1\r\nmode: " + mode + "\r\n"
	for _, m := range mx {
		p += "mx: " + m + "\r\n"
	}
	p += "max_age: 86400\r\n"
	w.mu.Lock()
	w.policies[domain] = p
	w.mu.Unlock()
	w.dns.Remove("_mta-sts."+domain, dns.TypeTXT)
	w.dns.Add(w.t, fmt.Sprintf(`_mta-sts.%s. 300 IN TXT "v=STSv1; id=%s;"`, domain, id),
		fmt.Sprintf("mta-sts.%s. 300 IN A 127.0.0.6", domain))
}

// mx points domain's MX at host (with an A record to ip).
func (w *tlsWorld) mxAt(domain, host, ip string) {
	w.dns.Remove(domain, dns.TypeMX)
	w.dns.Add(w.t, fmt.Sprintf("%s. 300 IN MX 10 %s.", domain, host), fmt.Sprintf("%s. 300 IN A %s", host, ip))
}

// rcpt finds a recipient in the queue.
func (w *tlsWorld) rcpt(addr string) (queue.RcptInfo, bool) {
	for _, e := range w.list() {
		for _, r := range e.Recipients {
			if r.Address == addr {
				return r, true
			}
		}
	}
	return queue.RcptInfo{}, false
}

// waitDeferred waits until addr was tried at least twice and is still
// pending, and returns it.
func (w *tlsWorld) waitDeferred(addr string) queue.RcptInfo {
	w.t.Helper()
	var r queue.RcptInfo
	if !testenv.WaitFor(10*time.Second, func() bool {
		var ok bool
		r, ok = w.rcpt(addr)
		return ok && r.Status == "pending" && r.Attempts >= 2
	}) {
		w.t.Fatalf("%s not deferred and retried: %+v", addr, r)
	}
	return r
}

// received reports whether mx got a message for rcpt.
func received(mx *testenv.MX, rcpt string) (testenv.MXMessage, bool) {
	for _, m := range mx.Messages() {
		for _, to := range m.To {
			if to == rcpt {
				return m, true
			}
		}
	}
	return testenv.MXMessage{}, false
}

func waitReceived(t testing.TB, mx *testenv.MX, rcpt string) testenv.MXMessage {
	t.Helper()
	var m testenv.MXMessage
	if !testenv.WaitFor(10*time.Second, func() bool { var ok bool; m, ok = received(mx, rcpt); return ok }) {
		t.Fatalf("%s: no message for %s", mx.Addr, rcpt)
	}
	return m
}

// MTA-STS enforce: the allowed MX with a valid certificate gets the mail;
// an MX outside the policy, or one with a certificate for another name,
// is deferred (and retried) with the reason in the admin API. Testing
// mode delivers despite the wrong certificate and counts the failure.
func TestMTASTSEnforceAndTesting(t *testing.T) {
	w := newTLSWorld(t)
	w.sts("policy.example", "1", "enforce", "mx.policy.example")
	w.mxAt("policy.example", "mx.policy.example", "127.0.0.4")
	w.sts("rogue.example", "1", "enforce", "mx.rogue.example")
	w.mxAt("rogue.example", "evil.rogue.example", "127.0.0.5")
	w.sts("wrongcert.example", "1", "enforce", "*.wrongcert.example")
	w.mxAt("wrongcert.example", "mx.wrongcert.example", "127.0.0.5")
	w.sts("testing.example", "1", "testing", "mx.testing.example")
	w.mxAt("testing.example", "mx.testing.example", "127.0.0.5")
	w.load()

	for _, to := range []string{"bob@policy.example", "bob@rogue.example", "bob@wrongcert.example", "bob@testing.example"} {
		w.send("alice@example.test", []string{to}, message("sts "+to, to))
	}
	m := waitReceived(t, w.good, "bob@policy.example")
	if !m.TLS {
		t.Error("policy.example: delivered without TLS")
	}
	if m := waitReceived(t, w.bad, "bob@testing.example"); !m.TLS {
		t.Error("testing.example: delivered without TLS")
	}
	r := w.waitDeferred("bob@rogue.example")
	if r.TLSPolicy != "mta-sts" || r.DeferReason != "validation-failure" || !strings.Contains(r.LastError, "MTA-STS") {
		t.Errorf("rogue.example: %+v", r)
	}
	r = w.waitDeferred("bob@wrongcert.example")
	if r.TLSPolicy != "mta-sts" || r.DeferReason != "certificate-host-mismatch" {
		t.Errorf("wrongcert.example: %+v", r)
	}
	if _, ok := received(w.bad, "bob@wrongcert.example"); ok {
		t.Error("wrongcert.example: delivered to a host with a wrong certificate")
	}
	if _, ok := received(w.bad, "bob@rogue.example"); ok {
		t.Error("rogue.example: delivered to an MX outside the policy")
	}

	var counts map[string][]map[string]any
	if code := w.api("GET", "/smtp/tls-reports", &counts); code != 200 {
		t.Fatalf("GET /smtp/tls-reports: %d", code)
	}
	b, _ := json.Marshal(counts)
	for _, want := range []string{`"policy-domain":"testing.example"`, `"result-type":"certificate-host-mismatch"`, `"policy-domain":"policy.example"`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("TLS report counts lack %s:\n%s", want, b)
		}
	}
}

// A cached enforce policy survives a restart (a new Caddy instance reads
// it from storage) and a failing fetch after the TXT id changed: an MX
// outside it is still refused.
func TestMTASTSCachedPolicySurvivesRestartAndFailingFetch(t *testing.T) {
	w := newTLSWorld(t)
	w.sts("policy.example", "1", "enforce", "mx.policy.example")
	w.mxAt("policy.example", "mx.policy.example", "127.0.0.4")
	w.load()
	w.send("alice@example.test", []string{"bob@policy.example"}, message("first", "bob@policy.example"))
	waitReceived(t, w.good, "bob@policy.example")
	w.waitEmpty(5 * time.Second)

	caddy.Stop()
	w.https.Close()                                              // the policy host is down
	w.sts("policy.example", "2", "none")                         // a new id: the cached policy is fetched again, and that fails
	w.mxAt("policy.example", "evil.policy.example", "127.0.0.5") // an attacker's MX
	w.load()
	w.send("alice@example.test", []string{"carol@policy.example"}, message("second", "carol@policy.example"))
	r := w.waitDeferred("carol@policy.example")
	if r.TLSPolicy != "mta-sts" || r.DeferReason != "validation-failure" {
		t.Errorf("after restart: %+v", r)
	}
	if _, ok := received(w.bad, "carol@policy.example"); ok {
		t.Error("the cached enforce policy was downgraded")
	}
}

// DANE: a matching TLSA record (DANE-EE, so the certificate's name does
// not matter) lets the mail through; a mismatching one defers; the same
// mismatching record without the AD bit is ignored; SERVFAIL defers.
func TestDANE(t *testing.T) {
	w := newTLSWorld(t)
	badLeaf := w.badLeaf
	otherLeaf := w.ca.Issue("other.example").Certificates[0].Leaf
	for _, c := range []struct{ domain string }{{"match.dane"}, {"mismatch.dane"}, {"insecure.dane"}, {"bogus.dane"}} {
		w.mxAt(c.domain, "mx."+c.domain, "127.0.0.5")
	}
	w.dns.Add(t,
		dane.Record("mx.match.dane", w.port, 3, 1, 1, badLeaf),
		dane.Record("mx.mismatch.dane", w.port, 3, 1, 1, otherLeaf),
		dane.Record("mx.insecure.dane", w.port, 3, 0, 2, otherLeaf),
		dane.Record("mx.bogus.dane", w.port, 3, 1, 1, badLeaf),
	)
	w.sec.Insecure(dane.Name("mx.insecure.dane", w.port), true)
	w.dns.Fail(dane.Name("mx.bogus.dane", w.port), dns.RcodeServerFailure)
	w.load()
	for _, d := range []string{"match.dane", "mismatch.dane", "insecure.dane", "bogus.dane"} {
		w.send("alice@example.test", []string{"bob@" + d}, message("dane "+d, "bob@"+d))
	}
	if m := waitReceived(t, w.bad, "bob@match.dane"); !m.TLS {
		t.Error("match.dane: delivered without TLS")
	}
	waitReceived(t, w.bad, "bob@insecure.dane")
	r := w.waitDeferred("bob@mismatch.dane")
	if r.TLSPolicy != "dane" || r.DeferReason != "validation-failure" {
		t.Errorf("mismatch.dane: %+v", r)
	}
	r = w.waitDeferred("bob@bogus.dane")
	if r.TLSPolicy != "dane" || r.DeferReason != "dnssec-invalid" {
		t.Errorf("bogus.dane: %+v", r)
	}
	for _, d := range []string{"mismatch.dane", "bogus.dane"} {
		if _, ok := received(w.bad, "bob@"+d); ok {
			t.Errorf("%s: delivered", d)
		}
	}
}

// A day with one success and one failure under report.example's testing
// policy: the report goes to the mailto: rua (a message at the test MX)
// and the https: rua (a POST), both with the RFC 8460 fields.
func TestTLSReportSent(t *testing.T) {
	w := newTLSWorld(t)
	w.sts("report.example", "1", "testing", "*.report.example")
	w.mxAt("report.example", "a.report.example", "127.0.0.4")
	var mu sync.Mutex
	var posted [][]byte
	var ctype string
	rua := testenv.StartHTTPS(t, "127.0.0.7:0", w.ca.Issue("rua.reports.example"), http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		posted, ctype = append(posted, b), r.Header.Get("Content-Type")
		mu.Unlock()
	}))
	w.dns.Add(t,
		fmt.Sprintf(`_smtp._tls.report.example. 300 IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@reports.example,https://rua.reports.example:%d/report"`, rua.Port),
		"rua.reports.example. 300 IN A 127.0.0.7",
	)
	w.mxAt("reports.example", "mx.reports.example", "127.0.0.4")
	w.load()
	w.send("alice@example.test", []string{"bob@report.example"}, message("report 1", "bob@report.example"))
	waitReceived(t, w.good, "bob@report.example")
	w.mxAt("report.example", "b.report.example", "127.0.0.5") // a certificate for another name
	w.send("alice@example.test", []string{"carol@report.example"}, message("report 2", "carol@report.example"))
	waitReceived(t, w.bad, "carol@report.example")
	w.waitEmpty(5 * time.Second)

	var sent []queue.ReportResult
	if code := w.api("POST", "/smtp/tls-reports/send", &sent); code != 200 || len(sent) != 1 || len(sent[0].Sent) != 2 {
		t.Fatalf("POST /smtp/tls-reports/send: %d %+v", code, sent)
	}
	mu.Lock()
	if len(posted) != 1 || ctype != "application/tlsrpt+gzip" {
		t.Fatalf("HTTPS rua: %d posts, content type %q", len(posted), ctype)
	}
	checkReport(t, "https", gunzip(t, posted[0]))
	mu.Unlock()

	m := waitReceived(t, w.good, "tlsrpt@reports.example")
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	if s := msg.Header.Get("Subject"); !strings.HasPrefix(s, "Report Domain: report.example Submitter: mail.example.test Report-ID: <") {
		t.Errorf("Subject: %q", s)
	}
	mt, params, _ := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("Content-Type: %q", msg.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	found := false
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		if p.Header.Get("Content-Type") == "application/tlsrpt+gzip" {
			b, _ := io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
			checkReport(t, "mailto", gunzip(t, b))
			found = true
		}
	}
	if !found {
		t.Error("mailed report: no application/tlsrpt+gzip part")
	}
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkReport validates a report against the fields of RFC 8460 4.4.
func checkReport(t *testing.T, via string, b []byte) {
	t.Helper()
	var r struct {
		Org       *string `json:"organization-name"`
		DateRange *struct {
			Start time.Time `json:"start-datetime"`
			End   time.Time `json:"end-datetime"`
		} `json:"date-range"`
		Contact  *string `json:"contact-info"`
		ReportID *string `json:"report-id"`
		Policies []struct {
			Policy struct {
				Type   string   `json:"policy-type"`
				String []string `json:"policy-string"`
				Domain string   `json:"policy-domain"`
				MXHost []string `json:"mx-host"`
			} `json:"policy"`
			Summary *struct {
				Success *int `json:"total-successful-session-count"`
				Failure *int `json:"total-failure-session-count"`
			} `json:"summary"`
			Failures []struct {
				Type  string `json:"result-type"`
				MX    string `json:"receiving-mx-hostname"`
				IP    string `json:"receiving-ip"`
				Count int    `json:"failed-session-count"`
			} `json:"failure-details"`
		} `json:"policies"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v\n%s", via, err, b)
	}
	switch {
	case r.Org == nil || *r.Org != "Test Org", r.Contact == nil || *r.Contact != "tls@example.test",
		r.ReportID == nil || *r.ReportID == "", r.DateRange == nil || !r.DateRange.Start.Before(r.DateRange.End) && !r.DateRange.Start.Equal(r.DateRange.End),
		len(r.Policies) != 1:
		t.Fatalf("%s: report header fields: %s", via, b)
	}
	if s := r.DateRange.Start; !s.Equal(s.Truncate(24 * time.Hour)) {
		t.Errorf("%s: the period (interval 24h) starts at %v, not at midnight UTC", via, s)
	}
	p := r.Policies[0]
	if p.Policy.Type != "sts" || p.Policy.Domain != "report.example" || len(p.Policy.String) == 0 || p.Policy.String[0] != "version: STSv1" ||
		len(p.Policy.MXHost) != 1 || p.Policy.MXHost[0] != "*.report.example" {
		t.Errorf("%s: policy: %+v", via, p.Policy)
	}
	if p.Summary == nil || p.Summary.Success == nil || *p.Summary.Success != 1 || p.Summary.Failure == nil || *p.Summary.Failure != 1 {
		t.Errorf("%s: summary: %s", via, b)
	}
	if len(p.Failures) != 1 || p.Failures[0].Type != "certificate-host-mismatch" || p.Failures[0].MX != "b.report.example" ||
		p.Failures[0].IP != "127.0.0.5" || p.Failures[0].Count != 1 {
		t.Errorf("%s: failure-details: %+v", via, p.Failures)
	}
}

// A report whose https: rua fails is kept in storage (across a restart)
// and POSTed on the next send; its mailto: copy is not sent again. A
// report that keeps failing is dropped after give_up.
func TestTLSReportKeptUntilSent(t *testing.T) {
	w := newTLSWorld(t)
	w.sts("report.example", "1", "testing", "*.report.example")
	w.mxAt("report.example", "a.report.example", "127.0.0.4")
	var mu sync.Mutex
	var posted [][]byte
	fails := 1
	rua := testenv.StartHTTPS(t, "127.0.0.7:0", w.ca.Issue("rua.reports.example"), http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			http.Error(rw, "try later", http.StatusServiceUnavailable)
			return
		}
		posted = append(posted, b)
	}))
	https := fmt.Sprintf("https://rua.reports.example:%d/report", rua.Port)
	w.dns.Add(t,
		fmt.Sprintf(`_smtp._tls.report.example. 300 IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@reports.example,%s"`, https),
		"rua.reports.example. 300 IN A 127.0.0.7",
	)
	w.mxAt("reports.example", "mx.reports.example", "127.0.0.4")
	w.load()
	w.send("alice@example.test", []string{"bob@report.example"}, message("report 1", "bob@report.example"))
	waitReceived(t, w.good, "bob@report.example")
	w.mxAt("report.example", "b.report.example", "127.0.0.5")
	w.send("alice@example.test", []string{"carol@report.example"}, message("report 2", "carol@report.example"))
	waitReceived(t, w.bad, "carol@report.example")
	w.waitEmpty(5 * time.Second)

	var sent []queue.ReportResult
	if code := w.api("POST", "/smtp/tls-reports/send", &sent); code != 200 || len(sent) != 1 ||
		len(sent[0].Sent) != 1 || !strings.HasPrefix(sent[0].Sent[0], "mailto:") ||
		len(sent[0].Pending) != 1 || sent[0].Pending[0] != https {
		t.Fatalf("first send: %d %+v", code, sent)
	}
	id := sent[0].ID
	waitReceived(t, w.good, "tlsrpt@reports.example")
	w.waitEmpty(5 * time.Second)

	caddy.Stop() // the pending report is in storage, not in memory
	w.load()
	sent = nil
	if code := w.api("POST", "/smtp/tls-reports/send", &sent); code != 200 || len(sent) != 1 || sent[0].ID != id ||
		len(sent[0].Sent) != 1 || sent[0].Sent[0] != https || len(sent[0].Pending) != 0 {
		t.Fatalf("second send: %d %+v", code, sent)
	}
	mu.Lock()
	if len(posted) != 1 {
		t.Fatalf("HTTPS rua: %d reports", len(posted))
	}
	checkReport(t, "https", gunzip(t, posted[0]))
	mu.Unlock()
	sent = nil
	if code := w.api("POST", "/smtp/tls-reports/send", &sent); code != 200 || len(sent) != 0 {
		t.Fatalf("third send (nothing left): %d %+v", code, sent)
	}
	time.Sleep(300 * time.Millisecond) // a second mailed copy would be at the MX by now
	n := 0
	for _, m := range w.good.Messages() {
		for _, to := range m.To {
			if to == "tlsrpt@reports.example" {
				n++
			}
		}
	}
	if n != 1 {
		t.Errorf("mailto rua got %d reports, want 1", n)
	}

	// give_up: an endpoint that always fails.
	caddy.Stop()
	w.queue["tls_reports"].(map[string]any)["give_up"] = "1s"
	w.load()
	mu.Lock()
	fails = 1000
	mu.Unlock()
	w.send("alice@example.test", []string{"dave@report.example"}, message("report 3", "dave@report.example"))
	waitReceived(t, w.bad, "dave@report.example")
	w.waitEmpty(5 * time.Second)
	sent = nil
	if code := w.api("POST", "/smtp/tls-reports/send", &sent); code != 200 || len(sent) != 1 || len(sent[0].Pending) != 1 {
		t.Fatalf("give_up, first send: %d %+v", code, sent)
	}
	time.Sleep(1100 * time.Millisecond)
	sent = nil
	if code := w.api("POST", "/smtp/tls-reports/send", &sent); code != 200 || len(sent) != 1 ||
		len(sent[0].Dropped) != 1 || sent[0].Dropped[0] != https || len(sent[0].Sent) != 0 {
		t.Fatalf("give_up, second send: %d %+v", code, sent)
	}
	sent = nil
	if code := w.api("POST", "/smtp/tls-reports/send", &sent); code != 200 || len(sent) != 0 {
		t.Fatalf("give_up, third send: %d %+v", code, sent)
	}
}

// REQUIRETLS (RFC 8689), queue side: a flagged message goes to an MX
// validated by MTA-STS with REQUIRETLS on MAIL FROM; it is bounced
// (5.7.30) when no policy validates the MX or the MX lacks REQUIRETLS
// (even with matching DANE records), and waits when the certificate does
// not match a testing policy (enforced for it).
func TestRequireTLSQueueSide(t *testing.T) {
	w := newTLSWorld(t)
	w.sts("policy.example", "1", "enforce", "mx.policy.example")
	w.mxAt("policy.example", "mx.policy.example", "127.0.0.4")
	w.sts("testing.example", "1", "testing", "mx.testing.example")
	w.mxAt("testing.example", "mx.testing.example", "127.0.0.5")
	w.mxAt("match.dane", "mx.match.dane", "127.0.0.5")
	w.dns.Add(t, dane.Record("mx.match.dane", w.port, 3, 1, 1, w.badLeaf))
	w.load()
	path := w.queue["path"].(string)
	for _, to := range []string{"bob@policy.example", "bob@testing.example", "bob@match.dane", "bob@example.org"} {
		if _, err := queue.EnqueueRequireTLS(path, "alice@example.test", []string{to}, message("requiretls "+to, to)); err != nil {
			t.Fatal(err)
		}
	}
	m := waitReceived(t, w.good, "bob@policy.example")
	if !m.TLS || !m.RequireTLS {
		t.Errorf("policy.example: TLS %v, REQUIRETLS %v", m.TLS, m.RequireTLS)
	}
	r := w.waitDeferred("bob@testing.example")
	if r.DeferReason != "certificate-host-mismatch" {
		t.Errorf("testing.example: %+v", r)
	}
	for _, e := range w.list() {
		if !e.RequireTLS {
			t.Errorf("admin API: %s lacks require_tls", e.ID)
		}
	}
	var bounces [][]byte
	testenv.WaitFor(10*time.Second, func() bool { bounces = w.aliceMail(); return len(bounces) >= 2 })
	if len(bounces) != 2 {
		t.Fatalf("want 2 bounces, got %d", len(bounces))
	}
	all := string(bytes.Join(bounces, nil))
	for _, want := range []string{"Final-Recipient: rfc822; bob@example.org", "Final-Recipient: rfc822; bob@match.dane",
		"Status: 5.7.30", "does not support REQUIRETLS", "no DANE records or MTA-STS policy validate mx1.example.org"} {
		if !strings.Contains(all, want) {
			t.Errorf("bounces lack %q:\n%s", want, all)
		}
	}
	for _, mx := range []*testenv.MX{w.bad, w.mx["127.0.0.2"]} {
		for _, m := range mx.Messages() {
			t.Errorf("%s got a REQUIRETLS message for %v", mx.Addr, m.To)
		}
	}
}
