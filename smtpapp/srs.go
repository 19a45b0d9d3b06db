package smtpapp

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io/fs"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// SRS (the Sender Rewriting Scheme) in the format of libsrs2 and postsrsd,
// so that either can verify the other's addresses given the same secret:
//
//	SRS0=HHHH=TT=orig-domain=orig-local@forwarding-domain
//	SRS1=HHHH=first-hop-domain==HHHH=TT=orig-domain=orig-local@forwarding-domain
//
// HHHH is the first 4 characters of the base64 HMAC-SHA1 (keyed with the
// secret) of the lower-cased fields that follow it; TT is the day number
// modulo 1024 in base32 (A-Z2-7). A sender that is already SRS0 becomes
// SRS1 (the first forwarder's address is kept, and only that forwarder can
// check it); an SRS1 sender keeps its first hop and gets our hash.

const (
	srsHashLen   = 4
	srsTimeChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	srsTimeSlots = 1024
	// SRSMaxAge is how long an SRS address is accepted after it was made
	// (postsrsd's and libsrs2's default).
	SRSMaxAge = 21 * 24 * time.Hour
	// srsSecretKey is where the SRS secret lives in Caddy's storage: one
	// line, its bytes are the HMAC key (postsrsd's secret file can be
	// copied there to verify its addresses too).
	srsSecretKey = "smtp/srs/secret"
)

// errNotSRS: the address is not in SRS form. ErrSRSInvalid: it is, but it
// does not verify (bad hash, expired or malformed).
var (
	errNotSRS     = errors.New("not an SRS address")
	ErrSRSInvalid = errors.New("SRS address does not verify")
)

// IsSRS reports whether a local part has the SRS0/SRS1 form (any case,
// with one of the separators = + -).
func IsSRS(local string) bool {
	if len(local) < 5 {
		return false
	}
	tag := strings.ToUpper(local[:4])
	return (tag == "SRS0" || tag == "SRS1") && strings.ContainsRune("=+-", rune(local[4]))
}

func srsHash(secret []byte, fields ...string) string {
	m := hmac.New(sha1.New, secret)
	for _, f := range fields {
		m.Write([]byte(strings.ToLower(f)))
	}
	return base64.StdEncoding.EncodeToString(m.Sum(nil))[:srsHashLen]
}

func srsStamp(now time.Time) string {
	day := now.Unix() / 86400
	return string([]byte{srsTimeChars[(day>>5)&31], srsTimeChars[day&31]})
}

// srsStampOK checks a timestamp's age as libsrs2 does: a stamp from the
// future counts as 1024 days old.
func srsStampOK(stamp string, now time.Time, maxAge time.Duration) bool {
	if len(stamp) != 2 {
		return false
	}
	then := 0
	for _, ch := range strings.ToUpper(stamp) {
		i := strings.IndexRune(srsTimeChars, ch)
		if i < 0 {
			return false
		}
		then = then<<5 | i
	}
	today := int(now.Unix()/86400) % srsTimeSlots
	for today < then {
		today += srsTimeSlots
	}
	return today-then <= int(maxAge/(24*time.Hour))
}

// SRSForward rewrites sender (local@domain) for a message forwarded by
// aliasDomain.
func SRSForward(secret []byte, sender, aliasDomain string, now time.Time) (string, error) {
	at := strings.LastIndexByte(sender, '@')
	if at <= 0 || at == len(sender)-1 {
		return "", errBadAddress
	}
	local, domain := sender[:at], sender[at+1:]
	if IsSRS(local) && strings.EqualFold(local[:4], "SRS1") {
		// SRS1=HHHH=host==rest: keep host and rest, hash again.
		rest := local[5:]
		i := strings.IndexByte(rest, '=')
		if i < 0 {
			return "", ErrSRSInvalid
		}
		host, user, ok := strings.Cut(rest[i+1:], "=")
		if !ok || host == "" {
			return "", ErrSRSInvalid
		}
		return "SRS1=" + srsHash(secret, host, user) + "=" + host + "=" + user + "@" + aliasDomain, nil
	}
	if IsSRS(local) { // SRS0 of another forwarder: user keeps its separator
		user := local[4:]
		return "SRS1=" + srsHash(secret, domain, user) + "=" + domain + "=" + user + "@" + aliasDomain, nil
	}
	stamp := srsStamp(now)
	return "SRS0=" + srsHash(secret, stamp, domain, local) + "=" + stamp + "=" + domain + "=" + local + "@" + aliasDomain, nil
}

