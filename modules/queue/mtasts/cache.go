package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"golang.org/x/sync/singleflight"
)

// Entry is a cached policy, as kept in storage.
type Entry struct {
	Domain  string    `json:"domain"`
	ID      string    `json:"id"`
	Policy  *Policy   `json:"policy"`
	Fetched time.Time `json:"fetched"`
	Expires time.Time `json:"expires"`

	// Memory only:
	checked  time.Time // last TXT check
	checking bool      // a TXT check runs in the background
	// err and failure: why the last background check could not get the
	// new policy, returned once by Get (to be logged and reported).
	err     error
	failure string
}

// Result is the policy in effect for a domain.
type Result struct {
	// Policy is nil when the domain has none (or none could be had).
	Policy *Policy
	ID     string
	// Cached is true when the policy came from the cache.
	Cached bool
	// Err is why a policy could not be fetched or parsed (the domain
	// publishes a TXT record); with a cached Policy, that one is used.
	Err error
	// Failure is Err's TLS-RPT result type: sts-policy-fetch-error,
	// sts-policy-invalid or sts-webpki-invalid.
	Failure string
}

// Cache finds and caches domains' policies. The zero value is not usable:
// set LookupTXT and Client.
type Cache struct {
	// Storage keeps the policies across restarts and shares them in a
	// cluster (nil: memory only).
	Storage certmagic.Storage
	// LookupTXT returns the TXT strings of a name; (nil, nil) when there
	// are none (NXDOMAIN or no TXT), an error for a failed lookup.
	LookupTXT func(ctx context.Context, name string) ([]string, error)
	// Client fetches policies (see NewHTTPClient).
	Client *http.Client
	// Port of the policy hosts. Default: 443.
	Port int
	// TXTCheck is how long a cached policy is used without looking at the
	// TXT record again. Default: 10m.
	TXTCheck time.Duration
	// Now is the clock (tests). Default: time.Now.
	Now func() time.Time

	mu     sync.Mutex
	mem    map[string]*Entry
	absent map[string]time.Time // domains without a TXT record, when last looked up
	fetch  singleflight.Group
}

// StorageKey is where a domain's policy is kept.
func StorageKey(domain string) string { return "smtp/mta-sts/" + domain + ".json" }

// URL is the policy URL of domain.
func (c *Cache) URL(domain string) string {
	host := "mta-sts." + domain
	if c.Port != 0 && c.Port != 443 {
		host = net.JoinHostPort(host, strconv.Itoa(c.Port))
	}
	return "https://" + host + "/.well-known/mta-sts.txt"
}

func (c *Cache) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Get returns the policy for domain: the cached one while it has not
// expired, else a fresh one. A cached policy costs no DNS lookup, fetch
// or storage access: once TXTCheck has passed, the TXT id is checked in
// the background (and a new policy fetched if it changed) while the
// cached one is used. A fetch that fails never replaces a cached policy
// that has not expired (RFC 8461 5.1); a cached policy is fetched again
// in the background once half of its max_age has passed.
func (c *Cache) Get(ctx context.Context, domain string) Result {
	domain = strings.TrimSuffix(strings.ToLower(domain), ".")
	now := c.now()
	if c.recentlyAbsent(domain, now) {
		return Result{}
	}
	ent := c.cached(ctx, domain)
	if ent != nil && now.Before(ent.Expires) {
		err, failure := c.checkInBackground(ent, now)
		c.maybeRefresh(ent, now)
		return Result{Policy: ent.Policy, ID: ent.ID, Cached: true, Err: err, Failure: failure}
	}
	// Nothing cached (or expired): the delivery waits for the lookup.
	txts, err := c.LookupTXT(ctx, "_mta-sts."+domain)
	if err != nil {
		return Result{}
	}
	id, perr := ParseTXT(txts)
	if perr != nil {
		if errors.Is(perr, ErrNoRecord) {
			c.mu.Lock()
			if c.absent == nil {
				c.absent = map[string]time.Time{}
			}
			c.absent[domain] = now
			c.mu.Unlock()
			return Result{}
		}
		return Result{Err: perr, Failure: "sts-policy-invalid"}
	}
	fresh, ferr := c.refetch(ctx, domain, id)
	if ferr != nil {
		return Result{Err: ferr, Failure: failureType(ferr)}
	}
	return Result{Policy: fresh.Policy, ID: fresh.ID}
}

// checkInBackground starts a TXT check of ent's domain if TXTCheck has
// passed since the last one (and none runs), and returns (once) the error
// of a check that could not get a new policy.
func (c *Cache) checkInBackground(ent *Entry, now time.Time) (error, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	err, failure := ent.err, ent.failure
	ent.err, ent.failure = nil, ""
	if ent.checking || now.Sub(ent.checked) < c.txtCheck() {
		return err, failure
	}
	ent.checking = true
	go c.check(ent)
	return err, failure
}

