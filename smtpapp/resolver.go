package smtpapp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
)

// ResolverConfig configures the DNS resolver that the app's modules share
// (DNSBL, SPF, HELO checks, MX lookups).
type ResolverConfig struct {
	// Servers are the recursive resolvers to ask, as host:port (port 53 if
	// omitted), tried in order. Default: the nameservers of
	// /etc/resolv.conf.
	Servers []string `json:"servers,omitempty"`
	// Timeout for one query to one server. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// Resolver answers DNS queries for the modules.
type Resolver struct {
	servers []string
	timeout time.Duration
	udp     *dns.Client
	tcp     *dns.Client
}

// ErrNotFound is returned for NXDOMAIN and for names without records of the
// type asked.
var ErrNotFound = errors.New("no such DNS record")

// DNSError is a failure to get an answer (timeout, SERVFAIL): temporary.
type DNSError struct {
	Name string
	Err  error
}

func (e *DNSError) Error() string   { return fmt.Sprintf("DNS lookup of %s: %v", e.Name, e.Err) }
func (e *DNSError) Unwrap() error   { return e.Err }
func (e *DNSError) Temporary() bool { return true }

func (rc *ResolverConfig) build() (*Resolver, error) {
	r := &Resolver{timeout: 5 * time.Second}
	if rc != nil {
		if rc.Timeout > 0 {
			r.timeout = time.Duration(rc.Timeout)
		}
		for i, s := range rc.Servers {
			if _, _, err := net.SplitHostPort(s); err != nil {
				s = net.JoinHostPort(s, "53")
			}
			if _, err := netip.ParseAddrPort(s); err != nil {
				return nil, fmt.Errorf("servers[%d]: %q is not an IP address with optional port", i, rc.Servers[i])
			}
			r.servers = append(r.servers, s)
		}
	}
	if len(r.servers) == 0 {
		if conf, err := dns.ClientConfigFromFile("/etc/resolv.conf"); err == nil {
			for _, s := range conf.Servers {
				r.servers = append(r.servers, net.JoinHostPort(s, conf.Port))
			}
		}
	}
	if len(r.servers) == 0 {
		r.servers = []string{"127.0.0.1:53"}
	}
	r.udp = &dns.Client{Net: "udp", Timeout: r.timeout}
	r.tcp = &dns.Client{Net: "tcp", Timeout: r.timeout}
	return r, nil
}

// NewResolver makes a resolver from a config (nil: the system's servers).
func NewResolver(rc *ResolverConfig) (*Resolver, error) { return rc.build() }

// Query asks the servers in turn for name/qtype and returns the first
// answer with RCODE NOERROR or NXDOMAIN.
func (r *Resolver) Query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(1232, false)
	var lastErr error
	for _, srv := range r.servers {
		in, _, err := r.udp.ExchangeContext(ctx, m, srv)
		if err == nil && in.Truncated {
			in, _, err = r.tcp.ExchangeContext(ctx, m, srv)
		}
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if in.Rcode != dns.RcodeSuccess && in.Rcode != dns.RcodeNameError {
			lastErr = fmt.Errorf("server %s answered %s", srv, dns.RcodeToString[in.Rcode])
			continue
		}
		return in, nil
	}
	return nil, &DNSError{Name: name, Err: lastErr}
}

// records queries and returns the answer RRs of type qtype, or ErrNotFound.
func (r *Resolver) records(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	in, err := r.Query(ctx, name, qtype)
	if err != nil {
		return nil, err
	}
	var out []dns.RR
	for _, rr := range in.Answer {
		if rr.Header().Rrtype == qtype {
			out = append(out, rr)
		}
	}
	if len(out) == 0 {
		return nil, ErrNotFound
	}
	return out, nil
}

// LookupMX returns the MX records of domain sorted by preference.
func (r *Resolver) LookupMX(ctx context.Context, domain string) ([]*net.MX, error) {
	rrs, err := r.records(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	out := make([]*net.MX, 0, len(rrs))
	for _, rr := range rrs {
		mx := rr.(*dns.MX)
		out = append(out, &net.MX{Host: strings.TrimSuffix(mx.Mx, "."), Pref: mx.Preference})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Pref < out[j].Pref })
	return out, nil
}

// LookupIP returns the A and AAAA addresses of host.
func (r *Resolver) LookupIP(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, nil
	}
	var out []netip.Addr
	var firstErr error
	for _, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.records(ctx, host, t)
		if err != nil {
			if !errors.Is(err, ErrNotFound) && firstErr == nil {
				firstErr = err
			}
			continue
		}
		for _, rr := range rrs {
			switch v := rr.(type) {
			case *dns.A:
				if ip, ok := netip.AddrFromSlice(v.A.To4()); ok {
					out = append(out, ip)
				}
			case *dns.AAAA:
				if ip, ok := netip.AddrFromSlice(v.AAAA); ok {
					out = append(out, ip)
				}
			}
		}
	}
	if len(out) == 0 {
		if firstErr != nil {
			return nil, firstErr
		}
		return nil, ErrNotFound
	}
	return out, nil
}

// LookupTXT returns the TXT strings of name (each record's strings joined
// and unescaped).
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.records(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, UnescapeTXT(strings.Join(rr.(*dns.TXT).Txt, "")))
	}
	return out, nil
}

// LookupPTR returns the names that ip's reverse record points to.
func (r *Resolver) LookupPTR(ctx context.Context, ip netip.Addr) ([]string, error) {
	rev, err := dns.ReverseAddr(ip.String())
	if err != nil {
		return nil, err
	}
	rrs, err := r.records(ctx, rev, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, strings.TrimSuffix(rr.(*dns.PTR).Ptr, "."))
	}
	return out, nil
}
