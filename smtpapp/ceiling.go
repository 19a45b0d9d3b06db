package smtpapp

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// ceilings outlive reloads, keyed by server name: the connections of the
// old config still count against the new one.
var ceilings = caddy.NewUsagePool()

// ceiling counts a server's open connections, in all and per client
// network (IPv4 /32, IPv6 /64), in the spirit of Postfix's process limit
// and smtpd_client_connection_count_limit.
type ceiling struct {
	mu        sync.Mutex
	total     int
	perNet    map[netip.Prefix]int
	max       int
	maxPerNet int
	stress    atomic.Bool // over half full: idle clients get less time
}

func (c *ceiling) Destruct() error { return nil }

// loadCeiling gets the server's ceiling and sets its limits to this
// config's.
func loadCeiling(name string, max, maxPerNet int) (*ceiling, error) {
	v, _, err := ceilings.LoadOrNew(name, func() (caddy.Destructor, error) {
		return &ceiling{perNet: make(map[netip.Prefix]int)}, nil
	})
	if err != nil {
		return nil, err
	}
	c := v.(*ceiling)
	c.mu.Lock()
	c.max, c.maxPerNet = max, maxPerNet
	c.mu.Unlock()
	return c, nil
}

// clientNetwork groups addresses as the ratelimit handler does.
func clientNetwork(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// admit takes a slot for ip, or returns the refusal.
func (c *ceiling) admit(ip netip.Addr) *Error {
	n := clientNetwork(ip)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.total >= c.max:
		return replyTooBusy
	case c.perNet[n] >= c.maxPerNet:
		return replyTooManyFromYou
	}
	c.total++
	c.perNet[n]++
	c.stress.Store(c.total > c.max/2)
	return nil
}

// release frees ip's slot.
func (c *ceiling) release(ip netip.Addr) {
	n := clientNetwork(ip)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.perNet[n]--; c.perNet[n] <= 0 {
		delete(c.perNet, n)
	}
	c.stress.Store(c.total > c.max/2)
}

// stressTimeout is the read timeout while the server is over half full,
// as Postfix's smtpd_timeout under stress: a flood of idle connections
// then drains in seconds, not minutes.
const stressTimeout = 10 * time.Second

// refuseAtAccept answers a connection over a ceiling and closes it, in
// the accept loop: a write to a fresh socket does not block, and the
// deadline makes sure of it.
func (s *Server) refuseAtAccept(raw net.Conn, e *Error) {
	label := "max_connections"
	if e == replyTooManyFromYou {
		label = "max_connections_per_ip"
	}
	s.logger.Info("refused", zap.String("stage", "connect"), zap.String("remote", raw.RemoteAddr().String()), zap.String("reason", label))
	s.metrics.refused(s.name, "connect", "", label)
	raw.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	raw.Write([]byte(formatReply(e)))
	raw.Close()
}