// SRSReverse checks an SRS local part (the domain is ours) and returns the
// address it stands for: the original sender for SRS0, the first
// forwarder's SRS0 address for SRS1. errNotSRS for a local part not in
// SRS form; ErrSRSInvalid for one that does not verify (hash compared
// without regard to case, as mail systems may lower-case it).
func SRSReverse(secret []byte, local string, now time.Time, maxAge time.Duration) (string, error) {
	if !IsSRS(local) {
		return "", errNotSRS
	}
	tag, rest := strings.ToUpper(local[:4]), local[5:]
	if tag == "SRS1" {
		hash, rest, ok := strings.Cut(rest, "=")
		if !ok {
			return "", ErrSRSInvalid
		}
		host, user, ok := strings.Cut(rest, "=")
		if !ok || host == "" || user == "" || !srsHashOK(hash, srsHash(secret, host, user)) {
			return "", ErrSRSInvalid
		}
		return "SRS0" + user + "@" + host, nil
	}
	parts := strings.SplitN(rest, "=", 4)
	if len(parts) != 4 || parts[2] == "" || parts[3] == "" {
		return "", ErrSRSInvalid
	}
	hash, stamp, host, user := parts[0], parts[1], parts[2], parts[3]
	if !srsHashOK(hash, srsHash(secret, stamp, host, user)) || !srsStampOK(stamp, now, maxAge) {
		return "", ErrSRSInvalid
	}
	return user + "@" + host, nil
}

func srsHashOK(got, want string) bool {
	return len(got) == len(want) && hmac.Equal([]byte(strings.ToLower(got)), []byte(strings.ToLower(want)))
}

// srsKeys holds the SRS secret, loaded from Caddy's storage (made there
// on first use) and kept for the process.
type srsKeys struct {
	mu     sync.Mutex
	secret []byte
}

// get returns the secret, making and storing one if storage has none. An
// instance that loses the race to store reads the winner's back.
func (k *srsKeys) get(ctx context.Context, storage certmagic.Storage) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.secret != nil {
		return k.secret, nil
	}
	if storage == nil {
		return nil, errors.New("no storage for the SRS secret")
	}
	b, err := storage.Load(ctx, srsSecretKey)
	if errors.Is(err, fs.ErrNotExist) {
		var r [32]byte
		if _, err := rand.Read(r[:]); err != nil {
			return nil, err
		}
		if err := storage.Store(ctx, srsSecretKey, []byte(base64.RawURLEncoding.EncodeToString(r[:])+"\n")); err != nil {
			return nil, err
		}
		b, err = storage.Load(ctx, srsSecretKey)
	}
	if err != nil {
		return nil, err
	}
	secret := []byte(strings.TrimSpace(string(b)))
	if len(secret) == 0 {
		return nil, errors.New("the SRS secret in storage is empty")
	}
	k.secret = secret
	return secret, nil
}

// srsSecretFor returns the app's SRS secret.
func (a *App) srsSecretFor(ctx context.Context) ([]byte, error) {
	if a.srs == nil {
		return nil, errors.New("the smtp app is not provisioned")
	}
	return a.srs.get(ctx, a.ctx.Storage())
}

// ReverseSRS checks an address on a local domain in SRS form and returns
// the address it stands for (the original sender). ok is false for an
// address not in SRS form; err is non-nil when it is, but does not verify
// (a forged or expired SRS address: never deliver to it) or the secret
// cannot be read. The queue uses it for bounces to SRS addresses.
func (a *App) ReverseSRS(ctx context.Context, addr Address) (orig string, ok bool, err error) {
	if !a.IsLocalDomain(addr.Domain) || !IsSRS(addr.Local) {
		return "", false, nil
	}
	secret, err := a.srsSecretFor(ctx)
	if err != nil {
		return "", true, err
	}
	orig, err = SRSReverse(secret, addr.Local, time.Now(), SRSMaxAge)
	return orig, true, err
}
