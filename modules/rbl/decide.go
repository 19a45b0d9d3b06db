package rbl

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// decide waits for the answers and turns them into points and maybe a
// refusal; it logs and counts once per connection.
func (r *RBL) decide(ctx context.Context, c *smtpapp.Conn, p *pending) *decision {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.d != nil {
		return p.d
	}
	t := tallyAnswers(r.zones, collect(ctx, r.zones, p), p.ip, r.RejectThreshold)
	t.count()
	t.log(c.Logger(), p.ip)
	p.d = &decision{scores: t.scores, reject: t.reject}
	return p.d
}

// zoneAnswer is one zone's answer for a connection, as collected at MAIL.
type zoneAnswer struct {
	answer
	// skipped: the zone was down at connect, or its self-test is failing
	// or not finished.
	skipped bool
	// waitEnded: the connection ended before the answer came.
	waitEnded bool
}

// collect waits for each zone's answer, or for the end of the connection.
func collect(ctx context.Context, zones []*zone, p *pending) []zoneAnswer {
	answers := make([]zoneAnswer, len(zones))
	for i, z := range zones {
		e := p.entries[i]
		if e == nil || !z.state.usable(ctx) {
			answers[i].skipped = true
			continue
		}
		select {
		case <-e.done:
			answers[i].answer = e.res
		case <-ctx.Done():
			answers[i].waitEnded = true
		}
	}
	return answers
}

// tally is what the zones' answers come to for one client.
type tally struct {
	scores []smtpapp.ScoreReason // for the transaction's score
	reject error                 // nil: not refused
	// rejectedBy is the zone that refused the client, or "threshold".
	rejectedBy string
	action     string  // for the log
	total      float64 // the listings' points less the allowlists'
	allowed    bool    // an allowlist lists the client

	checks    []zoneCheck // for the metrics, in zone order
	listErrs  []zoneCheck // zones that answered error codes, for a warning
	listedIn  []string    // zone names
	listings  []string    // zone=codes, for the log
	allowings []string
	problems  []string
	skipped   []string
}

// zoneCheck is a result of one zone: a metric label, or for listErrs
// the error codes it answered.
type zoneCheck struct {
	zone   string
	result string
	codes  []string
}

// tallyAnswers turns the zones' answers into points and maybe a refusal:
// the weights and codes of the listings add up, allowlists subtract
// theirs and keep the client from being refused; the first rejecting zone
// that lists the client refuses it, or else the total reaching threshold
// (when above 0). It does no I/O.
func tallyAnswers(zones []*zone, answers []zoneAnswer, ip netip.Addr, threshold float64) *tally {
	t := &tally{action: "score"}
	var rejectZone *zone
	var rejectTXT string
	for i, z := range zones {
		if t.add(z, answers[i], ip) && z.reject && rejectZone == nil {
			rejectZone, rejectTXT = z, answers[i].txt
		}
	}
	t.verdict(ip, rejectZone, rejectTXT, threshold)
	return t
}

