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
// connections, with no handler configured: past the limit within the
// window, AUTH is refused before any password is checked.
type authFailures struct {
	mu     sync.Mutex
	max    int
	window time.Duration
	nets   map[netip.Prefix]*failureWindow
}

type failureWindow struct {
	start time.Time
	count int
}

// maxTrackedNetworks bounds the table: when full, expired entries go,
// then the oldest.
const maxTrackedNetworks = 100_000

func (a *authFailures) Destruct() error { return nil }

func loadAuthFailures(key string, max int, window time.Duration) (*authFailures, error) {
	v, _, err := authFailurePools.LoadOrNew(key, func() (caddy.Destructor, error) {
		return &authFailures{nets: make(map[netip.Prefix]*failureWindow)}, nil
	})
	if err != nil {
		return nil, err
	}
	a := v.(*authFailures)
	a.mu.Lock()
	a.max, a.window = max, window
	a.mu.Unlock()
	return a, nil
}

// locked reports whether ip's network used up its failures.
func (a *authFailures) locked(ip netip.Addr) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.nets[clientNetwork(ip)]
	return w != nil && time.Since(w.start) < a.window && w.count >= a.max
}

// add counts a failure of ip's network.
func (a *authFailures) add(ip netip.Addr) {
	n := clientNetwork(ip)
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.nets[n]
	if w == nil || now.Sub(w.start) >= a.window {
		if w == nil && len(a.nets) >= maxTrackedNetworks {
			a.evict(now)
		}
		w = &failureWindow{start: now}
		a.nets[n] = w
	}
	w.count++
}

func (a *authFailures) evict(now time.Time) {
	var oldest netip.Prefix
	var oldestStart time.Time
	for n, w := range a.nets {
		if now.Sub(w.start) >= a.window {
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
