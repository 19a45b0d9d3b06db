package rbl

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func TestQueryName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ ip, want string }{
		{"192.0.2.99", "99.2.0.192.bl.test."},
		{"::ffff:192.0.2.99", "99.2.0.192.bl.test."}, // IPv4-mapped: as IPv4
		{"2001:db8:1:2::abcd", "d.c.b.a.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test."},
	} {
		if got := queryName(netip.MustParseAddr(tc.ip), "bl.test"); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.ip, got, tc.want)
		}
	}
}

func TestCleanReason(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"  Listed\x00\x1b[31m by\r\n us\t see  http://x/?1 ": "Listed[31m by us see http://x/?1",
		"caf\u00e9": "caf?",
		"":          "",
	} {
		if got := cleanReason(in); got != want {
			t.Errorf("cleanReason(%q) = %q, want %q", in, got, want)
		}
	}
	if got := cleanReason(string(make([]byte, 0)) + fmt.Sprintf("%0500d", 1)); len(got) != 200 {
		t.Errorf("long reason: %d characters, want 200", len(got))
	}
}

func TestUnescapeTXT(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{`a\"b\\c\001d\255`: "a\"b\\c\x01d\xff", "plain": "plain", `end\`: `end\`} {
		if got := smtpapp.UnescapeTXT(in); got != want {
			t.Errorf("UnescapeTXT(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestScoreCodes(t *testing.T) {
	t.Parallel()
	z := &zone{weight: 1, ranges: ranges{listed: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/24")},
		errs: []netip.Prefix{netip.MustParsePrefix("127.0.0.255/32")}}, codes: []code{
		{netip.MustParsePrefix("127.0.0.4/32"), 4}, {netip.MustParsePrefix("127.0.0.0/29"), 2},
	}}
	a := func(s ...string) (out []netip.Addr) {
		for _, x := range s {
			out = append(out, netip.MustParseAddr(x))
		}
		return out
	}
	for _, tc := range []struct {
		addrs  []netip.Addr
		points float64
		errs   int
	}{
		{a("127.0.0.4"), 4, 0},
		{a("127.0.0.4", "127.0.0.4"), 4, 0},              // duplicates once
		{a("127.0.0.4", "127.0.0.3"), 6, 0},              // distinct codes add up
		{a("127.0.0.9", "127.0.0.10"), 1, 0},             // no code: the weight once
		{a("127.255.255.254"), 0, 1},                     // error code: never listed
		{a("127.0.1.2", "10.0.0.1"), 0, 0},               // outside the listed range
		{a("127.0.0.4", "127.255.255.255"), 4, 1},        // both
		{a("127.0.0.2", "127.0.0.4", "127.0.0.9"), 7, 0}, // 2 + 4 + weight
	} {
		p, _, errs := z.score(tc.addrs)
		if p != tc.points || len(errs) != tc.errs {
			t.Errorf("%v: got %v points, %d errors; want %v, %d", tc.addrs, p, len(errs), tc.points, tc.errs)
		}
	}
}

// BenchmarkLookup5Zones measures what the RBL check adds for one client
// with 5 zones: starting the queries and collecting the answers. "cold"
// asks the DNS server (a new client address each time), "cached" answers
// from the cache. The rtt5ms variants make the DNS server wait 5ms per
// answer: the 5 queries run in parallel, so a cold check costs one round
// trip, not five.
func BenchmarkLookup5Zones(b *testing.B) {
	d := testenv.StartDNS(b)
	res, err := smtpapp.NewResolver(&smtpapp.ResolverConfig{Servers: []string{d.Addr}, Timeout: caddy.Duration(2 * time.Second)})
	if err != nil {
		b.Fatal(err)
	}
	var states []*zoneState
	for i := range 5 {
		p := zoneParams{name: fmt.Sprintf("z%d.bench.test", i), timeout: 2 * time.Second,
			ranges: ranges{listed: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/24")}}, wantTXT: true, maxSize: 1 << 20,
			servers: "bench " + d.Addr}
		s, err := loadZone(p, res, zap.NewNop())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { zones.Delete(p.key()) })
		states = append(states, s)
	}
	check := func(ip netip.Addr) {
		entries := make([]*entry, len(states))
		for i, s := range states {
			entries[i], _ = s.lookup(ip)
		}
		for _, e := range entries {
			<-e.done
			if e.res.err != nil {
				b.Fatal(e.res.err)
			}
		}
	}
	var n uint32
	nextIP := func() netip.Addr {
		n++
		return netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
	}
	for _, rtt := range []time.Duration{0, 5 * time.Millisecond} {
		suffix := ""
		if rtt > 0 {
			suffix = "-rtt5ms"
		}
		b.Run("cold"+suffix, func(b *testing.B) {
			before := d.Queries.Load()
			for b.Loop() {
				b.StopTimer()
				ip := nextIP()
				if rtt > 0 {
					for _, s := range states {
						d.Delay(queryName(ip, s.name), rtt)
					}
				}
				b.StartTimer()
				check(ip)
			}
			b.ReportMetric(float64(d.Queries.Load()-before)/float64(b.N), "queries/op")
		})
		b.Run("cached"+suffix, func(b *testing.B) {
			ip := nextIP()
			if rtt > 0 {
				for _, s := range states {
					d.Delay(queryName(ip, s.name), rtt)
				}
			}
			check(ip)
			before := d.Queries.Load()
			for b.Loop() {
				check(ip)
			}
			b.ReportMetric(float64(d.Queries.Load()-before)/float64(b.N), "queries/op")
		})
	}
}