// add tallies one zone's answer; it reports whether the zone lists the
// client in a block list.
func (t *tally) add(z *zone, a zoneAnswer, ip netip.Addr) (blocklisted bool) {
	switch {
	case a.skipped:
		t.check(z, "skipped")
		t.skipped = append(t.skipped, z.name+" (self-test failing or not finished)")
		return false
	case a.waitEnded:
		t.check(z, "error")
		t.problems = append(t.problems, z.name+": connection ended while waiting")
		return false
	case a.err != nil:
		t.check(z, "error")
		what := "DNS failure"
		if isTimeout(a.err) {
			what = "timeout"
		}
		t.problems = append(t.problems, fmt.Sprintf("%s: %s (%v)", z.name, what, a.err))
		return false
	}
	points, codes, listErrs := z.score(a.addrs)
	if len(listErrs) > 0 {
		t.check(z, "list_error")
		t.listErrs = append(t.listErrs, zoneCheck{zone: z.name, codes: listErrs})
		t.problems = append(t.problems, fmt.Sprintf("%s: the list answered error code %s (not a listing)", z.name, strings.Join(listErrs, ",")))
	}
	if len(codes) == 0 {
		if len(listErrs) == 0 {
			t.check(z, "not_listed")
		}
		return false
	}
	t.check(z, "listed")
	codeList := strings.Join(codes, ",")
	if z.allow {
		t.allowed = true
		t.total -= points
		if points != 0 {
			t.scores = append(t.scores, smtpapp.ScoreReason{Module: "rbl", Points: -points,
				Reason: fmt.Sprintf("%s allowlisted by %s (%s)", ip, z.name, codeList)})
		}
		t.allowings = append(t.allowings, z.name+"="+codeList)
		return false
	}
	t.total += points
	t.listedIn = append(t.listedIn, z.name)
	if points != 0 {
		t.scores = append(t.scores, smtpapp.ScoreReason{Module: "rbl", Points: points,
			Reason: fmt.Sprintf("%s listed in %s (%s)", ip, z.name, codeList)})
	}
	t.listings = append(t.listings, z.name+"="+codeList)
	return true
}

// verdict refuses the client when a rejecting zone lists it, or when the
// total reaches the threshold; an allowlisting overrides both.
func (t *tally) verdict(ip netip.Addr, rejectZone *zone, rejectTXT string, threshold float64) {
	switch {
	case t.allowed:
		if rejectZone != nil {
			t.action = "score (allowlisted, not refused)"
		}
	case rejectZone != nil:
		msg := fmt.Sprintf("Service unavailable; client [%s] blocked using %s", ip, rejectZone.name)
		if reason := cleanReason(rejectTXT); reason != "" {
			msg += "; " + reason
		}
		t.reject = smtpapp.Refuse(554, [3]int{5, 7, 1}, "listed", msg)
		t.action, t.rejectedBy = "reject", rejectZone.name
	case threshold > 0 && t.total >= threshold:
		t.reject = smtpapp.Refuse(554, [3]int{5, 7, 1}, "listed", fmt.Sprintf("Service unavailable; client [%s] blocked using %s",
			ip, strings.Join(t.listedIn, ", ")))
		t.action, t.rejectedBy = "reject (threshold)", "threshold"
	}
}

func (t *tally) check(z *zone, result string) {
	t.checks = append(t.checks, zoneCheck{zone: z.name, result: result})
}

// count adds the tally to the metrics.
func (t *tally) count() {
	for _, ck := range t.checks {
		metricChecks.WithLabelValues(ck.zone, ck.result).Inc()
	}
	if t.rejectedBy != "" {
		metricRejections.WithLabelValues(t.rejectedBy).Inc()
	}
}

// log tells what the lists said: listings at info, failures to check at
// warn, skipped zones at debug; nothing when every list was asked and
// none lists the client.
func (t *tally) log(logger *zap.Logger, ip netip.Addr) {
	for _, le := range t.listErrs {
		logger.Warn("DNS list answered an error code; check the resolver and the list's terms",
			zap.String("zone", le.zone), zap.Strings("codes", le.codes))
	}
	if len(t.listings) == 0 && len(t.allowings) == 0 && len(t.problems) == 0 && len(t.skipped) == 0 {
		return
	}
	fields := []zap.Field{zap.String("ip", ip.String()), zap.Strings("listed_in", t.listings),
		zap.Strings("allowlisted_by", t.allowings), zap.Float64("points", t.total), zap.String("action", t.action)}
	if len(t.problems) > 0 {
		fields = append(fields, zap.Strings("problems", t.problems))
	}
	if len(t.skipped) > 0 {
		fields = append(fields, zap.Strings("skipped", t.skipped))
	}
	logger = logger.With(zap.String("module", "smtp.handlers.rbl"))
	switch {
	case len(t.listedIn) > 0 || t.allowed:
		logger.Info("DNS list results", fields...)
	case len(t.problems) > 0:
		logger.Warn("DNS lists could not all be checked", fields...)
	default:
		logger.Debug("DNS lists skipped", fields...)
	}
}
