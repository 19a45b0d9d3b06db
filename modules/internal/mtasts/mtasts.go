// Package mtasts builds the MTA-STS policy (RFC 8461) of the smtp app's
// domains: shared by the mta_sts http handler, which serves it, and the
// smtp-dns command, which prints the _mta-sts record whose id follows it.
package mtasts

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// The policy modes.
const (
	Enforce = "enforce"
	Testing = "testing"
	None    = "none"
)

// DefaultMaxAge is the max_age of a policy that sets none: one week (RFC
// 8461 3.2 recommends weeks).
const DefaultMaxAge = 7 * 24 * time.Hour

// MaxMaxAge is the largest max_age allowed (RFC 8461 3.2: 31557600s).
const MaxMaxAge = 31557600 * time.Second

// Policy is one policy file.
type Policy struct {
	Mode   string
	MaxAge time.Duration
	MX     []string
}

// Build makes the policy of app: the MX hostnames of its servers plus
// extraMX; mode "" is enforce, unless an MX server's certificate comes
// from the internal CA or it offers no STARTTLS (senders could not verify
// it), then testing; maxAge 0 is DefaultMaxAge.
func Build(app *smtpapp.App, mode string, maxAge time.Duration, extraMX []string) Policy {
	p := Policy{Mode: mode, MaxAge: maxAge}
	if p.MaxAge <= 0 {
		p.MaxAge = DefaultMaxAge
	}
	eps := app.MXEndpoints()
	if p.Mode == "" {
		p.Mode = Enforce
		for _, e := range eps {
			if e.InternalCA || e.Security == "none" {
				p.Mode = Testing
			}
		}
	}
	p.MX = app.MXHostnames()
	for _, m := range extraMX {
		m = strings.ToLower(strings.TrimSuffix(m, "."))
		if !slices.Contains(p.MX, m) {
			p.MX = append(p.MX, m)
		}
	}
	return p
}

// Validate checks a mode and max_age from config, naming the field.
func Validate(mode string, maxAge time.Duration, mx []string) error {
	switch mode {
	case "", Enforce, Testing, None:
	default:
		return fmt.Errorf("mode: %q is not enforce, testing or none", mode)
	}
	if maxAge < 0 || maxAge > MaxMaxAge {
		return fmt.Errorf("max_age: must be between 0 (default) and %v", MaxMaxAge)
	}
	for i, m := range mx {
		h := strings.TrimPrefix(m, "*.")
		if !smtpapp.ValidHostname(strings.TrimSuffix(h, ".")) {
			return fmt.Errorf("mx[%d]: %q is not a host name (or *.domain pattern)", i, m)
		}
	}
	return nil
}

// Text is the policy file, with CRLF line endings (RFC 8461 3.2).
func (p Policy) Text() string {
	var b strings.Builder
	b.WriteString("version: STSv1\r\n")
	b.WriteString("mode: " + p.Mode + "\r\n")
	for _, m := range p.MX {
		b.WriteString("mx: " + m + "\r\n")
	}
	fmt.Fprintf(&b, "max_age: %d\r\n", int64(p.MaxAge/time.Second))
	return b.String()
}

// ID is the policy's id for the _mta-sts TXT record: 20 hex digits of the
// SHA-256 of its text, so that it changes whenever the policy does.
func (p Policy) ID() string {
	sum := sha256.Sum256([]byte(p.Text()))
	return hex.EncodeToString(sum[:10])
}

// Record is the value of the _mta-sts.<domain> TXT record.
func (p Policy) Record() string { return "v=STSv1; id=" + p.ID() }
