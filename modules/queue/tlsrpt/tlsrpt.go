// Package tlsrpt implements the sending side of SMTP TLS Reporting (RFC
// 8460): the _smtp._tls TXT record, the JSON report, the counting of
// session results per policy, and the two ways to send a report (mail, and
// HTTPS POST).
package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// Policy types of a report.
const (
	PolicySTS      = "sts"
	PolicyTLSA     = "tlsa"
	PolicyNotFound = "no-policy-found"
)

// Result types (RFC 8460 4.3).
const (
	StartTLSNotSupported    = "starttls-not-supported"
	CertificateHostMismatch = "certificate-host-mismatch"
	CertificateExpired      = "certificate-expired"
	CertificateNotTrusted   = "certificate-not-trusted"
	ValidationFailure       = "validation-failure"
	TLSAInvalid             = "tlsa-invalid"
	DNSSECInvalid           = "dnssec-invalid"
	DANERequired            = "dane-required"
	STSPolicyFetchError     = "sts-policy-fetch-error"
	STSPolicyInvalid        = "sts-policy-invalid"
	STSWebPKIInvalid        = "sts-webpki-invalid"
)

// Report is an aggregate report (RFC 8460 4.4).
type Report struct {
	OrganizationName string         `json:"organization-name"`
	DateRange        DateRange      `json:"date-range"`
	ContactInfo      string         `json:"contact-info"`
	ReportID         string         `json:"report-id"`
	Policies         []PolicyResult `json:"policies"`
}

// DateRange is the time a report covers.
type DateRange struct {
	Start time.Time `json:"start-datetime"`
	End   time.Time `json:"end-datetime"`
}

// PolicyResult is the count of sessions under one policy.
type PolicyResult struct {
	Policy         PolicyDesc      `json:"policy"`
	Summary        Summary         `json:"summary"`
	FailureDetails []FailureDetail `json:"failure-details,omitempty"`
}

// PolicyDesc identifies a policy.
type PolicyDesc struct {
	Type   string   `json:"policy-type"`
	String []string `json:"policy-string,omitempty"`
	Domain string   `json:"policy-domain"`
	MXHost []string `json:"mx-host,omitempty"`
}

// Summary counts sessions.
type Summary struct {
	Success int64 `json:"total-successful-session-count"`
	Failure int64 `json:"total-failure-session-count"`
}

// FailureDetail counts failures of one kind.
type FailureDetail struct {
	ResultType          string `json:"result-type"`
	SendingMTAIP        string `json:"sending-mta-ip,omitempty"`
	ReceivingMXHostname string `json:"receiving-mx-hostname,omitempty"`
	ReceivingIP         string `json:"receiving-ip,omitempty"`
	Count               int64  `json:"failed-session-count"`
	AdditionalInfo      string `json:"additional-information,omitempty"`
	FailureReasonCode   string `json:"failure-reason-code,omitempty"`
}

// ParseTXT finds the report URIs in the TXT strings of _smtp._tls.<domain>
// (RFC 8460 3): exactly one record must start with "v=TLSRPTv1"; its rua
// is a comma-separated list of mailto: and https: URIs (others ignored).
func ParseTXT(txts []string) ([]string, error) {
	var found []string
	n := 0
	for _, t := range txts {
		fields := strings.Split(t, ";")
		if strings.TrimSpace(fields[0]) != "v=TLSRPTv1" {
			continue
		}
		n++
		found = nil
		for _, f := range fields[1:] {
			k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
			if !ok || strings.TrimSpace(k) != "rua" {
				continue
			}
			for _, u := range strings.Split(v, ",") {
				u = strings.TrimSpace(u)
				if validURI(u) {
					found = append(found, u)
				}
			}
			break
		}
	}
	switch {
	case n == 0:
		return nil, errors.New("no TLSRPTv1 record")
	case n > 1:
		return nil, fmt.Errorf("%d TLSRPTv1 records (there must be one)", n)
	case len(found) == 0:
		return nil, errors.New("no usable rua (mailto: or https:)")
	}
	return found, nil
}

func validURI(u string) bool {
	p, err := url.Parse(u)
	if err != nil {
		return false
	}
	switch p.Scheme {
	case "mailto":
		addr, err := url.PathUnescape(p.Opaque)
		return err == nil && strings.Count(addr, "@") == 1 && !strings.ContainsAny(addr, " <>\r\n,") &&
			!strings.HasPrefix(addr, "@") && !strings.HasSuffix(addr, "@")
	case "https":
		return p.Host != ""
	}
	return false
}

// MailtoAddress is the address of a mailto: URI.
func MailtoAddress(u string) (string, bool) {
	p, err := url.Parse(u)
	if err != nil || p.Scheme != "mailto" {
		return "", false
	}
	addr, err := url.PathUnescape(p.Opaque)
	return addr, err == nil
}

