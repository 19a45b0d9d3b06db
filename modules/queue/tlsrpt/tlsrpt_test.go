package tlsrpt

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
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
	periods := c.Take(now.Add(time.Hour), false)
	if c.Snapshot() != nil || len(periods) != 1 || !periods[0].End.Equal(now.Add(time.Hour)) {
		t.Fatalf("Take did not end the period: %+v", periods)
	}
	reps := periods[0].ByDomain("Org", "ops@example.net", "id")
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

// With a 24h alignment, periods are whole UTC days, counted apart (also
// across a save and load) and taken once ended; a report on demand ends
// the day early and the rest of the day is a period of its own.
func TestCounterUTCDays(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	c := &Counter{Storage: st, Key: "counts.json"}
	c.SetAlign(24 * time.Hour)
	ny := time.FixedZone("UTC-4", -4*3600)
	day := func(d, h, m int) time.Time { return time.Date(2024, 5, d, h, m, 0, 0, time.UTC) }
	p := PolicyDesc{Type: PolicySTS, Domain: "example.com"}
	c.Record(p, nil, day(1, 10, 0))
	c.Record(p, nil, day(1, 23, 59).In(ny)) // 19:59 in New York, still May 1 UTC
	c.Record(p, &FailureDetail{ResultType: ValidationFailure}, day(2, 0, 1).In(ny))
	if got := c.Take(day(1, 23, 59), false); len(got) != 0 {
		t.Fatalf("taken before the day ended: %+v", got)
	}
	if err := c.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	c = &Counter{Storage: st, Key: "counts.json"} // a restart
	c.SetAlign(24 * time.Hour)
	if err := c.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := c.Take(day(2, 0, 0), false)
	if len(got) != 1 || !got[0].Start.Equal(day(1, 0, 0)) || !got[0].End.Equal(day(2, 0, 0)) {
		t.Fatalf("May 1: %+v", got)
	}
	r := got[0].ByDomain("Org", "c", "id")["example.com"]
	if r.DateRange.Start != day(1, 0, 0) || r.DateRange.End != day(2, 0, 0) || r.Policies[0].Summary != (Summary{Success: 2}) {
		t.Errorf("May 1 report: %+v", r)
	}
	if s := c.Snapshot(); s == nil || !s.Start.Equal(day(2, 0, 0)) || s.Policies[policyKey(p)].Summary != (Summary{Failure: 1}) {
		t.Fatalf("May 2 so far: %+v", s)
	}
	// On demand at noon: May 2 until noon, then noon to midnight.
	got = c.Take(day(2, 12, 0), true)
	if len(got) != 1 || !got[0].Start.Equal(day(2, 0, 0)) || !got[0].End.Equal(day(2, 12, 0)) {
		t.Fatalf("on demand: %+v", got)
	}
	c.Record(p, nil, day(2, 13, 0))
	c.Record(p, nil, day(3, 1, 0))
	got = c.Take(day(3, 0, 0), false)
	if len(got) != 1 || !got[0].Start.Equal(day(2, 12, 0)) || !got[0].End.Equal(day(3, 0, 0)) ||
		got[0].Policies[policyKey(p)].Summary.Success != 1 {
		t.Fatalf("rest of May 2: %+v", got)
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
