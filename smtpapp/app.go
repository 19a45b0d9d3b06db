// Package smtpapp is the smtp Caddy app: servers, listeners, the SMTP
// session, recipient routing and the interfaces that handler, auth and
// delivery modules implement. It imports no module.
package smtpapp

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the smtp app: mail servers for a set of local domains.
type App struct {
	// Servers, by name (used in logs and metrics). Default, when
	// local_domains is set: the three standard servers "mx" (:25),
	// "submission" (:587, STARTTLS, AUTH required) and "submissions"
	// (:465, implicit TLS, AUTH required), with the handlers a careful MX
	// needs (see DefaultServers), and then also an outbound queue.
	Servers map[string]*Server `json:"servers,omitempty"`

	// Hostname is the default hostname of the servers that set none (the
	// name in greetings and on their certificate). Default:
	// mail.<first local domain> for the default servers; the machine's
	// host name for servers written out.
	Hostname string `json:"hostname,omitempty"`

	// LocalDomains are the domains whose mail this app receives and stores
	// in local mailboxes. Mail for any other domain is relayed, and only
	// for authenticated users or trusted networks.
	LocalDomains []string `json:"local_domains,omitempty"`

	// Postmaster is the account that gets mail for postmaster@ of every
	// local domain where no account or alias of that name exists (RFC 5321
	// 4.5.1 requires the address). Example: "alice@example.com".
	Postmaster string `json:"postmaster,omitempty"`

	// CatchAll maps a local domain to the account that receives mail for
	// its addresses that match no account or alias. Off by default: then
	// an unknown address gets 550 5.1.1 at RCPT, which is what tells a
	// sender about a typo, and spammers' dictionary attacks nothing. The
	// catch-all account does not get to send as those addresses.
	// Example: {"example.com": "alice@example.com"}.
	CatchAll map[string]string `json:"catch_all,omitempty"`

	// Accounts is the accounts provider (namespace smtp.auth): logins for
	// AUTH and the mailboxes that exist.
	AccountsRaw json.RawMessage `json:"accounts,omitempty" caddy:"namespace=smtp.auth inline_key=provider"`

	// LocalDelivery stores mail for local mailboxes (namespace
	// smtp.delivery). Default: maildir under Caddy's data directory.
	LocalDeliveryRaw json.RawMessage `json:"local_delivery,omitempty" caddy:"namespace=smtp.delivery inline_key=target"`

	// Outbound takes mail for remote recipients (namespace smtp.delivery,
	// normally the queue). Without it, nothing is relayed. Default: none,
	// except with the default servers: the queue with its defaults
	// (spool under Caddy's data directory, DKIM signing).
	OutboundRaw json.RawMessage `json:"outbound,omitempty" caddy:"namespace=smtp.delivery inline_key=target"`

	// Resolver is the DNS resolver used by the modules (DNSBL, SPF, MX).
	Resolver *ResolverConfig `json:"resolver,omitempty"`

	// GracePeriod is how long a stopping config (after a reload or at
	// shutdown) lets its sessions finish. Default: 5m.
	GracePeriod caddy.Duration `json:"grace_period,omitempty"`

	// SpoolDir holds message bodies too large to keep in memory while they
	// are checked. Default: smtp/spool under Caddy's data directory.
	SpoolDir string `json:"spool_dir,omitempty"`

	// BodyMemory is how many bytes of message bodies all sessions may hold
	// in memory together; past it, bodies go to SpoolDir at once (one body
	// keeps at most 128 KiB in memory in any case). Header sections being
	// parsed count too. Default: 64 MiB.
	BodyMemory int64 `json:"body_memory,omitempty"`

	ctx           caddy.Context
	logger        *zap.Logger
	accounts      Accounts
	localDelivery DeliveryTarget
	outbound      DeliveryTarget
	localDomains  map[string]bool
	resolver      *Resolver
	internalNames map[string]bool // hostnames given an internal-CA policy
	router        *router
	catchAll      map[string]string // domain -> account
	bodyMemory    *memoryBudget
	authFailures  *authFailures
	srs           *srsKeys // the SRS secret, loaded on first use
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp", New: func() caddy.Module { return new(App) }}
}

