package queue

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-smtp/caddy-smtp/modules/queue/dane"
)

// Outbound connection reuse (as Postfix's connection cache): after a
// delivery, the connection to an MX host (or the smarthost) stays open
// for a while, and the next message to the same host, address and port,
// under the same transport security policy and EHLO name, is sent on it
// after an RSET (pipelined with MAIL, RCPT and DATA when the server offers
// PIPELINING). A connection the server closed in the meantime is noticed
// at that RSET, before anything of the message was sent, and the message
// goes on a new connection.

// ConnectionCache configures the reuse of outbound connections. On by
// default.
type ConnectionCache struct {
	// Disable closes every connection after its delivery (QUIT).
	Disable bool `json:"disable,omitempty"`
	// MaxMessages is the number of transactions sent on one connection
	// before it is closed. Default: 100.
	MaxMessages int `json:"max_messages,omitempty"`
	// IdleTimeout is how long an unused connection is kept open for the
	// next message. Default: 2s (Postfix's
	// smtp_connection_cache_time_limit): long enough for a burst, short
	// enough not to hold the receiver's resources.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`
	// MaxIdle is the number of unused connections kept open at once, for
	// all destinations together. Default: max_concurrency.
	MaxIdle int `json:"max_idle,omitempty"`
}

// cacheSettings is the connection reuse in effect (maxMessages 0: off).
type cacheSettings struct {
	maxMessages int
	idleTimeout time.Duration
	maxIdle     int
}

func (c *ConnectionCache) provision(maxConc int) (cacheSettings, error) {
	cs := cacheSettings{maxMessages: 100, idleTimeout: 2 * time.Second, maxIdle: maxConc}
	if c == nil {
		return cs, nil
	}
	if c.Disable {
		return cacheSettings{}, nil
	}
	if err := setDurations(durationField{"idle_timeout", c.IdleTimeout, &cs.idleTimeout}); err != nil {
		return cs, err
	}
	for _, f := range []struct {
		name string
		v    int
		dst  *int
	}{{"max_messages", c.MaxMessages, &cs.maxMessages}, {"max_idle", c.MaxIdle, &cs.maxIdle}} {
		if f.v < 0 || f.v > 100000 {
			return cs, fmt.Errorf("%s: %d is out of range (1-100000)", f.name, f.v)
		}
		if f.v > 0 {
			*f.dst = f.v
		}
	}
	return cs, nil
}

// connCache holds the idle connections of an engine.
type connCache struct {
	mu     sync.Mutex
	idle   map[string][]*cachedConn // by connKey, most recent last
	n      int
	closed bool
}

// cachedConn is an idle connection and what its session established.
type cachedConn struct {
	c        *client
	key      string
	uses     int    // transactions sent on it so far
	tlsState string // metric label: none, unverified, verified
	// The TLS outcome of the session, copied into the policy of the
	// attempt that reuses it.
	tlsUp           bool
	failure, detail string
	timer           *time.Timer
}

// connKey identifies the connections that a delivery may reuse: the same
// EHLO name, host, address and port, and the same transport security
// policy (kind, requirements, DANE records), so that a connection is only
// reused by a message whose policy it was set up for. The smarthost's key
// carries its account.
func connKey(s *settings, h hop, ip netip.Addr) string {
	var b strings.Builder
	b.WriteString(s.hostname)
	b.WriteByte('|')
	b.WriteString(h.host)
	b.WriteByte('|')
	b.WriteString(ip.String())
	b.WriteByte('|')
	b.WriteString(h.port)
	b.WriteByte('|')
	switch {
	case h.smarthost:
		b.WriteString("smarthost|" + s.smarthost.username)
	case h.pol != nil:
		b.WriteString(h.pol.kind + "|" + strconv.FormatBool(h.pol.mustTLS) + "|" + strconv.FormatBool(h.pol.verify))
		for _, r := range dane.Strings(h.pol.tlsa) {
			b.WriteString("|" + r)
		}
	}
	return b.String()
}

// get takes an idle connection for key, or nil.
func (cc *connCache) get(key string) *cachedConn {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	list := cc.idle[key]
	if len(list) == 0 {
		return nil
	}
	x := list[len(list)-1]
	list[len(list)-1] = nil
	if len(list) == 1 {
		delete(cc.idle, key)
	} else {
		cc.idle[key] = list[:len(list)-1]
	}
	cc.n--
	x.timer.Stop() // if it fired, its func finds x gone and leaves it
	return x
}

// put keeps x for the next delivery, or ends it (QUIT) when it has sent
// its share of messages, the cache is full or off.
func (cc *connCache) put(cs cacheSettings, x *cachedConn) {
	cc.mu.Lock()
	if cc.closed || cs.maxMessages == 0 || x.uses >= cs.maxMessages || cc.n >= cs.maxIdle {
		cc.mu.Unlock()
		x.c.quit()
		return
	}
	cc.idle[x.key] = append(cc.idle[x.key], x)
	cc.n++
	x.timer = time.AfterFunc(cs.idleTimeout, func() {
		if cc.remove(x) {
			x.c.quit()
		}
	})
	cc.mu.Unlock()
}

// remove takes x out of the cache; false if it was no longer there.
func (cc *connCache) remove(x *cachedConn) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	list := cc.idle[x.key]
	for i, y := range list {
		if y == x {
			list = append(list[:i], list[i+1:]...)
			if len(list) == 0 {
				delete(cc.idle, x.key)
			} else {
				cc.idle[x.key] = list
			}
			cc.n--
			return true
		}
	}
	return false
}

// closeAll ends every idle connection and keeps no more.
func (cc *connCache) closeAll() {
	cc.mu.Lock()
	cc.closed = true
	var all []*cachedConn
	for _, list := range cc.idle {
		all = append(all, list...)
	}
	cc.idle, cc.n = map[string][]*cachedConn{}, 0
	cc.mu.Unlock()
	var wg sync.WaitGroup
	for _, x := range all {
		x.timer.Stop()
		wg.Add(1)
		go func() {
			defer wg.Done()
			x.c.timeout = time.Second
			x.c.cmd("QUIT")
			x.c.close()
		}()
	}
	wg.Wait()
}
