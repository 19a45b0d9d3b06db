package testenv

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNS is a real authoritative DNS server on 127.0.0.1 (UDP and TCP, same
// port) answering from records the test sets.
type DNS struct {
	Addr    string // host:port
	mu      sync.Mutex
	records map[string][]dns.RR // key: lower-case fqdn + "/" + type
	delay   map[string]time.Duration
	fail    map[string]int // rcode to answer with
	Queries atomic.Int64
}

// StartDNS starts the server; it stops when the test ends.
func StartDNS(t testing.TB) *DNS {
	t.Helper()
	d := &DNS{records: map[string][]dns.RR{}, delay: map[string]time.Duration{}, fail: map[string]int{}}
	d.Addr = serveDNS(t, d)
	return d
}

// serveDNS serves h on one free port of 127.0.0.1, UDP and TCP, until the
// test ends, and returns the address.
func serveDNS(t testing.TB, h dns.Handler) string {
	t.Helper()
	// UDP and TCP on one port: the UDP port may be taken for TCP; retry.
	var pc net.PacketConn
	var ln net.Listener
	for try := 0; ; try++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if try == 20 {
			t.Fatalf("DNS: no port free for both UDP and TCP: %v", err)
		}
	}
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
	return pc.LocalAddr().String()
}

// Add adds records in zone-file syntax, e.g. "example.org. 300 IN MX 10 mx.example.org.".
func (d *DNS) Add(t testing.TB, lines ...string) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatalf("bad RR %q: %v", l, err)
		}
		k := key(rr.Header().Name, rr.Header().Rrtype)
		d.records[k] = append(d.records[k], rr)
	}
}

// Clear removes every record.
func (d *DNS) Clear() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.records = map[string][]dns.RR{}
}

// Delay makes answers for name (any type) wait.
func (d *DNS) Delay(name string, wait time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.delay[strings.ToLower(dns.Fqdn(name))] = wait
}

// Fail makes queries for name answer with rcode (e.g. dns.RcodeServerFailure).
func (d *DNS) Fail(name string, rcode int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail[strings.ToLower(dns.Fqdn(name))] = rcode
}

func key(name string, t uint16) string {
	return strings.ToLower(dns.Fqdn(name)) + "/" + dns.TypeToString[t]
}

// ServeDNS answers from the records: NXDOMAIN when the name has none at
// all, NOERROR with no answer when it has others.
func (d *DNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	d.Queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	d.mu.Lock()
	wait := d.delay[name]
	rcode, failing := d.fail[name]
	answer := append([]dns.RR(nil), d.records[key(name, q.Qtype)]...)
	exists := false
	for k := range d.records {
		if strings.HasPrefix(k, name+"/") {
			exists = true
			break
		}
	}
	d.mu.Unlock()
	if wait > 0 {
		time.Sleep(wait)
	}
	switch {
	case failing:
		m.Rcode = rcode
	case len(answer) > 0:
		m.Answer = answer
	case !exists:
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}
