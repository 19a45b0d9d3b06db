package rbl

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// zones holds the state of each list (answer cache, self-test health)
// across config reloads, keyed by everything that state depends on.
var zones = caddy.NewUsagePool()

const (
	// maxTTL caps how long an answer is cached, whatever the list says,
	// so that a delisting is seen within the hour.
	maxTTL = time.Hour
	// defaultNegativeTTL applies to "not listed" answers without an SOA.
	defaultNegativeTTL = 5 * time.Minute
	// retestAfterErrors consecutive query failures start a self-test at
	// once (at most every retestMinGap) instead of at the next interval.
	retestAfterErrors = 3
	retestMinGap      = 30 * time.Second
)

// Health of a zone, from its self-test.
const (
	healthUnknown int32 = iota // first test not finished
	healthUp
	healthDown
)

// errorCodes are the answers lists use to report errors (query refused,
// over quota...). They are never a listing.
var errorCodes = netip.MustParsePrefix("127.255.255.0/24")

// zoneState is one list's shared state: its cache and health.
type zoneState struct {
	name      string
	timeout   time.Duration
	interval  time.Duration
	ranges    ranges
	wantTXT   bool
	maxSize   int
	resolver  atomic.Pointer[smtpapp.Resolver]
	logger    atomic.Pointer[zap.Logger]
	health    atomic.Int32
	firstTest chan struct{} // closed when the first self-test is over
	errors    atomic.Int32  // consecutive failed queries
	kick      chan struct{}
	stop      chan struct{}
	lastTest  atomic.Int64 // unix nanoseconds

	mu    sync.Mutex
	cache map[netip.Addr]*entry
}

// entry is a cached answer, or a query in flight (done still open).
type entry struct {
	done    chan struct{}
	res     answer
	expires time.Time // zero: not cacheable
}

// answer is what a list said about one address.
type answer struct {
	addrs []netip.Addr // the A records
	txt   string       // the TXT reason, when listed
	err   error        // the query failed (timeout, SERVFAIL...)
}

type zoneParams struct {
	name     string
	timeout  time.Duration
	interval time.Duration // 0: no self-test
	ranges   ranges
	wantTXT  bool
	maxSize  int
	servers  string // the resolver's identity
}

func (p zoneParams) key() string {
	return fmt.Sprintf("rbl|%s|%s|%s|%v|%v|%v|%d|%s", p.name, p.timeout, p.interval, p.ranges.listed, p.ranges.errs, p.wantTXT, p.maxSize, p.servers)
}

