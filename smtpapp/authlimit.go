package smtpapp

import (
	"net/netip"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// authFailurePools keep the failure counts across reloads.
var authFailurePools = caddy.NewUsagePool()

// authFailures counts failed AUTH attempts per client network across
// connections and ports, with no handler configured: past a server's
// limit within its window, AUTH is refused before any password is
// checked.
type authFailures struct {
	mu   sync.Mutex
	nets map[netip.Prefix]*failureWindow
}

type failureWindow struct {
	start time.Time
	count int
}

// maxTrackedNetworks bounds the table: when full, expired entries go,
// then the oldest.
const maxTrackedNetworks = 100_000

func (a *authFailures) Destruct() error { return nil }

func loadAuthFailures(key string) (*authFailures, error) {
	v, _, err := authFailurePools.LoadOrNew(key, func() (caddy.Destructor, error) {
		return &authFailures{nets: make(map[netip.Prefix]*failureWindow)}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*authFailures), nil
}

// locked reports whether ip's network used up its failures.
func (a *authFailures) locked(ip netip.Addr, lim *Limits) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.nets[clientNetwork(ip)]
	return w != nil && time.Since(w.start) < time.Duration(lim.AuthFailureWindow) && w.count >= lim.MaxAuthFailuresPerIP
}

// add counts a failure of ip's network.
func (a *authFailures) add(ip netip.Addr, lim *Limits) {
	n := clientNetwork(ip)
	now := time.Now()
	window := time.Duration(lim.AuthFailureWindow)
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.nets[n]
	if w == nil || now.Sub(w.start) >= window {
		if w == nil && len(a.nets) >= maxTrackedNetworks {
			a.evict(now, window)
		}
		w = &failureWindow{start: now}
		a.nets[n] = w
	}
	w.count++
}

func (a *authFailures) evict(now time.Time, window time.Duration) {
	var oldest netip.Prefix
	var oldestStart time.Time
	for n, w := range a.nets {
		if now.Sub(w.start) >= window {
			delete(a.nets, n)
			continue
		}
		if oldestStart.IsZero() || w.start.Before(oldestStart) {
			oldest, oldestStart = n, w.start
		}
	}
	if len(a.nets) >= maxTrackedNetworks {
		delete(a.nets, oldest)
	}
}