// Gzip is the report as gzipped JSON.
func (r *Report) Gzip() ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := json.NewEncoder(zw).Encode(r); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Filename is the report's file name (RFC 8460 5.3).
func (r *Report) Filename(submitter, domain string) string {
	return fmt.Sprintf("%s!%s!%d!%d!%s.json.gz", submitter, domain, r.DateRange.Start.Unix(), r.DateRange.End.Unix(), safeName(r.ReportID))
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

// Post sends the report to an https: rua (RFC 8460 5.4).
func Post(ctx context.Context, client *http.Client, uri string, gz []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, uri, bytes.NewReader(gz))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/tlsrpt+gzip")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("POST %s: %s", uri, resp.Status)
	}
	return nil
}

// Mail builds the report message to a mailto: rua (RFC 8460 5.3).
func Mail(from, to, submitter, domain string, r *Report, gz []byte, now time.Time) []byte {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	var h bytes.Buffer
	fmt.Fprintf(&h, "From: %s\r\n", from)
	fmt.Fprintf(&h, "To: %s\r\n", to)
	fmt.Fprintf(&h, "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n", domain, submitter, r.ReportID)
	fmt.Fprintf(&h, "Date: %s\r\n", now.Format(time.RFC1123Z))
	fmt.Fprintf(&h, "Message-ID: <%s>\r\n", r.ReportID)
	fmt.Fprintf(&h, "TLS-Report-Domain: %s\r\n", domain)
	fmt.Fprintf(&h, "TLS-Report-Submitter: %s\r\n", submitter)
	fmt.Fprintf(&h, "MIME-Version: 1.0\r\n")
	fmt.Fprintf(&h, "Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"%s\"\r\n\r\n", mw.Boundary())
	pw, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/plain; charset=utf-8"}})
	fmt.Fprintf(pw, "This is an aggregate TLS report from %s for %s.\r\n", submitter, domain)
	pw, _ = mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {"application/tlsrpt+gzip"},
		"Content-Transfer-Encoding": {"base64"},
		"Content-Disposition":       {`attachment; filename="` + r.Filename(submitter, domain) + `"`},
	})
	enc := base64.StdEncoding.EncodeToString(gz)
	for len(enc) > 76 {
		io.WriteString(pw, enc[:76]+"\r\n")
		enc = enc[76:]
	}
	io.WriteString(pw, enc+"\r\n")
	mw.Close()
	return append(h.Bytes(), body.Bytes()...)
}

// Counter counts session results per policy and reporting period, in
// memory, saved to storage by Save and read back by Load.
//
// With Align set, periods are aligned to UTC: a session at t counts in
// [t.Truncate(Align), +Align), so an Align of 24h gives whole UTC days
// (RFC 8460 4.1), and each period keeps its own counts until taken.
// Without it, a period starts with its first session and ends when it is
// taken.
type Counter struct {
	// Storage and Key: where the counts are kept (nil Storage: memory only).
	Storage certmagic.Storage
	Key     string

	mu      sync.Mutex
	align   time.Duration
	periods []*Period // oldest first
	// cut: the end of a period taken before its aligned end (no later
	// period starts before it).
	cut   time.Time
	dirty bool
}

// Period is the counts of one reporting period.
type Period struct {
	Start time.Time `json:"start"`
	// End is the end of an aligned period (zero: open until taken).
	End      time.Time                `json:"end,omitempty"`
	Policies map[string]*PolicyResult `json:"policies"` // by policyKey
}

// saved is the counts as kept in storage.
type saved struct {
	Periods []*Period `json:"periods"`
	Cut     time.Time `json:"cut,omitempty"`
}

func policyKey(p PolicyDesc) string {
	return p.Domain + "\x00" + p.Type + "\x00" + strings.Join(p.String, "\n") + "\x00" + strings.Join(p.MXHost, ",")
}

// SetAlign sets the alignment of the periods started from now on (0:
// none).
func (c *Counter) SetAlign(d time.Duration) {
	c.mu.Lock()
	c.align = d
	c.mu.Unlock()
}

// periodAt is the period that counts a session at now (c.mu held).
func (c *Counter) periodAt(now time.Time) *Period {
	if c.align <= 0 {
		if n := len(c.periods); n > 0 && c.periods[n-1].End.IsZero() {
			return c.periods[n-1]
		}
		p := &Period{Start: now, Policies: map[string]*PolicyResult{}}
		c.periods = append(c.periods, p)
		return p
	}
	start := now.Truncate(c.align)
	end := start.Add(c.align)
	if c.cut.After(start) && c.cut.Before(end) {
		start = c.cut // the rest of a period taken early
	}
	for i := len(c.periods) - 1; i >= 0; i-- {
		if p := c.periods[i]; p.End.IsZero() || p.Start.Equal(start) && p.End.Equal(end) {
			return p // an unaligned period still open counts on
		}
	}
	p := &Period{Start: start, End: end, Policies: map[string]*PolicyResult{}}
	c.periods = append(c.periods, p)
	sort.Slice(c.periods, func(i, j int) bool { return c.periods[i].Start.Before(c.periods[j].Start) })
	return p
}

