package smtpapp

import (
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/unicode/norm"
)

// Address errors, as replies.
var (
	errBadAddress   = Errorf(501, [3]int{5, 1, 3}, "Bad address syntax")
	errNonASCII     = Errorf(553, [3]int{5, 6, 7}, "Non-ASCII addresses are not supported")
	errAddrLiteral  = Errorf(553, [3]int{5, 1, 3}, "Address literals are not accepted")
	errTooLongLocal = Errorf(501, [3]int{5, 1, 3}, "Local part too long")
	errBadUTF8      = Errorf(553, [3]int{5, 6, 7}, "Address is not valid UTF-8 or holds characters not allowed in a mailbox name")
)

// Address is a parsed mailbox address.
type Address struct {
	Local  string // as given, case preserved
	Domain string // lower-cased, no trailing dot, IDN in A-label form (xn--)
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
	numeric := true // every label all digits: maybe an IPv4 address
	for rest := d; ; {
		label, tail, more := strings.Cut(rest, ".")
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			ch := label[i]
			if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
				return false
			}
			numeric = numeric && ch >= '0' && ch <= '9'
		}
		if !more {
			break
		}
		rest = tail
	}
	if numeric {
		if _, err := netip.ParseAddr(d); err == nil {
			return false // a bare IP is not a domain
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

// ParseAddressUTF8 is ParseAddress for a transaction whose MAIL carried
// SMTPUTF8 (RFC 6531): the local part may hold UTF-8 and the domain may be
// an IDN in U-label or A-label form. The rules stay as strict as
// ParseAddress's for the ASCII part; besides:
//
//   - the address must be valid UTF-8;
//   - a non-ASCII character in the local part must be graphic and not a
//     space (unicode.IsGraphic, !unicode.IsSpace): C1 controls, format
//     characters (bidi overrides and isolates, zero-width joiners, BOM,
//     soft hyphen), private-use, unassigned code points and Unicode
//     spaces and line separators are refused (553 5.6.7);
//   - the local part is put in Unicode NFC (RFC 6530 10.1, RFC 6532 3.1),
//     so that one mailbox name has one spelling; 64 octets at most;
//   - the domain goes through IDNA (UTS #46 lookup mapping, bidi and
//     joiner rules, golang.org/x/net/idna's Lookup profile) to its A-label
//     form: "bücher.example" and "xn--bcher-kva.example" are the same
//     Domain. A domain that IDNA refuses is a bad address.
func ParseAddressUTF8(s string) (Address, error) {
	if !utf8.ValidString(s) {
		return Address{}, errBadUTF8
	}
	ascii := true
	for _, r := range s {
		switch {
		case r < 0x20 || r == 0x7f:
			return Address{}, errBadAddress
		case r == ' ' || r == '<' || r == '>' || r == '\\' || r == '"':
			return Address{}, errBadAddress
		case r >= 0x80:
			ascii = false
			if !unicode.IsGraphic(r) || unicode.IsSpace(r) {
				return Address{}, errBadUTF8
			}
		}
	}
	if ascii {
		return ParseAddress(s)
	}
	at := strings.IndexByte(s, '@')
	if at <= 0 || strings.IndexByte(s[at+1:], '@') >= 0 {
		return Address{}, errBadAddress
	}
	local, domain := norm.NFC.String(s[:at]), s[at+1:]
	if local != s[:at] && strings.ContainsAny(local, "@ <>\\\"") {
		return Address{}, errBadAddress // no NFC mapping makes these; kept as a guard
	}
	if len(local) > 64 {
		return Address{}, errTooLongLocal
	}
	if strings.HasPrefix(domain, "[") {
		return Address{}, errAddrLiteral
	}
	domain, ok := CanonicalDomain(domain)
	if !ok {
		return Address{}, errBadAddress
	}
	return Address{Local: local, Domain: domain}, nil
}

// parseAddress parses with ParseAddressUTF8 in an SMTPUTF8 transaction,
// else with ParseAddress.
func parseAddress(s string, smtputf8 bool) (Address, error) {
	if smtputf8 {
		return ParseAddressUTF8(s)
	}
	return ParseAddress(s)
}

// CanonicalDomain returns a domain name in the form the app compares
// domains in: lower-case, no trailing dot, an IDN in A-label form
// ("xn--..."), whichever form it is given in. ok is false for a name that
// is not a valid host name (or that IDNA refuses).
func CanonicalDomain(d string) (string, bool) {
	d = strings.TrimSuffix(d, ".")
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			if !utf8.ValidString(d) {
				return "", false
			}
			a, err := idna.Lookup.ToASCII(d)
			if err != nil {
				return "", false
			}
			d = a
			break
		}
	}
	d = normalizeDomain(d)
	return d, validDomain(d)
}

// CanonicalAddress is the key an account or alias is looked up by: the
// local part lower-cased (after NFC, see ParseAddressUTF8) and the domain
// in A-label form. It accepts UTF-8 addresses, as configured accounts may
// have them.
func CanonicalAddress(s string) (string, error) {
	a, err := ParseAddressUTF8(s)
	if err != nil {
		return "", err
	}
	return strings.ToLower(a.Local) + "@" + a.Domain, nil
}

// IsASCII reports whether s holds only ASCII characters.
func IsASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// ValidHostname reports whether s is a syntactically valid DNS host name.
func ValidHostname(s string) bool { return validDomain(normalizeDomain(s)) }
