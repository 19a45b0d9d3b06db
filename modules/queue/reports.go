package queue

import (
	"bytes"
	"cmp"
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

// reportLoop sends the TLS reports of each period once it ends (aligned
// periods: at their UTC boundary; others: every interval), retries the
// reports not yet delivered when they are due, and saves the counts to
// storage every countsSaveInterval, until the engine stops.
func (e *engine) reportLoop() {
	defer close(e.reportDone)
	last := time.Now()
	for {
		wait := countsSaveInterval
		if rs := e.settings().transport.reports; rs != nil {
			next := last.Add(rs.interval)
			if rs.align > 0 {
				next = time.Now().Truncate(rs.align).Add(rs.align)
			}
			wait = min(wait, max(time.Until(next), time.Second))
		}
		select {
		case <-e.stop:
			return // Destruct saves the counts
		case <-time.After(wait):
			e.saveCounts()
			s := e.settings()
			if rs := s.transport.reports; rs != nil {
				take := takeNone
				switch {
				case rs.align > 0:
					take = takeEnded
				case time.Since(last) >= rs.interval:
					take, last = takeAll, time.Now()
				}
				e.sendReports(e.ctx, take, false)
			}
		}
	}
}

// What sendReports makes reports of.
const (
	takeNone  = iota // none: only retry the reports kept
	takeEnded        // the periods that ended
	takeAll          // all periods, the current one ending now
)

// countsSaveInterval is how often the TLS report counts go to storage
// (and undelivered reports are looked at).
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
	// Pending are the addresses that failed this time: the report is
	// kept in storage and tried again later.
	Pending []string `json:"pending,omitempty"`
	// Dropped are the addresses given up on (give_up passed).
	Dropped []string `json:"dropped,omitempty"`
	Errors  []string `json:"errors,omitempty"`
}

// SendTLSReports ends the current reporting period, builds a report for
// each policy domain counted in it, and sends every report not yet
// delivered (those of earlier periods too, whether due or not) to the
// addresses of its domain's _smtp._tls record: mailto: through this
// queue, https: by POST.
func (e *engine) SendTLSReports(ctx context.Context) []ReportResult {
	return e.sendReports(ctx, takeAll, true)
}

// reportBackoff is the wait before the next try of a report that failed
// attempts times.
func reportBackoff(attempts int) time.Duration {
	if attempts > 7 {
		return 6 * time.Hour
	}
	return min(5*time.Minute<<max(attempts-1, 0), 6*time.Hour)
}

// sendReports builds the reports of the periods taken (see take*) and
// keeps them in storage, then delivers the reports kept there that
// are due (all of them with force). A report is kept per domain and
// address until it is delivered: an HTTPS POST answered 2xx, or a
// message in the queue's spool for mailto:. Those that fail are tried
// again with growing delays and dropped after give_up.
func (e *engine) sendReports(ctx context.Context, take int, force bool) []ReportResult {
	s := e.settings()
	rs := s.transport.reports
	if rs == nil {
		return nil
	}
	e.reportMu.Lock()
	defer e.reportMu.Unlock()
	now := time.Now()
	var order []string
	results := map[string]*ReportResult{}
	resultOf := func(p *tlsrpt.Pending) *ReportResult {
		r := results[p.Report.ReportID]
		if r == nil {
			r = &ReportResult{Domain: p.Domain, ID: p.Report.ReportID}
			results[p.Report.ReportID] = r
			order = append(order, p.Report.ReportID)
		}
		return r
	}
	if take != takeNone {
		for _, period := range e.rpt.Take(now, take == takeAll) {
			for domain, r := range period.ByDomain(rs.org, rs.contact, newID()+"@"+s.hostname) {
				p := &tlsrpt.Pending{Domain: domain, Report: r, Created: now, NextTry: now}
				if err := e.outbox.Put(ctx, p); err != nil {
					// Not kept: try it now all the same.
					s.logger.Error("storing a TLS report", zap.String("domain", domain), zap.Error(err))
				}
				e.deliverReport(ctx, s, rs, p, now, resultOf)
			}
		}
		// The counts are cleared in storage only once the reports are.
		e.saveCounts()
	}
	items, err := e.outbox.List(ctx)
	if err != nil {
		s.logger.Warn("reading the TLS reports not yet sent", zap.Error(err))
	}
	for _, p := range items {
		if !force && now.Before(p.NextTry) || results[p.Report.ReportID] != nil {
			continue // not due, or tried in this call
		}
		if ctx.Err() != nil {
			break
		}
		e.deliverReport(ctx, s, rs, p, now, resultOf)
	}
	out := make([]ReportResult, 0, len(order))
	for _, id := range order {
		out = append(out, *results[id])
	}
	return out
}