// Provision sets up the app.
func (a *App) Provision(ctx caddy.Context) error {
	// Modules find the app (resolver, local domains, delivery) through ctx.
	ctx.Context = context.WithValue(ctx.Context, appCtxKey{}, a)
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.srs = new(srsKeys)
	if err := appMetrics.register(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	if err := a.provisionDomains(); err != nil {
		return err
	}
	if a.Hostname != "" && !ValidHostname(a.Hostname) {
		return fmt.Errorf("hostname: %q is not a valid host name", a.Hostname)
	}
	if err := a.FillDefaults(); err != nil {
		return err
	}
	var err error
	if a.resolver, err = a.Resolver.build(); err != nil {
		return fmt.Errorf("resolver: %v", err)
	}
	if err := a.provisionModules(ctx); err != nil {
		return err
	}
	if err := a.provisionMessages(); err != nil {
		return err
	}
	for name, srv := range a.Servers {
		if err := srv.provision(ctx, a, name); err != nil {
			return fmt.Errorf("servers.%s: %v", name, err)
		}
	}
	// One table for the app: a client's failures count on every port.
	if a.authFailures, err = loadAuthFailures("auth"); err != nil {
		return fmt.Errorf("auth failures: %v", err)
	}
	return nil
}

// provisionDomains checks the local domains and the postmaster.
func (a *App) provisionDomains() error {
	a.localDomains = make(map[string]bool)
	for i, d := range a.LocalDomains {
		d, ok := CanonicalDomain(d) // an IDN in either form: its A-label
		if !ok {
			return fmt.Errorf("local_domains[%d]: invalid domain %q", i, a.LocalDomains[i])
		}
		a.localDomains[d] = true
	}
	if a.Postmaster != "" {
		pm, err := ParseAddressUTF8(a.Postmaster)
		if err != nil || !a.localDomains[pm.Domain] {
			return fmt.Errorf("postmaster: %q is not an address on a local domain", a.Postmaster)
		}
	}
	a.catchAll = make(map[string]string)
	for d, account := range a.CatchAll {
		domain, _ := CanonicalDomain(d)
		if !a.localDomains[domain] {
			return fmt.Errorf("catch_all: %q is not a local domain", d)
		}
		acct, err := ParseAddressUTF8(account)
		if err != nil || !a.localDomains[acct.Domain] {
			return fmt.Errorf("catch_all.%s: %q is not an address on a local domain", d, account)
		}
		a.catchAll[domain] = strings.ToLower(acct.Local) + "@" + acct.Domain
	}
	return nil
}

// provisionModules loads the accounts provider and the delivery targets
// (Maildir under Caddy's data directory by default), and the router
// between them.
func (a *App) provisionModules(ctx caddy.Context) error {
	if a.AccountsRaw != nil {
		mod, err := ctx.LoadModule(a, "AccountsRaw")
		if err != nil {
			return fmt.Errorf("accounts: %v", err)
		}
		a.accounts = mod.(Accounts)
	}
	if a.LocalDeliveryRaw == nil {
		a.LocalDeliveryRaw = caddyconfig.JSONModuleObject(
			map[string]string{"root": filepath.Join(caddy.AppDataDir(), "smtp", "maildir")}, "target", "maildir", nil)
	}
	mod, err := ctx.LoadModule(a, "LocalDeliveryRaw")
	if err != nil {
		return fmt.Errorf("local_delivery: %v", err)
	}
	a.localDelivery = mod.(DeliveryTarget)
	if a.OutboundRaw != nil {
		mod, err := ctx.LoadModule(a, "OutboundRaw")
		if err != nil {
			return fmt.Errorf("outbound: %v", err)
		}
		a.outbound = mod.(DeliveryTarget)
	}
	a.router = &router{local: a.localDelivery, outbound: a.outbound, srsSecret: a.srsSecretFor, isLocal: a.IsLocalDomain}
	return nil
}

// provisionMessages sets up where message bodies are held while they are
// received and checked: the memory budget, then the spool folder.
func (a *App) provisionMessages() error {
	if a.SpoolDir == "" {
		a.SpoolDir = filepath.Join(caddy.AppDataDir(), "smtp", "spool")
	}
	if err := os.MkdirAll(a.SpoolDir, 0o700); err != nil {
		return fmt.Errorf("spool_dir: %v", err)
	}
	if a.GracePeriod == 0 {
		a.GracePeriod = caddy.Duration(5 * time.Minute)
	}
	if a.BodyMemory < 0 {
		return fmt.Errorf("body_memory: must not be negative")
	}
	if a.BodyMemory == 0 {
		a.BodyMemory = 64 << 20
	}
	a.bodyMemory = newMemoryBudget(a.BodyMemory)
	return nil
}

// Cleanup releases the state kept across reloads (see Provision).
func (a *App) Cleanup() error {
	for name, srv := range a.Servers {
		if srv.ceiling != nil {
			ceilings.Delete(name)
		}
	}
	if a.authFailures != nil {
		authFailurePools.Delete("auth")
	}
	return nil
}

// Validate checks what Provision could not.
func (a *App) Validate() error {
	seen := map[string]string{}
	for name, srv := range a.Servers {
		for _, addr := range srv.addrs {
			key := addr.String()
			if other, ok := seen[key]; ok {
				return fmt.Errorf("servers.%s.listen: %s is also used by server %s", name, key, other)
			}
			seen[key] = name
		}
	}
	return nil
}

// Start binds the listeners, then has the TLS app manage certificates.
func (a *App) Start() error {
	names := make([]string, 0, len(a.Servers))
	for name := range a.Servers {
		names = append(names, name)
	}
	slices.Sort(names)
	// Caddy does not Stop an app whose Start failed: undo it here, or the
	// failed config's listeners would keep taking the shared sockets'
	// connections.
	started := 0
	undo := func(err error) error {
		for _, name := range names[:started] {
			a.Servers[name].stop(context.Background(), stopNow)
		}
		return err
	}
	for _, name := range names {
		if err := a.Servers[name].start(); err != nil {
			return undo(fmt.Errorf("servers.%s: %v", name, err))
		}
		started++
	}
	for _, t := range []any{a.accounts, a.localDelivery, a.outbound} {
		if st, ok := t.(Starter); ok {
			if err := st.Start(); err != nil {
				return undo(err)
			}
		}
	}
	if err := a.manageCertificates(); err != nil {
		return undo(err)
	}
	setCurrent(a)
	return nil
}

// isOwnName reports whether name (lower-case) is a server's hostname or a
// local domain: a header field claiming it was made here.
func (a *App) isOwnName(name string) bool {
	if name == "" {
		return false
	}
	if a.localDomains[name] {
		return true
	}
	for _, srv := range a.Servers {
		if strings.EqualFold(strings.TrimSuffix(srv.Hostname, "."), name) {
			return true
		}
	}
	return false
}

// postmasterDomain is the domain that a bare <postmaster> recipient is
// taken to mean: the postmaster account's, else the first local domain.
func (a *App) postmasterDomain() string {
	if a.Postmaster != "" {
		if pm, err := ParseAddressUTF8(a.Postmaster); err == nil {
			return pm.Domain
		}
	}
	if len(a.localDomains) == 0 {
		return ""
	}
	return slices.Sorted(maps.Keys(a.localDomains))[0]
}

// manageCertificates has the tls app manage the servers' hostnames, all in
// one call (servers often share a hostname), after the listeners are bound.
func (a *App) manageCertificates() error {
	var tlsApp *caddytls.TLS
	names := map[string]struct{}{}
	for _, srv := range a.Servers {
		if srv.tlsApp == nil {
			continue
		}
		tlsApp = srv.tlsApp
		names[srv.Hostname] = struct{}{}
	}
	if tlsApp == nil {
		return nil
	}
	return tlsApp.Manage(names)
}

// Stop stops accepting connections and lets open sessions finish in the
// background (up to the grace period) on this config; when the process
// exits, it ends them, and those of older configs still finishing, and
// waits for what they are storing (Server.stop).
func (a *App) Stop() error {
	clearCurrent(a)
	mode := stopGraceful
	servers := slices.Collect(maps.Values(a.Servers))
	if caddy.Exiting() {
		mode = stopExit
		// Older configs still finishing their sessions end them now too.
		servers = append(servers, draining.list()...)
	}
	var wg sync.WaitGroup
	for _, srv := range servers {
		wg.Go(func() { srv.stop(context.Background(), mode) })
	}
	wg.Wait()
	return nil
}

// IsLocalDomain reports whether domain (lower-case, an IDN in A-label
// form: see CanonicalDomain) is one of the app's.
func (a *App) IsLocalDomain(domain string) bool { return a.localDomains[domain] }

// LookupMailbox returns the local account for an address on a local domain:
// the address itself or an alias, else the same without its +tag.
func (a *App) LookupMailbox(ctx context.Context, addr Address) (string, error) {
	mb, err := a.lookupOwner(ctx, addr)
	if err == ErrNoSuchUser {
		if catchAll, ok := a.catchAll[addr.Domain]; ok {
			return a.accounts.Lookup(ctx, catchAll)
		}
	}
	return mb, err
}

// lookupOwner is LookupMailbox without the catch-all: the account that
// owns the address (and may send as it).
func (a *App) lookupOwner(ctx context.Context, addr Address) (string, error) {
	if a.accounts == nil {
		return "", ErrNoSuchUser
	}
	full := strings.ToLower(addr.Local) + "@" + addr.Domain
	mb, err := a.accounts.Lookup(ctx, full)
	if err == ErrNoSuchUser {
		if base := StripSubaddress(addr.Local); base != addr.Local {
			mb, err = a.accounts.Lookup(ctx, strings.ToLower(base)+"@"+addr.Domain)
		}
	}
	if err == ErrNoSuchUser && a.Postmaster != "" && strings.EqualFold(StripSubaddress(addr.Local), "postmaster") {
		pm, err := CanonicalAddress(a.Postmaster)
		if err != nil {
			return "", ErrNoSuchUser
		}
		return a.accounts.Lookup(ctx, pm)
	}
	return mb, err
}

// Resolver is the app's DNS resolver, shared by the modules.
func (a *App) DNS() *Resolver { return a.resolver }

// LocalDelivery returns the target that stores mail for local mailboxes.
func (a *App) LocalDelivery() DeliveryTarget { return a.localDelivery }

type appCtxKey struct{}

// AppFrom returns the smtp app that is loading the module whose Provision
// gets ctx (modules use it for the resolver, the local domains and the
// local delivery target), or nil outside the smtp app.
func AppFrom(ctx caddy.Context) *App {
	a, _ := ctx.Value(appCtxKey{}).(*App)
	return a
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