// Record counts one session (fd nil: a success) at now.
func (c *Counter) Record(p PolicyDesc, fd *FailureDetail, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	period := c.periodAt(now)
	k := policyKey(p)
	pr := period.Policies[k]
	if pr == nil {
		pr = &PolicyResult{Policy: p}
		period.Policies[k] = pr
	}
	c.dirty = true
	if fd == nil {
		pr.Summary.Success++
		return
	}
	pr.Summary.Failure++
	for i := range pr.FailureDetails {
		d := &pr.FailureDetails[i]
		if d.ResultType == fd.ResultType && d.ReceivingMXHostname == fd.ReceivingMXHostname &&
			d.ReceivingIP == fd.ReceivingIP && d.AdditionalInfo == fd.AdditionalInfo {
			d.Count++
			return
		}
	}
	n := *fd
	n.Count = 1
	pr.FailureDetails = append(pr.FailureDetails, n)
}

// Snapshot copies the latest period (nil if nothing was counted).
func (c *Counter) Snapshot() *Period {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.periods) == 0 {
		return nil
	}
	b, _ := json.Marshal(c.periods[len(c.periods)-1])
	var p Period
	json.Unmarshal(b, &p)
	return &p
}

// Take returns the periods that ended by now, oldest first, and forgets
// them. With all, the periods still open end now too (a report on
// demand; an aligned period then resumes at now). Unaligned periods are
// always open: Take(now, false) takes them as well.
func (c *Counter) Take(now time.Time, all bool) []*Period {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out, keep []*Period
	for _, p := range c.periods {
		switch {
		case p.End.IsZero():
			p.End = now
		case now.Before(p.End) && all:
			p.End = now
			c.cut = now
		case now.Before(p.End):
			keep = append(keep, p)
			continue
		}
		out = append(out, p)
	}
	if len(out) > 0 {
		c.periods, c.dirty = keep, true
	}
	return out
}

// Load reads the counts saved in storage; the periods already in memory
// win.
func (c *Counter) Load(ctx context.Context) error {
	if c.Storage == nil {
		return nil
	}
	b, err := c.Storage.Load(ctx, c.Key)
	if err != nil {
		return nil // none saved
	}
	var sv saved
	if err := json.Unmarshal(b, &sv); err != nil {
		return fmt.Errorf("%s: %v", c.Key, err)
	}
	if sv.Periods == nil {
		// Before periods were kept apart: one open period.
		var p Period
		if json.Unmarshal(b, &p) == nil && p.Policies != nil {
			sv.Periods = []*Period{&p}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.periods) == 0 {
		for _, p := range sv.Periods {
			if p != nil && p.Policies != nil {
				c.periods = append(c.periods, p)
			}
		}
		c.cut = sv.Cut
	}
	return nil
}

// Save writes the counts to storage if they changed.
func (c *Counter) Save(ctx context.Context) error {
	if c.Storage == nil {
		return nil
	}
	c.mu.Lock()
	if !c.dirty {
		c.mu.Unlock()
		return nil
	}
	var b []byte
	if len(c.periods) > 0 {
		b, _ = json.Marshal(saved{Periods: c.periods, Cut: c.cut})
	}
	c.dirty = false
	c.mu.Unlock()
	if b == nil {
		err := c.Storage.Delete(ctx, c.Key)
		if err != nil && c.Storage.Exists(ctx, c.Key) {
			return err
		}
		return nil
	}
	return c.Storage.Store(ctx, c.Key, b)
}

// ByDomain splits a taken period into one report per policy domain.
func (p *Period) ByDomain(org, contact, idPrefix string) map[string]*Report {
	end := p.End
	out := map[string]*Report{}
	keys := make([]string, 0, len(p.Policies))
	for k := range p.Policies {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		pr := p.Policies[k]
		d := pr.Policy.Domain
		r := out[d]
		if r == nil {
			r = &Report{
				OrganizationName: org,
				DateRange:        DateRange{Start: p.Start.UTC().Truncate(time.Second), End: end.UTC().Truncate(time.Second)},
				ContactInfo:      contact,
				ReportID:         idPrefix + "." + d + "." + strconv.FormatInt(end.Unix(), 10),
			}
			out[d] = r
		}
		r.Policies = append(r.Policies, *pr)
	}
	return out
}
