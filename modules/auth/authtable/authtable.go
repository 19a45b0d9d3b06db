// Package authtable is the account table that the accounts providers
// (smtp.auth.static, smtp.auth.file) share. It is not a module.
package authtable

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// Account is one local mail account.
type Account struct {
	// Address is the account's address; it is also the login name.
	Address string `json:"address"`
	// Password is a bcrypt hash (make one with `caddy hash-password
	// --algorithm bcrypt`). An account without one cannot log in but
	// still receives mail.
	Password string `json:"password,omitempty"`
	// Aliases are more addresses whose mail this account receives and
	// which it may use as sender.
	Aliases []string `json:"aliases,omitempty"`
	// SendAs are further sender addresses the account may use without
	// receiving their mail.
	SendAs []string `json:"send_as,omitempty"`
}

// Forward is an address that forwards: its mail goes to the target
// addresses, local or on other domains (remote ones through the outbound
// queue with an SRS sender). It is neither an account nor an alias.
type Forward struct {
	// Address is the forwarding address, on a local domain.
	Address string `json:"address"`
	// To are the targets: addresses on any domain, at least one. A local
	// target may forward again; a chain that comes back to an address
	// on its way is refused as a loop.
	To []string `json:"to"`
}

// Table is an in-memory accounts table, shared by the accounts providers.
type Table struct {
	forwards map[string][]string        // forwarding address -> targets
	dummy    []byte                     // for unknown users: the highest cost in use
	hashes   map[string][]byte          // account -> bcrypt hash
	routes   map[string]string          // address or alias -> account
	sendAs   map[string]map[string]bool // account -> extra senders
	verified verifiedCache              // recent good logins, without bcrypt
	inflight singleflight.Group         // bcrypt checks under way
}

// verifiedCache remembers, per account, a keyed digest of the last
// password that passed bcrypt, for verifiedTTL: a mail client that logs
// in for every message it sends costs one bcrypt check per TTL, not one
// per connection (Dovecot's auth_cache does the same). Failures are never
// cached: every wrong password, and every unknown user, costs the full
// bcrypt work. The digest is an HMAC with a key made per table, so what
// is kept cannot be checked against guesses by anyone who reads memory
// without the key; a reload (or a changed accounts file) makes a new
// table and so forgets everything.
type verifiedCache struct {
	mu      sync.Mutex
	key     [32]byte
	entries map[string]verifiedEntry
}

type verifiedEntry struct {
	mac     [32]byte
	expires time.Time
}

const verifiedTTL = 10 * time.Minute

func (c *verifiedCache) digest(account, password string) [32]byte {
	m := hmac.New(sha256.New, c.key[:])
	m.Write([]byte(account))
	m.Write([]byte{0})
	m.Write([]byte(password))
	var d [32]byte
	m.Sum(d[:0])
	return d
}

func (c *verifiedCache) check(account string, d [32]byte) bool {
	c.mu.Lock()
	e, ok := c.entries[account]
	c.mu.Unlock()
	return ok && time.Now().Before(e.expires) && hmac.Equal(e.mac[:], d[:])
}

func (c *verifiedCache) remember(account string, d [32]byte) {
	c.mu.Lock()
	c.entries[account] = verifiedEntry{mac: d, expires: time.Now().Add(verifiedTTL)}
	c.mu.Unlock()
}

// dummyHashes make a failed login for an unknown user cost the same bcrypt
// work as a wrong password, so timing does not reveal which accounts
// exist: one hash per cost in use, made once per process.
var (
	dummyMu     sync.Mutex
	dummyHashes = map[int][]byte{}
)

func dummyHash(cost int) []byte {
	dummyMu.Lock()
	defer dummyMu.Unlock()
	h, ok := dummyHashes[cost]
	if !ok {
		h, _ = bcrypt.GenerateFromPassword([]byte("caddy-smtp timing equaliser"), cost)
		dummyHashes[cost] = h
	}
	return h
}

