package smtpapp

import (
	"net/netip"
	"strings"
)

// Address errors, as replies.
var (
	errBadAddress   = Errorf(501, [3]int{5, 1, 3}, "Bad address syntax")
	errNonASCII     = Errorf(553, [3]int{5, 6, 7}, "Non-ASCII addresses are not supported")
	errAddrLiteral  = Errorf(553, [3]int{5, 1, 3}, "Address literals are not accepted")
	errTooLongLocal = Errorf(501, [3]int{5, 1, 3}, "Local part too long")
)

// Address is a parsed mailbox address.
type Address struct {
	Local  string // as given, case preserved
	Domain string // lower-cased, no trailing dot
}

func (a Address) String() string { return a.Local + "@" + a.Domain }

// ParseAddress parses a mailbox (as go-smtp hands it over: brackets, source
// route and quoting removed) strictly. It refuses what could make the mail
// go anywhere but where the plain reading says: more than one '@' (a quoted
// local part hiding one), control bytes, non-ASCII, address literals, and
// malformed domains. Percent hacks and bang paths are left in the local
// part, where they can only name a (non-existent) local mailbox.
func ParseAddress(s string) (Address, error) {
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch < 0x20 || ch == 0x7f:
			return Address{}, errBadAddress
		case ch >= 0x80:
			return Address{}, errNonASCII
		case ch == ' ' || ch == '<' || ch == '>' || ch == '\\' || ch == '"':
			return Address{}, errBadAddress
		}
	}
	at := strings.IndexByte(s, '@')
	if at <= 0 || strings.IndexByte(s[at+1:], '@') >= 0 {
		return Address{}, errBadAddress
	}
	local, domain := s[:at], s[at+1:]
	if len(local) > 64 {
		return Address{}, errTooLongLocal
	}
	if strings.HasPrefix(domain, "[") {
		return Address{}, errAddrLiteral
	}
	domain = normalizeDomain(domain)
	if !validDomain(domain) {
		return Address{}, errBadAddress
	}
	return Address{Local: local, Domain: domain}, nil
}

// validDomain checks RFC 1035 host name syntax (letters, digits, hyphens;
// underscores tolerated as some real hosts use them).
func validDomain(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	if _, err := netip.ParseAddr(d); err == nil {
		return false // a bare IP is not a domain
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			ch := label[i]
			if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
				return false
			}
		}
	}
	return true
}

// StripSubaddress removes a "+tag" from the local part.
func StripSubaddress(local string) string {
	if i := strings.IndexByte(local, '+'); i > 0 {
		return local[:i]
	}
	return local
}

// ValidHostname reports whether s is a syntactically valid DNS host name.
func ValidHostname(s string) bool { return validDomain(normalizeDomain(s)) }
