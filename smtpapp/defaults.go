package smtpapp

import (
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// The standard servers that an app with local domains and no servers runs
// (see FillDefaults). Their names are also the names their
// SubmissionEndpoints and MX hostnames come from.
const (
	DefaultMXListen          = ":25"
	DefaultSubmissionListen  = ":587"
	DefaultSubmissionsListen = ":465"
)

// FillDefaults completes a config the way Provision does, without loading
// anything, so that the Caddyfile adapter (and `caddy adapt`), the
// `smtp-dns` command and Provision agree:
//
//   - with no servers, the three standard servers (DefaultServers) and,
//     if no outbound target is set, the outbound queue with its defaults
//     (under Caddy's data directory), so that submission can relay;
//   - a server without a hostname gets the app's hostname.
//
// Without servers, local_domains is required (the error names it). It
// may be called more than once.
func (a *App) FillDefaults() error {
	if len(a.Servers) == 0 {
		if len(a.LocalDomains) == 0 {
			return fmt.Errorf("servers: at least one server is required (or local_domains, for the default servers)")
		}
		a.Servers = DefaultServers(a.defaultHostname())
		if a.OutboundRaw == nil {
			a.OutboundRaw = caddyconfig.JSONModuleObject(struct{}{}, "target", "queue", nil)
		}
	}
	if a.Hostname != "" {
		for _, srv := range a.Servers {
			if srv != nil && srv.Hostname == "" {
				srv.Hostname = a.Hostname
			}
		}
	}
	return nil
}

// defaultHostname is the app's hostname, else mail.<first local domain>.
func (a *App) defaultHostname() string {
	if a.Hostname != "" {
		return a.Hostname
	}
	if len(a.LocalDomains) == 0 {
		return ""
	}
	if d, ok := CanonicalDomain(a.LocalDomains[0]); ok {
		return "mail." + d
	}
	return "mail." + normalizeDomain(a.LocalDomains[0])
}

// DefaultServers returns the three standard servers for hostname, their
// certificates from the tls app's policy (ACME for a public name):
//
//   - "mx" on :25: mail from the Internet, with the handlers of
//     DefaultMXHandlers and spam thresholds tag 5, reject 10;
//   - "submission" on :587: STARTTLS, AUTH required;
//   - "submissions" on :465: implicit TLS, AUTH required.
//
// Both submission servers have the ban handler (same zone as the MX's), so
// that a network that guesses passwords is banned on every port.
func DefaultServers(hostname string) map[string]*Server {
	tag, reject := 5.0, 10.0
	return map[string]*Server{
		"mx": {
			Listen:      []string{DefaultMXListen},
			Hostname:    hostname,
			Spam:        &SpamPolicy{TagScore: &tag, RejectScore: &reject},
			HandlersRaw: DefaultMXHandlers(),
		},
		"submission": {
			Listen:      []string{DefaultSubmissionListen},
			Hostname:    hostname,
			RequireAuth: true,
			HandlersRaw: []json.RawMessage{defaultBan()},
		},
		"submissions": {
			Listen:      []string{DefaultSubmissionsListen},
			Hostname:    hostname,
			ImplicitTLS: true,
			RequireAuth: true,
			HandlersRaw: []json.RawMessage{defaultBan()},
		},
	}
}

// DefaultMXHandlers is the handler chain of the default MX, in order (built
// by module name; smtpapp imports no module):
//
//  1. ban: 10 abuse events in 10m ban the address for 1h;
//  2. ratelimit (zone "mx"): per address 60 connections a minute, 10 at
//     once, 1000 messages, 5000 recipients and 2 GiB an hour (a big
//     provider's outbound host delivers that much to a busy domain), 5
//     failed AUTH in 15m;
//  3. tarpit: a 2s greeting delay (early talkers are refused), 1s more per
//     error, at most 10s a reply;
//  4. helo: forged HELO refused, bad syntax 2, not a FQDN 1, no reverse
//     DNS 1.5, reverse DNS mismatch 1, sender domain that does not exist
//     refused;
//  5. spf: fail 4, softfail 2, none 0.5, permerror 1;
//  6. dmarc: DKIM failure 1, DMARC failure with p=none 1, p=quarantine 5,
//     p=reject refused.
//
// No DNSBL: public lists refuse queries from many resolvers; add rbl
// yourself with your own resolver.
func DefaultMXHandlers() []json.RawMessage {
	reject := map[string]string{"action": "reject"}
	score := func(f float64) map[string]float64 { return map[string]float64{"score": f} }
	rate := func(limit int64, window string) map[string]any {
		return map[string]any{"limit": limit, "window": window}
	}
	return []json.RawMessage{
		defaultBan(),
		caddyconfig.JSONModuleObject(map[string]any{
			"zone":          "mx",
			"connections":   rate(60, "1m"),
			"concurrent":    10,
			"messages":      rate(1000, "1h"),
			"recipients":    rate(5000, "1h"),
			"bytes":         rate(2<<30, "1h"),
			"auth_failures": rate(5, "15m"),
		}, "handler", "ratelimit", nil),
		caddyconfig.JSONModuleObject(map[string]any{
			"greeting_delay": "2s",
			"error_delay":    "1s",
			"max_delay":      "10s",
		}, "handler", "tarpit", nil),
		caddyconfig.JSONModuleObject(map[string]any{
			"forged":                reject,
			"invalid_syntax":        score(2),
			"not_fqdn":              score(1),
			"no_rdns":               score(1.5),
			"rdns_mismatch":         score(1),
			"unknown_sender_domain": reject,
		}, "handler", "helo", nil),
		caddyconfig.JSONModuleObject(map[string]any{
			"fail":      score(4),
			"softfail":  score(2),
			"none":      score(0.5),
			"permerror": score(1),
		}, "handler", "spf", nil),
		caddyconfig.JSONModuleObject(map[string]any{
			"dkim_fail":       score(1),
			"fail_none":       score(1),
			"fail_quarantine": score(5),
			"fail_reject":     reject,
		}, "handler", "dmarc", nil),
	}
}

func defaultBan() json.RawMessage {
	return caddyconfig.JSONModuleObject(map[string]any{
		"threshold":    10,
		"window":       "10m",
		"ban_duration": "1h",
	}, "handler", "ban", nil)
}