// New checks accounts and builds a Table; field names the config
// field in errors.
func New(accounts []Account, field string) (*Table, error) {
	t := &Table{hashes: map[string][]byte{}, routes: map[string]string{}, sendAs: map[string]map[string]bool{}}
	t.verified.entries = map[string]verifiedEntry{}
	if _, err := rand.Read(t.verified.key[:]); err != nil {
		return nil, err
	}
	for i, a := range accounts {
		addr, err := canonical(a.Address)
		if err != nil {
			return nil, fmt.Errorf("%s[%d].address: %v", field, i, err)
		}
		if _, dup := t.routes[addr]; dup {
			return nil, fmt.Errorf("%s[%d].address: %s is defined twice", field, i, addr)
		}
		t.routes[addr] = addr
		if a.Password != "" {
			if _, err := bcrypt.Cost([]byte(a.Password)); err != nil {
				return nil, fmt.Errorf("%s[%d].password: not a bcrypt hash: %v", field, i, err)
			}
			t.hashes[addr] = []byte(a.Password)
		}
		for j, al := range a.Aliases {
			alias, err := canonical(al)
			if err != nil {
				return nil, fmt.Errorf("%s[%d].aliases[%d]: %v", field, i, j, err)
			}
			if other, dup := t.routes[alias]; dup {
				return nil, fmt.Errorf("%s[%d].aliases[%d]: %s already belongs to %s", field, i, j, alias, other)
			}
			t.routes[alias] = addr
		}
		for j, sa := range a.SendAs {
			sender, err := canonical(sa)
			if err != nil {
				return nil, fmt.Errorf("%s[%d].send_as[%d]: %v", field, i, j, err)
			}
			if t.sendAs[addr] == nil {
				t.sendAs[addr] = map[string]bool{}
			}
			t.sendAs[addr][sender] = true
		}
	}
	cost := bcrypt.DefaultCost
	for _, h := range t.hashes {
		if c, err := bcrypt.Cost(h); err == nil && c > cost {
			cost = c
		}
	}
	t.dummy = dummyHash(cost)
	return t, nil
}

// canonical is an address as the table keys it (smtpapp.CanonicalAddress):
// UTF-8 local parts (NFC, lower-cased) and IDN domains in A-label form,
// so that an account given as "jürgen@bücher.example" is found for
// "JÜRGEN@xn--bcher-kva.example".
func canonical(address string) (string, error) {
	a, err := smtpapp.CanonicalAddress(strings.TrimSpace(address))
	if err != nil {
		return "", fmt.Errorf("%q is not a valid address", address)
	}
	return a, nil
}

// key is the table key of an address being looked up.
func key(address string) string {
	if k, err := smtpapp.CanonicalAddress(address); err == nil {
		return k
	}
	return strings.ToLower(address)
}

// Len is the number of accounts.
func (t *Table) Len() int {
	n := 0
	for addr, acct := range t.routes {
		if addr == acct {
			n++
		}
	}
	return n
}

// Authenticate checks username (an account address) and password.
func (t *Table) Authenticate(username, password string) (string, error) {
	account, err := canonical(username)
	hash, ok := t.hashes[account]
	if err != nil || !ok {
		bcrypt.CompareHashAndPassword(t.dummy, []byte(password))
		return "", smtpapp.ErrAuthFailed
	}
	d := t.verified.digest(account, password)
	if t.verified.check(account, d) {
		return account, nil
	}
	// The same login arriving on several connections at once (a client
	// opening them together) is checked once.
	good, _, _ := t.inflight.Do(account+"\x00"+string(d[:]), func() (any, error) {
		if bcrypt.CompareHashAndPassword(hash, []byte(password)) != nil {
			return false, nil
		}
		t.verified.remember(account, d)
		return true, nil
	})
	if !good.(bool) {
		return "", smtpapp.ErrAuthFailed
	}
	return account, nil
}

// Lookup returns the account that receives mail for address.
func (t *Table) Lookup(address string) (string, error) {
	if acct, ok := t.routes[key(address)]; ok {
		return acct, nil
	}
	return "", smtpapp.ErrNoSuchUser
}

// MaySendAs reports whether account may use address as sender.
func (t *Table) MaySendAs(account, address string) bool {
	return t.sendAs[account][key(address)]
}

// AddForwards adds forwarding addresses; field names the config field in
// errors. An address already an account or alias, or forwarding twice,
// is an error.
func (t *Table) AddForwards(forwards []Forward, field string) error {
	for i, f := range forwards {
		addr, err := canonical(f.Address)
		if err != nil {
			return fmt.Errorf("%s[%d].address: %v", field, i, err)
		}
		if acct, dup := t.routes[addr]; dup {
			return fmt.Errorf("%s[%d].address: %s already belongs to %s", field, i, addr, acct)
		}
		if _, dup := t.forwards[addr]; dup {
			return fmt.Errorf("%s[%d].address: %s forwards twice", field, i, addr)
		}
		if len(f.To) == 0 {
			return fmt.Errorf("%s[%d].to: %s forwards to no address", field, i, addr)
		}
		targets := make([]string, 0, len(f.To))
		for j, to := range f.To {
			// The local part keeps its case: another domain's may matter.
			ta, err := smtpapp.ParseAddress(strings.TrimSpace(to))
			if err != nil {
				return fmt.Errorf("%s[%d].to[%d]: %q is not a valid address", field, i, j, to)
			}
			target := ta.String()
			if strings.EqualFold(target, addr) {
				return fmt.Errorf("%s[%d].to[%d]: %s forwards to itself", field, i, j, addr)
			}
			targets = append(targets, target)
		}
		if t.forwards == nil {
			t.forwards = map[string][]string{}
		}
		t.forwards[addr] = targets
	}
	return nil
}

// Forwards returns the targets of a forwarding address, nil for any
// other address.
func (t *Table) Forwards(address string) []string {
	return t.forwards[strings.ToLower(address)]
}
