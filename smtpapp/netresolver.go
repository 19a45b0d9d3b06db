package smtpapp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
)

// NetResolver gives the app's resolver the shape of *net.Resolver that
// libraries take (SPF, DKIM, DMARC), with its errors as *net.DNSError (IsNotFound for
// NXDOMAIN and empty answers, IsTemporary for failures).
type NetResolver struct{ R *Resolver }

func netError(name string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrNotFound) {
		return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	var de *DNSError
	if errors.As(err, &de) {
		timeout := errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout")
		return &net.DNSError{Err: err.Error(), Name: name, IsTemporary: true, IsTimeout: timeout}
	}
	return &net.DNSError{Err: err.Error(), Name: name}
}

// LookupTXT returns the TXT records of name, each record's strings joined.
func (n NetResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	txts, err := n.R.LookupTXT(ctx, name)
	return txts, netError(name, err)
}

func (n NetResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	mxs, err := n.R.LookupMX(ctx, name)
	return mxs, netError(name, err)
}

func (n NetResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ips, err := n.R.LookupIP(ctx, host)
	if err != nil {
		return nil, netError(host, err)
	}
	out := make([]net.IPAddr, 0, len(ips))
	for _, ip := range ips {
		out = append(out, net.IPAddr{IP: net.IP(ip.AsSlice())})
	}
	return out, nil
}

func (n NetResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return nil, &net.DNSError{Err: "unrecognized address", Name: addr}
	}
	names, err := n.R.LookupPTR(ctx, ip)
	return names, netError(addr, err)
}

// UnescapeTXT turns a TXT string as miekg/dns presents it (\" \\ and
// \DDD escapes) back into its bytes.
func UnescapeTXT(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			n := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0')
			if n <= 255 {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i+1])
		i++
	}
	return b.String()
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