// loadZone gets the shared state for p (starting its self-test if new).
func loadZone(p zoneParams, res *smtpapp.Resolver, logger *zap.Logger) (*zoneState, error) {
	v, _, err := zones.LoadOrNew(p.key(), func() (caddy.Destructor, error) {
		s := &zoneState{
			name: p.name, timeout: p.timeout, interval: p.interval, ranges: p.ranges,
			wantTXT: p.wantTXT, maxSize: p.maxSize,
			firstTest: make(chan struct{}), kick: make(chan struct{}, 1), stop: make(chan struct{}),
			cache: map[netip.Addr]*entry{},
		}
		s.resolver.Store(res)
		s.logger.Store(logger)
		if p.interval <= 0 {
			s.health.Store(healthUp)
			close(s.firstTest)
			metricZoneUp.WithLabelValues(s.name).Set(1)
		} else {
			go s.run()
		}
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	s := v.(*zoneState)
	// The newest config's resolver and logger (same servers: the key says so).
	s.resolver.Store(res)
	s.logger.Store(logger)
	return s, nil
}

// Destruct stops the self-test when the last config using the zone goes.
func (s *zoneState) Destruct() error {
	close(s.stop)
	return nil
}

// queryName is the name to look up for ip in zone: the address reversed
// (IPv4 by octets, IPv6 by nibbles, RFC 5782 2.1 and 2.4).
func queryName(ip netip.Addr, zone string) string {
	ip = ip.Unmap()
	var b strings.Builder
	if ip.Is4() {
		a := ip.As4()
		fmt.Fprintf(&b, "%d.%d.%d.%d.", a[3], a[2], a[1], a[0])
	} else {
		a := ip.As16()
		const hex = "0123456789abcdef"
		for i := len(a) - 1; i >= 0; i-- {
			b.WriteByte(hex[a[i]&0xf])
			b.WriteByte('.')
			b.WriteByte(hex[a[i]>>4])
			b.WriteByte('.')
		}
	}
	b.WriteString(zone)
	b.WriteByte('.')
	return b.String()
}

// ranges tell listings from error codes in a list's answers.
type ranges struct {
	listed []netip.Prefix
	errs   []netip.Prefix // besides errorCodes
}

// isError reports whether an answer is one of the list's error codes.
func (r ranges) isError(a netip.Addr) bool {
	if errorCodes.Contains(a) {
		return true
	}
	for _, p := range r.errs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// isListed reports whether an answer address counts as a listing.
func (r ranges) isListed(a netip.Addr) bool {
	if r.isError(a) {
		return false
	}
	for _, p := range r.listed {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// lookup returns the cached answer for ip, or starts a query. It never
// blocks on the network. hit reports a cache hit (or a query in flight).
func (s *zoneState) lookup(ip netip.Addr) (e *entry, hit bool) {
	now := time.Now()
	s.mu.Lock()
	if e := s.cache[ip]; e != nil {
		select {
		case <-e.done:
			if now.Before(e.expires) {
				s.mu.Unlock()
				return e, true
			}
		default:
			s.mu.Unlock()
			return e, true // in flight: share it
		}
	}
	e = &entry{done: make(chan struct{})}
	if len(s.cache) >= s.maxSize {
		s.evict(now)
	}
	s.cache[ip] = e
	s.mu.Unlock()
	go s.query(ip, e)
	return e, false
}

// evict drops expired answers, then arbitrary ones down to 3/4 of the
// maximum. s.mu is held.
func (s *zoneState) evict(now time.Time) {
	for ip, e := range s.cache {
		select {
		case <-e.done:
			if !now.Before(e.expires) {
				delete(s.cache, ip)
			}
		default:
		}
	}
	for ip, e := range s.cache {
		if len(s.cache) < s.maxSize*3/4 {
			return
		}
		select {
		case <-e.done:
			delete(s.cache, ip)
		default:
		}
	}
}

// query asks the list about ip and fills e.
func (s *zoneState) query(ip netip.Addr, e *entry) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	res, ttl, err := s.ask(ctx, queryName(ip, s.name), s.wantTXT)
	e.res = res
	if err == nil && ttl > 0 {
		e.expires = time.Now().Add(ttl)
	}
	metricQueryDuration.WithLabelValues(s.name).Observe(time.Since(start).Seconds())
	metricQueries.WithLabelValues(s.name, s.classify(res)).Inc()
	if err != nil {
		s.mu.Lock()
		if s.cache[ip] == e {
			delete(s.cache, ip) // failures are not cached
		}
		s.mu.Unlock()
		s.queryFailed()
	} else {
		s.errors.Store(0)
	}
	close(e.done)
}

// classify names an answer for metrics and logs.
func (s *zoneState) classify(a answer) string {
	if a.err != nil {
		return "error"
	}
	listErr := false
	for _, ip := range a.addrs {
		if s.ranges.isListed(ip) {
			return "listed"
		}
		if s.ranges.isError(ip) {
			listErr = true
		}
	}
	if listErr {
		return "list_error"
	}
	return "not_listed"
}

// ask queries the A records of name (and its TXT when listed) and returns
// the answer and how long it may be cached.
func (s *zoneState) ask(ctx context.Context, name string, wantTXT bool) (answer, time.Duration, error) {
	res := s.resolver.Load()
	in, err := res.Query(ctx, name, dns.TypeA)
	if err != nil {
		return answer{err: err}, 0, err
	}
	var a answer
	ttl := uint32(0)
	first := true
	for _, rr := range in.Answer {
		if ar, ok := rr.(*dns.A); ok {
			if ip, ok := netip.AddrFromSlice(ar.A.To4()); ok {
				a.addrs = append(a.addrs, ip)
			}
			if first || ar.Hdr.Ttl < ttl {
				ttl, first = ar.Hdr.Ttl, false
			}
		}
	}
	cache := time.Duration(ttl) * time.Second
	if len(a.addrs) == 0 {
		cache = defaultNegativeTTL
		for _, rr := range in.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				cache = time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
			}
		}
	}
	cache = min(cache, maxTTL)
	if wantTXT {
		for _, ip := range a.addrs {
			if s.ranges.isListed(ip) {
				if in, err := res.Query(ctx, name, dns.TypeTXT); err == nil {
					var txts []string
					for _, rr := range in.Answer {
						if t, ok := rr.(*dns.TXT); ok {
							txts = append(txts, smtpapp.UnescapeTXT(strings.Join(t.Txt, "")))
						}
					}
					a.txt = strings.Join(txts, " ")
				}
				break
			}
		}
	}
	return a, cache, nil
}

// queryFailed counts a failure; repeated failures test the zone at once.
func (s *zoneState) queryFailed() {
	if s.interval <= 0 || s.errors.Add(1) < retestAfterErrors {
		return
	}
	if time.Since(time.Unix(0, s.lastTest.Load())) < retestMinGap {
		return
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// usable waits (up to ctx) for the first self-test and reports whether
// the zone may be used.
func (s *zoneState) usable(ctx context.Context) bool {
	select {
	case <-s.firstTest:
	case <-ctx.Done():
		return false
	}
	return s.health.Load() == healthUp
}

// run tests the zone at once, then every interval (every minute at most
// while it fails), and when queries keep failing.
func (s *zoneState) run() {
	s.selfTest()
	close(s.firstTest)
	for {
		wait := s.interval
		if s.health.Load() == healthDown {
			wait = min(wait, time.Minute)
		}
		t := time.NewTimer(wait)
		select {
		case <-s.stop:
			t.Stop()
			return
		case <-s.kick:
			t.Stop()
		case <-t.C:
		}
		s.selfTest()
	}
}

// selfTest queries the RFC 5782 test entries: 127.0.0.2 must be listed
// and 127.0.0.1 must not.
func (s *zoneState) selfTest() {
	s.lastTest.Store(time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	type result struct {
		a   answer
		err error
	}
	var pos, neg result
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		pos.a, _, pos.err = s.ask(ctx, queryName(netip.AddrFrom4([4]byte{127, 0, 0, 2}), s.name), false)
	}()
	go func() {
		defer wg.Done()
		neg.a, _, neg.err = s.ask(ctx, queryName(netip.AddrFrom4([4]byte{127, 0, 0, 1}), s.name), false)
	}()
	wg.Wait()
	var problem string
	switch {
	case pos.err != nil:
		problem = "test entry 127.0.0.2 got no answer: " + pos.err.Error()
	case neg.err != nil:
		problem = "test entry 127.0.0.1 got no answer: " + neg.err.Error()
	case s.classify(pos.a) != "listed":
		problem = fmt.Sprintf("test entry 127.0.0.2 is not listed (answer %v)", pos.a.addrs)
	case s.classify(neg.a) == "listed":
		problem = fmt.Sprintf("test entry 127.0.0.1 is listed (answer %v): the list would list everyone", neg.a.addrs)
	}
	logger := s.logger.Load()
	old := s.health.Load()
	if problem != "" {
		s.health.Store(healthDown)
		metricZoneUp.WithLabelValues(s.name).Set(0)
		metricSelfTests(s.name, "fail")
		if old != healthDown {
			logger.Warn("DNS list fails its self-test; skipping it until it passes",
				zap.String("zone", s.name), zap.String("problem", problem))
		}
		return
	}
	s.health.Store(healthUp)
	s.errors.Store(0)
	metricZoneUp.WithLabelValues(s.name).Set(1)
	metricSelfTests(s.name, "pass")
	if old == healthDown {
		logger.Info("DNS list passes its self-test again", zap.String("zone", s.name))
	}
}

func metricSelfTests(zone, result string) {
	metricSelfTestsTotal.WithLabelValues(zone, result).Inc()
}

// isTimeout tells a timeout from other DNS failures, for logs.
func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout")
}
