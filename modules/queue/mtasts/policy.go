// Package mtasts implements the sending side of SMTP MTA Strict Transport
// Security (RFC 8461): the _mta-sts TXT record, the policy file, MX
// pattern matching, and a policy cache kept in Caddy's storage.
package mtasts

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Mode is a policy's mode.
type Mode string

// The policy modes of RFC 8461 section 5.
const (
	ModeEnforce Mode = "enforce"
	ModeTesting Mode = "testing"
	ModeNone    Mode = "none"
)

// MaxAgeLimit is the largest max_age a policy may give (one year, RFC 8461 3.2).
const MaxAgeLimit = 31557600

// MaxPolicySize is the largest policy file fetched (RFC 8461 3.3 suggests 64 KiB).
const MaxPolicySize = 64 << 10

// Policy is a parsed policy file.
type Policy struct {
	Mode   Mode          `json:"mode"`
	MaxAge time.Duration `json:"max_age"`
	MX     []string      `json:"mx,omitempty"` // patterns, lower case, e.g. "*.example.com"
}

// ParsePolicy parses a policy file (RFC 8461 3.2): "key: value" lines
// separated by CRLF (LF alone is accepted too), in any order; unknown keys
// are ignored, version must be STSv1, mode and max_age are required, and
// enforce and testing need at least one mx.
func ParsePolicy(b []byte) (*Policy, error) {
	if len(b) > MaxPolicySize {
		return nil, fmt.Errorf("policy larger than %d bytes", MaxPolicySize)
	}
	p := &Policy{}
	var version, mode, maxAge bool
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("line %q is not key: value", clip(line))
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "version":
			if version {
				return nil, errors.New("version given twice")
			}
			if v != "STSv1" {
				return nil, fmt.Errorf("version %q is not STSv1", clip(v))
			}
			version = true
		case "mode":
			if mode {
				return nil, errors.New("mode given twice")
			}
			switch Mode(v) {
			case ModeEnforce, ModeTesting, ModeNone:
				p.Mode = Mode(v)
			default:
				return nil, fmt.Errorf("mode %q is not enforce, testing or none", clip(v))
			}
			mode = true
		case "max_age":
			if maxAge {
				return nil, errors.New("max_age given twice")
			}
			if v == "" || len(v) > 10 || strings.TrimLeft(v, "0123456789") != "" {
				return nil, fmt.Errorf("max_age %q is not a number of seconds", clip(v))
			}
			n, _ := strconv.ParseInt(v, 10, 64)
			if n > MaxAgeLimit {
				n = MaxAgeLimit
			}
			p.MaxAge = time.Duration(n) * time.Second
			maxAge = true
		case "mx":
			pat := strings.TrimSuffix(strings.ToLower(v), ".")
			if !validPattern(pat) {
				return nil, fmt.Errorf("mx %q is not a host name or *.domain pattern", clip(v))
			}
			p.MX = append(p.MX, pat)
		}
	}
	switch {
	case !version:
		return nil, errors.New("no version")
	case !mode:
		return nil, errors.New("no mode")
	case !maxAge:
		return nil, errors.New("no max_age")
	case p.Mode != ModeNone && len(p.MX) == 0:
		return nil, fmt.Errorf("mode %s without mx", p.Mode)
	}
	return p, nil
}

// String is the policy in its file syntax (the policy-string of TLS reports).
func (p *Policy) String() string {
	var b strings.Builder
	b.WriteString("version: STSv1\r\nmode: " + string(p.Mode) + "\r\n")
	for _, mx := range p.MX {
		b.WriteString("mx: " + mx + "\r\n")
	}
	b.WriteString("max_age: " + strconv.FormatInt(int64(p.MaxAge/time.Second), 10) + "\r\n")
	return b.String()
}

// Lines is the policy as the lines of a TLS report's policy-string.
func (p *Policy) Lines() []string {
	return strings.Split(strings.TrimSuffix(p.String(), "\r\n"), "\r\n")
}

// Match reports whether host is one of the policy's MX patterns.
func (p *Policy) Match(host string) bool {
	for _, pat := range p.MX {
		if MatchPattern(pat, host) {
			return true
		}
	}
	return false
}

// MatchPattern reports whether host matches an mx pattern: equal (case
// insensitive, trailing dot ignored), or "*.domain" for exactly one more
// label than domain (RFC 8461 4.1).
func MatchPattern(pattern, host string) bool {
	pattern = strings.TrimSuffix(strings.ToLower(pattern), ".")
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if pattern == "" || host == "" {
		return false
	}
	if rest, ok := strings.CutPrefix(pattern, "*."); ok {
		label, parent, ok := strings.Cut(host, ".")
		return ok && label != "" && label != "*" && parent == rest
	}
	return pattern == host
}

// validPattern accepts host names and "*.host" with letters, digits,
// hyphens and underscores in each label.
func validPattern(p string) bool {
	p = strings.TrimPrefix(p, "*.")
	if p == "" || len(p) > 253 {
		return false
	}
	for _, l := range strings.Split(p, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// ErrNoRecord means no valid STSv1 TXT record.
var ErrNoRecord = errors.New("no MTA-STS TXT record")

// ParseTXT finds the policy id in the TXT strings of _mta-sts.<domain>
// (RFC 8461 3.1): records that start with "v=STSv1" count; exactly one
// must, with an id of 1 to 32 letters and digits. Other fields are ignored.
func ParseTXT(txts []string) (string, error) {
	id, n := "", 0
	var firstErr error
	for _, t := range txts {
		fields := strings.Split(t, ";")
		if strings.TrimSpace(fields[0]) != "v=STSv1" {
			continue
		}
		n++
		rid := ""
		for _, f := range fields[1:] {
			k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
			if ok && k == "id" {
				rid = v
				break
			}
		}
		if !validID(rid) {
			if firstErr == nil {
				firstErr = fmt.Errorf("TXT record %q has no valid id", clip(t))
			}
			continue
		}
		id = rid
	}
	switch {
	case n > 1:
		return "", fmt.Errorf("%d STSv1 TXT records (there must be one)", n)
	case id != "":
		return id, nil
	case firstErr != nil:
		return "", firstErr
	}
	return "", ErrNoRecord
}

func validID(id string) bool {
	if id == "" || len(id) > 32 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}