// check looks up the TXT record of a cached policy's domain and fetches
// the policy again when its id changed. A failed lookup or a record gone
// keeps the cached policy (RFC 8461 5.1: it outlives its TXT record)
// until the next check.
func (c *Cache) check(ent *Entry) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var ferr error
	if txts, err := c.LookupTXT(ctx, "_mta-sts."+ent.Domain); err == nil {
		if id, perr := ParseTXT(txts); perr == nil && id != ent.ID {
			_, ferr = c.refetch(ctx, ent.Domain, id)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ent.checking, ent.checked = false, c.now()
	if ferr != nil {
		ent.err, ent.failure = ferr, failureType(ferr)
	}
}

// recentlyAbsent reports whether domain had no TXT record at the last
// lookup, less than TXTCheck ago.
func (c *Cache) recentlyAbsent(domain string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.absent[domain]
	if ok && now.Sub(at) >= c.txtCheck() {
		delete(c.absent, domain)
		ok = false
	}
	return ok
}

func (c *Cache) txtCheck() time.Duration {
	if c.TXTCheck > 0 {
		return c.TXTCheck
	}
	return 10 * time.Minute
}

// cached returns the domain's entry from memory, else from storage.
func (c *Cache) cached(ctx context.Context, domain string) *Entry {
	c.mu.Lock()
	ent, ok := c.mem[domain]
	c.mu.Unlock()
	if ok {
		return ent
	}
	if c.Storage == nil {
		return nil
	}
	b, err := c.Storage.Load(ctx, StorageKey(domain))
	if err != nil {
		return nil
	}
	ent = &Entry{}
	if json.Unmarshal(b, ent) != nil || ent.Policy == nil || ent.Domain != domain {
		return nil
	}
	c.mu.Lock()
	if c.mem == nil {
		c.mem = map[string]*Entry{}
	}
	if cur, ok := c.mem[domain]; ok {
		ent = cur
	} else {
		c.mem[domain] = ent
	}
	c.mu.Unlock()
	return ent
}

// maybeRefresh fetches the policy again in the background when more than
// half of its max_age has passed (RFC 8461 10.2: refresh before expiry).
func (c *Cache) maybeRefresh(ent *Entry, now time.Time) {
	if now.Before(ent.Fetched.Add(ent.Expires.Sub(ent.Fetched) / 2)) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c.refetch(ctx, ent.Domain, ent.ID)
	}()
}

// refetch fetches and stores the policy (once at a time per domain and id).
func (c *Cache) refetch(ctx context.Context, domain, id string) (*Entry, error) {
	// Keyed by id too: a check that found a new id must not get the
	// result of a fetch for the old one still finishing.
	v, err, _ := c.fetch.Do(domain+" "+id, func() (any, error) {
		p, err := c.Fetch(ctx, domain)
		if err != nil {
			return nil, err
		}
		now := c.now()
		ent := &Entry{Domain: domain, ID: id, Policy: p, Fetched: now, Expires: now.Add(p.MaxAge), checked: now}
		c.mu.Lock()
		if c.mem == nil {
			c.mem = map[string]*Entry{}
		}
		c.mem[domain] = ent
		c.mu.Unlock()
		if c.Storage != nil {
			b, _ := json.Marshal(ent)
			if err := c.Storage.Store(ctx, StorageKey(domain), b); err != nil {
				return ent, nil // still usable from memory
			}
		}
		return ent, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*Entry), nil
}

// Forget drops a domain's policy from memory (tests; storage is kept).
func (c *Cache) Forget(domain string) {
	c.mu.Lock()
	delete(c.mem, domain)
	delete(c.absent, domain)
	c.mu.Unlock()
}

// Fetch gets and parses a domain's policy file: status 200, text/plain,
// at most MaxPolicySize bytes, no redirects.
func (c *Cache) Fetch(ctx context.Context, domain string) (*Policy, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL(domain), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Client.Do(req)
	if err != nil {
		return nil, &fetchError{err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &fetchError{fmt.Errorf("%s: HTTP status %s", req.URL, resp.Status)}
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, &invalidError{fmt.Errorf("%s: content type %q is not text/plain", req.URL, resp.Header.Get("Content-Type"))}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicySize+1))
	if err != nil {
		return nil, &fetchError{err}
	}
	if len(b) > MaxPolicySize {
		return nil, &invalidError{fmt.Errorf("%s: larger than %d bytes", req.URL, MaxPolicySize)}
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return nil, &invalidError{fmt.Errorf("%s: %v", req.URL, err)}
	}
	return p, nil
}

type fetchError struct{ err error }

func (e *fetchError) Error() string { return "fetching the MTA-STS policy: " + e.err.Error() }
func (e *fetchError) Unwrap() error { return e.err }

type invalidError struct{ err error }

func (e *invalidError) Error() string { return "invalid MTA-STS policy: " + e.err.Error() }
func (e *invalidError) Unwrap() error { return e.err }

// failureType is the TLS-RPT result type of a fetch error.
func failureType(err error) string {
	var inv *invalidError
	var certErr *tls.CertificateVerificationError
	var unk x509.UnknownAuthorityError
	var host x509.HostnameError
	var inval x509.CertificateInvalidError
	switch {
	case errors.As(err, &inv):
		return "sts-policy-invalid"
	case errors.As(err, &certErr), errors.As(err, &unk), errors.As(err, &host), errors.As(err, &inval):
		return "sts-webpki-invalid"
	}
	return "sts-policy-fetch-error"
}

// NewHTTPClient makes the client that fetches policies: dial connects to
// a host:port (so the caller picks the resolver and the addresses
// allowed), roots are the CAs trusted (nil: the system's), timeout bounds
// the whole request. Redirects are not followed (RFC 8461 3.3).
func NewHTTPClient(dial func(ctx context.Context, network, addr string) (net.Conn, error), roots *x509.CertPool, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:           dial,
			TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   timeout,
			ResponseHeaderTimeout: timeout,
			MaxIdleConns:          10,
			IdleConnTimeout:       30 * time.Second,
			DisableCompression:    true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
