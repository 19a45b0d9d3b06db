package rbl

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestTallyAnswers(t *testing.T) {
	t.Parallel()
	listed := ranges{listed: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/24")}}
	block := &zone{name: "bl.test", weight: 2, ranges: listed}
	blockCodes := &zone{name: "codes.test", weight: 1, ranges: listed,
		codes: []code{{netip.MustParsePrefix("127.0.0.4/32"), 3.5}}}
	rejecting := &zone{name: "reject.test", weight: 1, reject: true, ranges: listed}
	allow := &zone{name: "wl.test", weight: 4, allow: true, ranges: listed}
	ip := netip.MustParseAddr("192.0.2.9")
	hit := func(addrs ...string) zoneAnswer {
		var a zoneAnswer
		for _, s := range addrs {
			a.addrs = append(a.addrs, netip.MustParseAddr(s))
		}
		return a
	}
	miss := zoneAnswer{}
	for _, tc := range []struct {
		name       string
		zones      []*zone
		answers    []zoneAnswer
		threshold  float64
		total      float64
		scores     int
		rejectedBy string
		rejectText string
		action     string
		checks     string
	}{
		{name: "nothing listed", zones: []*zone{block, rejecting}, answers: []zoneAnswer{miss, miss},
			action: "score", checks: "bl.test=not_listed reject.test=not_listed"},
		{name: "weights add up", zones: []*zone{block, blockCodes}, answers: []zoneAnswer{hit("127.0.0.2"), hit("127.0.0.4")},
			total: 5.5, scores: 2, action: "score", checks: "bl.test=listed codes.test=listed"},
		{name: "threshold reached", zones: []*zone{block, blockCodes}, answers: []zoneAnswer{hit("127.0.0.2"), hit("127.0.0.4")},
			threshold: 5.5, total: 5.5, scores: 2, rejectedBy: "threshold", rejectText: "blocked using bl.test, codes.test",
			action: "reject (threshold)", checks: "bl.test=listed codes.test=listed"},
		{name: "threshold not reached", zones: []*zone{block}, answers: []zoneAnswer{hit("127.0.0.2")},
			threshold: 3, total: 2, scores: 1, action: "score", checks: "bl.test=listed"},
		{name: "rejecting zone", zones: []*zone{block, rejecting}, answers: []zoneAnswer{miss, {answer: answer{addrs: hit("127.0.0.2").addrs, txt: "see\r\nhttp://x"}}},
			total: 1, scores: 1, rejectedBy: "reject.test", rejectText: "client [192.0.2.9] blocked using reject.test; seehttp://x",
			action: "reject", checks: "bl.test=not_listed reject.test=listed"},
		{name: "allowlist overrides a refusal", zones: []*zone{rejecting, allow}, answers: []zoneAnswer{hit("127.0.0.2"), hit("127.0.0.2")},
			total: -3, scores: 2, action: "score (allowlisted, not refused)", checks: "reject.test=listed wl.test=listed"},
		{name: "allowlist overrides the threshold", zones: []*zone{block, allow}, answers: []zoneAnswer{hit("127.0.0.2"), hit("127.0.0.2")},
			threshold: 1, total: -2, scores: 2, action: "score", checks: "bl.test=listed wl.test=listed"},
		{name: "failures never reject", zones: []*zone{rejecting, block, blockCodes},
			answers:   []zoneAnswer{{skipped: true}, {waitEnded: true}, {answer: answer{err: errors.New("i/o timeout")}}},
			threshold: 0.1, action: "score", checks: "reject.test=skipped bl.test=error codes.test=error"},
		{name: "error codes are no listing", zones: []*zone{rejecting}, answers: []zoneAnswer{hit("127.255.255.254")},
			action: "score", checks: "reject.test=list_error"},
		{name: "error code and listing", zones: []*zone{block}, answers: []zoneAnswer{hit("127.255.255.254", "127.0.0.3")},
			total: 2, scores: 1, action: "score", checks: "bl.test=list_error bl.test=listed"},
	} {
		got := tallyAnswers(tc.zones, tc.answers, ip, tc.threshold)
		var checks []string
		for _, ck := range got.checks {
			checks = append(checks, ck.zone+"="+ck.result)
		}
		if got.total != tc.total || len(got.scores) != tc.scores || got.rejectedBy != tc.rejectedBy ||
			got.action != tc.action || strings.Join(checks, " ") != tc.checks {
			t.Errorf("%s: got total %v, %d scores, rejected by %q, action %q, checks %q; want %v, %d, %q, %q, %q",
				tc.name, got.total, len(got.scores), got.rejectedBy, got.action, checks, tc.total, tc.scores, tc.rejectedBy, tc.action, tc.checks)
		}
		switch {
		case (got.reject != nil) != (tc.rejectedBy != ""):
			t.Errorf("%s: reject %v, want one: %v", tc.name, got.reject, tc.rejectedBy != "")
		case got.reject != nil && !strings.Contains(got.reject.Error(), tc.rejectText):
			t.Errorf("%s: reject %q lacks %q", tc.name, got.reject, tc.rejectText)
		}
	}
}