// deliverReport tries a pending report once: a report without an address
// first gets its domain's addresses (one pending report each, tried at
// once).
func (e *engine) deliverReport(ctx context.Context, s *settings, rs *reportSettings, p *tlsrpt.Pending, now time.Time,
	resultOf func(*tlsrpt.Pending) *ReportResult) {
	res := resultOf(p)
	method := "dns"
	if p.RUA != "" {
		method = "https"
		if _, ok := tlsrpt.MailtoAddress(p.RUA); ok {
			method = "mailto"
		}
	}
	if now.Sub(p.Created) >= rs.giveUp {
		metricTLSReports.WithLabelValues(method, "dropped").Inc()
		s.logger.Warn("TLS report dropped: not delivered in time", zap.String("domain", p.Domain), zap.String("rua", p.RUA),
			zap.String("report_id", p.Report.ReportID), zap.Int("attempts", p.Attempts), zap.String("last_error", p.LastError),
			zap.Duration("give_up", rs.giveUp))
		res.Dropped = append(res.Dropped, cmp.Or(p.RUA, "_smtp._tls."+p.Domain))
		e.dropReport(ctx, s, p)
		return
	}
	if p.RUA == "" {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		txts, err := s.lookupTXT(lctx, "_smtp._tls."+p.Domain)
		cancel()
		if err != nil {
			e.reportFailed(ctx, s, p, now, res, method, fmt.Errorf("looking up _smtp._tls.%s: %v", p.Domain, err))
			return
		}
		ruas, err := tlsrpt.ParseTXT(txts)
		if err != nil {
			s.logger.Info("no TLS report sent", zap.String("domain", p.Domain), zap.Error(err))
			res.Errors = append(res.Errors, err.Error())
			e.dropReport(ctx, s, p)
			return
		}
		var subs []*tlsrpt.Pending
		for _, u := range ruas {
			sub := &tlsrpt.Pending{Domain: p.Domain, RUA: u, Report: p.Report, Created: p.Created, NextTry: now}
			if err := e.outbox.Put(ctx, sub); err != nil {
				s.logger.Error("storing a TLS report", zap.String("domain", p.Domain), zap.String("rua", u), zap.Error(err))
			}
			subs = append(subs, sub)
		}
		e.dropReport(ctx, s, p)
		for _, sub := range subs {
			e.deliverReport(ctx, s, rs, sub, now, resultOf)
		}
		return
	}
	gz, err := p.Report.Gzip()
	if err == nil {
		if addr, ok := tlsrpt.MailtoAddress(p.RUA); ok {
			err = e.mailReport(s, rs, addr, p.Domain, p.Report, gz, now)
		} else {
			pctx, cancel := context.WithTimeout(ctx, time.Minute)
			err = tlsrpt.Post(pctx, rs.client, p.RUA, gz)
			cancel()
		}
	}
	if err != nil {
		e.reportFailed(ctx, s, p, now, res, method, err)
		return
	}
	metricTLSReports.WithLabelValues(method, "ok").Inc()
	res.Sent = append(res.Sent, p.RUA)
	s.logger.Info("TLS report sent", zap.String("domain", p.Domain), zap.String("rua", p.RUA),
		zap.String("report_id", p.Report.ReportID), zap.Int("attempt", p.Attempts+1))
	e.dropReport(ctx, s, p)
}

// reportFailed keeps a report for a later try.
func (e *engine) reportFailed(ctx context.Context, s *settings, p *tlsrpt.Pending, now time.Time, res *ReportResult, method string, err error) {
	p.Attempts++
	p.NextTry = now.Add(reportBackoff(p.Attempts))
	p.LastError = oneLine(err.Error(), 300)
	metricTLSReports.WithLabelValues(method, "error").Inc()
	where := cmp.Or(p.RUA, "_smtp._tls."+p.Domain)
	res.Pending = append(res.Pending, where)
	res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", where, err))
	s.logger.Warn("sending a TLS report failed; kept for a later try", zap.String("domain", p.Domain), zap.String("rua", p.RUA),
		zap.Int("attempts", p.Attempts), zap.Time("next_try", p.NextTry), zap.Error(err))
	if perr := e.outbox.Put(ctx, p); perr != nil {
		s.logger.Error("storing a TLS report for a later try", zap.String("domain", p.Domain), zap.Error(perr))
	}
}

func (e *engine) dropReport(ctx context.Context, s *settings, p *tlsrpt.Pending) {
	if err := e.outbox.Delete(ctx, p); err != nil {
		s.logger.Error("removing a TLS report from storage", zap.String("domain", p.Domain), zap.String("rua", p.RUA), zap.Error(err))
	}
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
