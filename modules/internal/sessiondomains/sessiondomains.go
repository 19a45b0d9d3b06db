// Package sessiondomains bounds the DNS work that one SMTP session can
// cause through the sender domains it gives at MAIL FROM: the handlers
// that look a sender domain up (spf, helo) keep their results per session
// by domain, and refuse, for now, a new domain once a session has used up
// its allowance. It is a helper package, not a module.
package sessiondomains

import (
	"fmt"
	"strings"
	"sync"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// DefaultMax is the default of the handlers' max_domains_per_session:
// far more distinct sender domains than an honest session uses (usually
// one), few enough to keep a session from making the server a DNS query
// generator.
const DefaultMax = 20

// Label is the refusal's label in caddy_smtp_refusals_total.
const Label = "too_many_domains"

// Refusal is the reply to a MAIL FROM whose domain is one too many: a
// temporary refusal, so an honest client with many senders queued sends
// the rest in a new session.
func Refusal() error {
	return smtpapp.Refuse(451, [3]int{4, 7, 1}, Label, "Too many sender domains in one session, try again later")
}

// Cache holds one session's results by sender domain, for at most max
// distinct domains. It is safe for concurrent use.
type Cache[V any] struct {
	mu  sync.Mutex
	max int
	m   map[string]V
}

// New returns a cache for at most max domains.
func New[V any](max int) *Cache[V] {
	return &Cache[V]{max: max, m: map[string]V{}}
}

// Get returns the result kept for domain (case-insensitive).
func (c *Cache[V]) Get(domain string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[strings.ToLower(domain)]
	return v, ok
}

// Admit reports whether the session may look domain up: it is known
// already (a new result replaces the old one), or there is room for it.
func (c *Cache[V]) Admit(domain string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, known := c.m[strings.ToLower(domain)]
	return known || len(c.m) < c.max
}

// Put keeps the result for domain, unless the cache is full of other
// domains (Admit said no).
func (c *Cache[V]) Put(domain string, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	domain = strings.ToLower(domain)
	if _, known := c.m[domain]; known || len(c.m) < c.max {
		c.m[domain] = v
	}
}

// Len is how many domains the session has used.
func (c *Cache[V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// Validate checks a max_domains_per_session field and sets DefaultMax
// when unset.
func Validate(max *int) error {
	if *max < 0 {
		return fmt.Errorf("max_domains_per_session: must not be negative")
	}
	if *max == 0 {
		*max = DefaultMax
	}
	return nil
}
