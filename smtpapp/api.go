package smtpapp

import (
	"maps"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

// This file is the read-only API through which other Caddy apps' modules
// (the http handlers that publish the MTA-STS policy and client
// autoconfiguration) and commands (smtp-dns) read the smtp app. The
// accessors read the config itself (with FillDefaults applied by
// Provision), so they also work on an App unmarshaled from a config file
// and never provisioned.

var (
	currentMu sync.RWMutex
	current   *App
)

// Current returns the running smtp app: the one whose Start ran last and
// that has not stopped, or nil. HTTP handlers call it on every request, so
// that a reload of the smtp config changes what they serve at once.
func Current() *App {
	currentMu.RLock()
	defer currentMu.RUnlock()
	return current
}

// setCurrent records a as the running app (Start).
func setCurrent(a *App) {
	currentMu.Lock()
	current = a
	currentMu.Unlock()
}

// clearCurrent forgets a if it is still the running app (Stop): during a
// reload the new config starts before the old one stops.
func clearCurrent(a *App) {
	currentMu.Lock()
	if current == a {
		current = nil
	}
	currentMu.Unlock()
}

// Endpoint is one port of one server, as a client sees it.
type Endpoint struct {
	// Server is the server's name in the config.
	Server string `json:"server"`
	// Host is the server's hostname (the name on its certificate).
	Host string `json:"host"`
	// Port is the TCP port.
	Port uint `json:"port"`
	// Security is "tls" (implicit TLS), "starttls", or "none".
	Security string `json:"security"`
	// InternalCA is set when the hostname's certificate comes from Caddy's
	// internal CA, which other mail servers and clients do not trust.
	InternalCA bool `json:"internal_ca,omitempty"`
}

// Domains returns the local domains, lower-case (an IDN in A-label form),
// in config order.
func (a *App) Domains() []string {
	out := make([]string, 0, len(a.LocalDomains))
	for _, d := range a.LocalDomains {
		if c, ok := CanonicalDomain(d); ok {
			d = c
		} else {
			d = normalizeDomain(d)
		}
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// Hostnames returns the hostnames of all servers, sorted, without
// duplicates.
func (a *App) Hostnames() []string {
	return hostnamesOf(a.endpoints(func(*Server) bool { return true }))
}

// MXHostnames returns the hostnames of the servers that take mail from
// other mail servers (those that do not require AUTH), sorted, without
// duplicates: the names for the domains' MX records and MTA-STS policy.
func (a *App) MXHostnames() []string {
	return hostnamesOf(a.MXEndpoints())
}

// MXEndpoints returns the ports of the servers that do not require AUTH,
// sorted by server name and port.
func (a *App) MXEndpoints() []Endpoint {
	return a.endpoints(func(s *Server) bool { return !s.RequireAuth })
}

// SubmissionEndpoints returns the ports where local users log in to send
// mail (servers with require_auth), sorted by server name and port.
func (a *App) SubmissionEndpoints() []Endpoint {
	return a.endpoints(func(s *Server) bool { return s.RequireAuth })
}

// endpoints lists the ports of the servers that keep says yes to.
func (a *App) endpoints(keep func(*Server) bool) []Endpoint {
	var out []Endpoint
	for _, name := range slices.Sorted(maps.Keys(a.Servers)) {
		srv := a.Servers[name]
		if srv == nil || !keep(srv) {
			continue
		}
		host := strings.ToLower(strings.TrimSuffix(srv.Hostname, "."))
		if host == "" { // as Provision does
			host, _ = os.Hostname()
		}
		sec := "starttls"
		switch {
		case srv.ImplicitTLS:
			sec = "tls"
		case srv.TLS != nil && srv.TLS.DisableSTARTTLS:
			sec = "none"
		}
		internal := srv.TLS != nil && srv.TLS.Issuer == "internal"
		var ports []uint
		for _, l := range srv.Listen {
			addr, err := caddy.ParseNetworkAddressWithDefaults(l, "tcp", 25)
			if err != nil {
				continue
			}
			for p := addr.StartPort; p <= addr.EndPort; p++ {
				if !slices.Contains(ports, p) {
					ports = append(ports, p)
				}
			}
		}
		slices.Sort(ports)
		for _, p := range ports {
			out = append(out, Endpoint{Server: name, Host: host, Port: p, Security: sec, InternalCA: internal})
		}
	}
	return out
}

func hostnamesOf(eps []Endpoint) []string {
	var out []string
	for _, e := range eps {
		if e.Host != "" && !slices.Contains(out, e.Host) {
			out = append(out, e.Host)
		}
	}
	slices.Sort(out)
	return out
}
