package tlsrpt

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseTXT(t *testing.T) {
	for _, c := range []struct {
		txts []string
		want []string
	}{
		{[]string{"v=TLSRPTv1; rua=mailto:reports@example.com"}, []string{"mailto:reports@example.com"}},
		{[]string{"v=TLSRPTv1;rua=mailto:a@example.com,https://r.example.com/tlsrpt"}, []string{"mailto:a@example.com", "https://r.example.com/tlsrpt"}},
		{[]string{"v=TLSRPTv1; rua=http://insecure.example, mailto:b@example.com"}, []string{"mailto:b@example.com"}},
		{[]string{"v=spf1 -all", "v=TLSRPTv1; rua=mailto:c@example.com"}, []string{"mailto:c@example.com"}},
		{[]string{"v=TLSRPTv1; rua=mailto:a@example.com", "v=TLSRPTv1; rua=mailto:b@example.com"}, nil},
		{[]string{"v=TLSRPTv1"}, nil},
		{[]string{"v=TLSRPTv1; rua=mailto:nobody"}, nil},
		{[]string{"v=TLSRPTv1; rua=https://"}, nil},
		{[]string{"rua=mailto:a@example.com; v=TLSRPTv1"}, nil},
		{nil, nil},
	} {
		got, err := ParseTXT(c.txts)
		if c.want == nil && err == nil || c.want != nil && (err != nil || !slices.Equal(got, c.want)) {
			t.Errorf("ParseTXT(%q) = %q, %v; want %q", c.txts, got, err, c.want)
		}
	}
}

func TestCounterAndReport(t *testing.T) {
	c := &Counter{}
	p := PolicyDesc{Type: PolicySTS, String: []string{"version: STSv1"}, Domain: "example.com", MXHost: []string{"*.example.com"}}
	now := time.Now()
	c.Record(p, nil, now)
	c.Record(p, &FailureDetail{ResultType: CertificateHostMismatch, ReceivingMXHostname: "mx.example.com", ReceivingIP: "192.0.2.1"}, now)
	c.Record(p, &FailureDetail{ResultType: CertificateHostMismatch, ReceivingMXHostname: "mx.example.com", ReceivingIP: "192.0.2.1"}, now)
	c.Record(PolicyDesc{Type: PolicyTLSA, Domain: "other.example"}, nil, now)
	period := c.Take()
	if c.Snapshot() != nil {
		t.Error("Take did not start a new period")
	}
	reps := period.ByDomain("Org", "ops@example.net", "id", now.Add(time.Hour))
	r := reps["example.com"]
	if len(reps) != 2 || r == nil || len(r.Policies) != 1 {
		t.Fatalf("reports: %+v", reps)
	}
	pr := r.Policies[0]
	if pr.Summary != (Summary{Success: 1, Failure: 2}) || len(pr.FailureDetails) != 1 || pr.FailureDetails[0].Count != 2 {
		t.Errorf("counts: %+v", pr)
	}
	b, _ := json.Marshal(r)
	for _, f := range []string{`"organization-name":"Org"`, `"start-datetime"`, `"end-datetime"`, `"contact-info":"ops@example.net"`, `"report-id":"id.example.com.`,
		`"policy-type":"sts"`, `"policy-string":["version: STSv1"]`, `"policy-domain":"example.com"`, `"mx-host":["*.example.com"]`,
		`"total-successful-session-count":1`, `"total-failure-session-count":2`, `"result-type":"certificate-host-mismatch"`, `"failed-session-count":2`} {
		if !strings.Contains(string(b), f) {
			t.Errorf("JSON lacks %s: %s", f, b)
		}
	}
}

func FuzzParseTXT(f *testing.F) {
	f.Add("v=TLSRPTv1; rua=mailto:reports@example.com")
	f.Add("v=TLSRPTv1;rua=mailto:a@example.com,https://r.example.com/x")
	f.Add("v=TLSRPTv1; rua=https://r.example.com:8443/a?b=c")
	f.Add("v=TLSRPTv1; rua=mailto:a%40b@example.com")
	f.Fuzz(func(t *testing.T, s string) {
		ruas, err := ParseTXT([]string{s})
		if err != nil {
			return
		}
		if len(ruas) == 0 {
			t.Fatal("no error and no rua")
		}
		for _, u := range ruas {
			if addr, ok := MailtoAddress(u); ok {
				if strings.Count(addr, "@") != 1 || strings.ContainsAny(addr, "\r\n<> ,") {
					t.Fatalf("mailto address %q", addr)
				}
			} else if !strings.HasPrefix(u, "https:") {
				t.Fatalf("rua %q is neither mailto: nor https:", u)
			}
		}
	})
}
