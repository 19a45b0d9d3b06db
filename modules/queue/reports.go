package queue

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/queue/tlsrpt"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// reportLoop sends the TLS reports every interval and saves the counts
// to storage every countsSaveInterval, until the engine stops.
func (e *engine) reportLoop() {
	defer close(e.reportDone)
	last := time.Now()
	for {
		wait := countsSaveInterval
		if rs := e.settings().transport.reports; rs != nil {
			wait = min(wait, max(rs.interval-time.Since(last), time.Second))
		}
		select {
		case <-e.stop:
			return // Destruct saves the counts
		case <-time.After(wait):
			e.saveCounts()
			s := e.settings()
			if rs := s.transport.reports; rs != nil && time.Since(last) >= rs.interval {
				last = time.Now()
				e.SendTLSReports(e.ctx)
			}
		}
	}
}

// countsSaveInterval is how often the TLS report counts go to storage.
const countsSaveInterval = 30 * time.Second

func (e *engine) saveCounts() {
	if err := e.rpt.Save(context.Background()); err != nil {
		e.settings().logger.Warn("saving the TLS report counts", zap.Error(err))
	}
}

// ReportResult is what happened to one report.
type ReportResult struct {
	Domain string   `json:"domain"`
	ID     string   `json:"report_id"`
	Sent   []string `json:"sent,omitempty"`
	Errors []string `json:"errors,omitempty"`
}

// SendTLSReports ends the current reporting period and sends a report
// for each policy domain counted in it to the addresses of its
// _smtp._tls record: mailto: through this queue, https: by POST.
func (e *engine) SendTLSReports(ctx context.Context) []ReportResult {
	s := e.settings()
	rs := s.transport.reports
	if rs == nil {
		return nil
	}
	period := e.rpt.Take()
	e.saveCounts()
	if period == nil {
		return nil
	}
	now := time.Now()
	var out []ReportResult
	for domain, r := range period.ByDomain(rs.org, rs.contact, newID()+"@"+s.hostname, now) {
		res := ReportResult{Domain: domain, ID: r.ReportID}
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		txts, err := s.lookupTXT(lctx, "_smtp._tls."+domain)
		cancel()
		var ruas []string
		if err == nil {
			ruas, err = tlsrpt.ParseTXT(txts)
		}
		if err != nil {
			s.logger.Info("no TLS report sent", zap.String("domain", domain), zap.Error(err))
			res.Errors = append(res.Errors, err.Error())
			out = append(out, res)
			continue
		}
		gz, err := r.Gzip()
		if err != nil {
			res.Errors = append(res.Errors, err.Error())
			out = append(out, res)
			continue
		}
		for _, u := range ruas {
			method := "https"
			if addr, ok := tlsrpt.MailtoAddress(u); ok {
				method = "mailto"
				err = e.mailReport(s, rs, addr, domain, r, gz, now)
			} else {
				pctx, cancel := context.WithTimeout(ctx, time.Minute)
				err = tlsrpt.Post(pctx, rs.client, u, gz)
				cancel()
			}
			if err != nil {
				metricTLSReports.WithLabelValues(method, "error").Inc()
				res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", u, err))
				s.logger.Warn("sending a TLS report failed", zap.String("domain", domain), zap.String("rua", u), zap.Error(err))
				continue
			}
			metricTLSReports.WithLabelValues(method, "ok").Inc()
			res.Sent = append(res.Sent, u)
			s.logger.Info("TLS report sent", zap.String("domain", domain), zap.String("rua", u), zap.String("report_id", r.ReportID))
		}
		out = append(out, res)
	}
	return out
}

// mailReport queues a report to addr with the null reverse path (no
// bounces come back for reports).
func (e *engine) mailReport(s *settings, rs *reportSettings, addr, domain string, r *tlsrpt.Report, gz []byte, now time.Time) error {
	a, err := smtpapp.ParseAddress(addr)
	if err != nil {
		return err
	}
	rcpt := smtpapp.Recipient{Address: addr}
	if s.app.IsLocalDomain(a.Domain) {
		mb, err := s.app.LookupMailbox(e.ctx, a)
		if err != nil {
			return fmt.Errorf("local mailbox of %s: %v", addr, err)
		}
		rcpt.Mailbox = mb
	}
	msg := tlsrpt.Mail(rs.from, addr, s.hostname, domain, r, gz, now)
	rec := &record{ID: newID(), From: "", Recipients: []smtpapp.Recipient{rcpt}, Received: now, Queued: now, DSN: true}
	return e.enqueue(s, rec, func(w io.Writer) (int64, error) {
		n, err := w.Write(msg)
		return int64(n), err
	}, func() io.Reader { return bytes.NewReader(msg) })
}

// TLSReportCounts is the current period's counts, by policy domain.
func (e *engine) TLSReportCounts() []tlsrpt.PolicyResult {
	p := e.rpt.Snapshot()
	if p == nil {
		return []tlsrpt.PolicyResult{}
	}
	out := make([]tlsrpt.PolicyResult, 0, len(p.Policies))
	for _, pr := range p.Policies {
		out = append(out, *pr)
	}
	sortPolicies(out)
	return out
}

func sortPolicies(ps []tlsrpt.PolicyResult) {
	key := func(p tlsrpt.PolicyResult) string {
		return p.Policy.Domain + " " + p.Policy.Type + " " + strings.Join(p.Policy.MXHost, ",")
	}
	sort.Slice(ps, func(i, j int) bool { return key(ps[i]) < key(ps[j]) })
}
