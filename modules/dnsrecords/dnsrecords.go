// Package dnsrecords is the `caddy smtp-dns` command: the DNS records that
// publish the smtp app's domains (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT,
// TLSA, SRV and the web names), printed in zone-file syntax from a config
// file and Caddy's storage, and with --check compared with what a
// resolver answers. It reads the storage and never writes it.
package dnsrecords

import (
	"context"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/certmagic"
	"github.com/miekg/dns"
	"github.com/spf13/cobra"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/mtasts"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-dns",
		Usage: "[--config <path> [--adapter <name>]] [--check [--resolver <ip[:port]>]]",
		Short: "Prints the DNS records to publish for the mail domains, or checks them",
		Long: `
Reads the config (as "caddy run" would, without running it) and Caddy's
storage, and prints for every local domain of the smtp app the DNS records
to publish, in zone-file syntax: MX, SPF, DKIM (the outbound queue's key,
once the server has made it), DMARC, the MTA-STS and TLS-RPT records, TLSA
(DANE) for the current certificate of each MX hostname, RFC 6186 SRV
records for submission, and the names of the autoconfig/autodiscover and
mta-sts web sites.

With --check, asks the app's resolver (or --resolver) for each record and
prints ok, missing, different or custom (an SPF or DMARC record of your
own); the exit status is 1 when a record is missing or different.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("config", "c", "", "Configuration file")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().Bool("check", false, "Compare the records with what the resolver answers")
			cmd.Flags().String("resolver", "", "DNS resolver for --check (ip[:port]); default: the smtp app's")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdDNS)
		},
	})
}

func cmdDNS(fl caddycmd.Flags) (int, error) {
	cfg, _, _, err := caddycmd.LoadConfig(fl.String("config"), fl.String("adapter"))
	if err != nil {
		return 1, err
	}
	if cfg == nil {
		return 1, fmt.Errorf("no config: give one with --config")
	}
	return Run(context.Background(), os.Stdout, cfg, Options{Check: fl.Bool("check"), Resolver: fl.String("resolver")})
}

// Options of Run.
type Options struct {
	// Check queries the records instead of only printing them.
	Check bool
	// Resolver for Check (ip[:port]); default: the smtp app's resolver.
	Resolver string
}

// TTL of the records printed.
const TTL = 3600

// Record is one record to publish.
type Record struct {
	// Comment explains the record (printed above it).
	Comment string
	// RR is the record.
	RR dns.RR
	// Kind is, for TXT records, the version tag that marks the records of
	// this kind at the name ("v=spf1"): other TXT records there are
	// ignored by --check.
	Kind string
	// Custom: a record of this kind with other content is the owner's
	// choice (SPF, DMARC), reported as "custom", not as an error.
	Custom bool
}

// Domain is the records of one local domain, and notes about records
// that cannot be made yet.
type Domain struct {
	Name    string
	Records []Record
	Notes   []string
}

// Run prints the records of the config cfg (JSON) to w, or checks them.
// It returns the exit status.
func Run(ctx context.Context, w io.Writer, cfg []byte, opt Options) (int, error) {
	conf, err := parseConfig(cfg)
	if err != nil {
		return 1, err
	}
	storage, err := conf.storage()
	if err != nil {
		return 1, err
	}
	domains, err := Build(ctx, conf, storage)
	if err != nil {
		return 1, err
	}
	if !opt.Check {
		Print(w, domains)
		return 0, nil
	}
	rc := conf.app.Resolver
	if opt.Resolver != "" {
		rc = &smtpapp.ResolverConfig{Servers: []string{opt.Resolver}}
	}
	res, err := smtpapp.NewResolver(rc)
	if err != nil {
		return 1, fmt.Errorf("resolver: %v", err)
	}
	if Check(ctx, w, res, domains) {
		return 0, nil
	}
	return 1, nil
}

// config is what the command reads from a Caddy config.
type config struct {
	app        *smtpapp.App
	storageRaw json.RawMessage
	// mtaSTS is the first mta_sts http handler's config (nil: none).
	mtaSTS *mtaSTSConfig
	// imap is the first mail_autoconfig handler's IMAP server (nil: none).
	imap *imapConfig
	// autoconfig: a mail_autoconfig handler exists.
	autoconfig bool
}

type mtaSTSConfig struct {
	Mode   string         `json:"mode"`
	MaxAge caddy.Duration `json:"max_age"`
	MX     []string       `json:"mx"`
}

type imapConfig struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Security string `json:"security"`
}

func parseConfig(raw []byte) (*config, error) {
	var cfg struct {
		Storage json.RawMessage            `json:"storage"`
		Apps    map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("decoding the config: %v", err)
	}
	smtpRaw, ok := cfg.Apps["smtp"]
	if !ok {
		return nil, fmt.Errorf("the config has no smtp app")
	}
	app := new(smtpapp.App)
	if err := json.Unmarshal(smtpRaw, app); err != nil {
		return nil, fmt.Errorf("apps.smtp: %v", err)
	}
	if err := app.FillDefaults(); err != nil {
		return nil, fmt.Errorf("apps.smtp: %v", err)
	}
	c := &config{app: app, storageRaw: cfg.Storage}
	if httpRaw, ok := cfg.Apps["http"]; ok {
		var tree any
		json.Unmarshal(httpRaw, &tree)
		walkHandlers(tree, func(obj map[string]any) {
			b, _ := json.Marshal(obj)
			switch obj["handler"] {
			case "mta_sts":
				if c.mtaSTS == nil {
					c.mtaSTS = new(mtaSTSConfig)
					json.Unmarshal(b, c.mtaSTS)
				}
			case "mail_autoconfig":
				c.autoconfig = true
				var h struct {
					IMAP *imapConfig `json:"imap"`
				}
				json.Unmarshal(b, &h)
				if c.imap == nil && h.IMAP != nil && h.IMAP.Host != "" {
					c.imap = h.IMAP
				}
			}
		})
	}
	return c, nil
}

// walkHandlers calls fn for every JSON object with a "handler" key in the
// http app's config (routes nest in subroutes).
func walkHandlers(v any, fn func(map[string]any)) {
	switch t := v.(type) {
	case map[string]any:
		if _, ok := t["handler"].(string); ok {
			fn(t)
		}
		for _, c := range t {
			walkHandlers(c, fn)
		}
	case []any:
		for _, c := range t {
			walkHandlers(c, fn)
		}
	}
}

// storage opens the config's storage (default: Caddy's data directory),
// to read keys and certificates.
func (c *config) storage() (certmagic.Storage, error) {
	if len(c.storageRaw) == 0 {
		return caddy.DefaultStorage, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(c.storageRaw, &obj); err != nil {
		return nil, fmt.Errorf("storage: %v", err)
	}
	var name string
	json.Unmarshal(obj["module"], &name)
	delete(obj, "module")
	rest, _ := json.Marshal(obj)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	mod, err := ctx.LoadModuleByID("caddy.storage."+name, rest)
	if err != nil {
		return nil, fmt.Errorf("storage: %v", err)
	}
	conv, ok := mod.(caddy.StorageConverter)
	if !ok {
		return nil, fmt.Errorf("storage: module %q is not a storage", name)
	}
	return conv.CertMagicStorage()
}

// Build makes the records of every local domain.
func Build(ctx context.Context, c *config, storage certmagic.Storage) ([]Domain, error) {
	app := c.app
	mx := app.MXHostnames()
	web := ""
	if len(mx) > 0 {
		web = mx[0]
	} else if hs := app.Hostnames(); len(hs) > 0 {
		web = hs[0]
	}
	dkimSels, dkimOn, dkimDomains := dkimSettings(app)
	var out []Domain
	for _, d := range app.Domains() {
		dom := Domain{Name: d}
		add := func(comment, kind string, custom bool, format string, args ...any) error {
			rr, err := dns.NewRR(fmt.Sprintf(format, args...))
			if err != nil {
				return fmt.Errorf("%s: record %q: %v", d, fmt.Sprintf(format, args...), err)
			}
			dom.Records = append(dom.Records, Record{Comment: comment, RR: rr, Kind: kind, Custom: custom})
			return nil
		}
		for i, h := range mx {
			c := ""
			if i == 0 {
				c = "Mail for the domain goes to the MX servers of the smtp app."
			}
			if err := add(c, "", false, "%s. %d IN MX 10 %s.", d, TTL, h); err != nil {
				return nil, err
			}
		}
		if err := add("SPF: only the domain's MX hosts send its mail (the queue sends from this host).", "v=spf1", true,
			`%s. %d IN TXT "v=spf1 mx -all"`, d, TTL); err != nil {
			return nil, err
		}
		switch {
		case !dkimOn:
			dom.Notes = append(dom.Notes, "no DKIM: the outbound queue signs nothing (no queue, or dkim disabled)")
		case len(dkimDomains) > 0 && !contains(dkimDomains, d):
			dom.Notes = append(dom.Notes, "no DKIM: the queue's dkim.domains does not list "+d)
		default:
			for _, dkimSel := range dkimSels {
				rec, err := dkimRecord(ctx, storage, d, dkimSel)
				if err != nil {
					dom.Notes = append(dom.Notes, fmt.Sprintf("no DKIM record yet for selector %s: %v", dkimSel, err))
				} else if err := add("DKIM: the public key of one of the outbound queue's signing keys (Caddy storage).", "v=DKIM1", false,
					"%s._domainkey.%s. %d IN TXT %s", dkimSel, d, TTL, txtStrings(rec)); err != nil {
					return nil, err
				}
			}
		}
		if err := add("DMARC: aggregate reports to the postmaster (a dedicated mailbox is better on a busy domain).", "v=DMARC1", true,
			`_dmarc.%s. %d IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@%s"`, d, TTL, d); err != nil {
			return nil, err
		}
		if c.mtaSTS != nil {
			pol := mtasts.Build(app, c.mtaSTS.Mode, time.Duration(c.mtaSTS.MaxAge), c.mtaSTS.MX)
			if err := add(fmt.Sprintf("MTA-STS (mode %s): the id follows the policy served at https://mta-sts.%s/.well-known/mta-sts.txt.", pol.Mode, d),
				"v=STSv1", false, `_mta-sts.%s. %d IN TXT "%s"`, d, TTL, pol.Record()); err != nil {
				return nil, err
			}
			if web != "" {
				if err := add("", "", false, "mta-sts.%s. %d IN CNAME %s.", d, TTL, web); err != nil {
					return nil, err
				}
			}
		} else {
			dom.Notes = append(dom.Notes, "no MTA-STS: add the mta_sts handler to a site block for mta-sts."+d)
		}
		if err := add("TLS-RPT: reports of TLS failures by sending servers.", "v=TLSRPTv1", false,
			`_smtp._tls.%s. %d IN TXT "v=TLSRPTv1; rua=mailto:postmaster@%s"`, d, TTL, d); err != nil {
			return nil, err
		}
		subs := app.SubmissionEndpoints()
		for i, e := range subs {
			svc, prio := "_submission", 10
			if e.Security == "tls" {
				svc, prio = "_submissions", 0
			} else if e.Security == "none" {
				continue
			}
			c := ""
			if i == 0 {
				c = "RFC 6186/8314: where mail clients submit (implicit TLS preferred)."
			}
			if err := add(c, "", false, "%s._tcp.%s. %d IN SRV %d 1 %d %s.", svc, d, TTL, prio, e.Port, e.Host); err != nil {
				return nil, err
			}
		}
		if c.imap != nil {
			svc, port := "_imaps", c.imap.Port
			if c.imap.Security == "starttls" {
				svc = "_imap"
				if port == 0 {
					port = 143
				}
			} else if port == 0 {
				port = 993
			}
			if err := add("", "", false, "%s._tcp.%s. %d IN SRV 0 1 %d %s.", svc, d, TTL, port, strings.TrimSuffix(c.imap.Host, ".")); err != nil {
				return nil, err
			}
		}
		if c.autoconfig && web != "" {
			if err := add("Mail client autoconfiguration (Thunderbird, Outlook) on this Caddy.", "", false,
				"autoconfig.%s. %d IN CNAME %s.", d, TTL, web); err != nil {
				return nil, err
			}
			if err := add("", "", false, "autodiscover.%s. %d IN CNAME %s.", d, TTL, web); err != nil {
				return nil, err
			}
		}
		out = append(out, dom)
	}
	// TLSA and the hosts' own SPF, once per MX host, under a pseudo-domain.
	if len(mx) > 0 {
		hosts := Domain{Name: "MX hosts"}
		for _, h := range mx {
			rr, err := dns.NewRR(fmt.Sprintf(`%s. %d IN TXT "v=spf1 a -all"`, h, TTL))
			if err != nil {
				return nil, err
			}
			hosts.Records = append(hosts.Records, Record{Comment: "SPF of the HELO name " + h + ".", RR: rr, Kind: "v=spf1", Custom: true})
			digest, err := certDigest(ctx, storage, h)
			if err != nil {
				hosts.Notes = append(hosts.Notes, fmt.Sprintf("no TLSA for %s: %v", h, err))
				continue
			}
			rr, err = dns.NewRR(fmt.Sprintf("_25._tcp.%s. %d IN TLSA 3 1 1 %s", h, TTL, digest))
			if err != nil {
				return nil, err
			}
			hosts.Records = append(hosts.Records, Record{
				Comment: "DANE (publish only with DNSSEC): pins the key of the current certificate. Keep the key across\n" +
					"renewals, or this breaks at the next one: reuse_private_keys in the tls app's automation policy\n" +
					"(Caddyfile: a site block for " + h + " with tls { reuse_private_keys }).",
				RR: rr,
			})
		}
		out = append(out, hosts)
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(strings.TrimSuffix(v, "."), s) {
			return true
		}
	}
	return false
}

// txtStrings quotes s in strings of at most 255 bytes.
func txtStrings(s string) string {
	var parts []string
	for len(s) > 0 {
		n := min(len(s), 255)
		parts = append(parts, `"`+s[:n]+`"`)
		s = s[n:]
	}
	return strings.Join(parts, " ")
}

// dkimSettings reads the outbound queue's dkim settings from the config:
// the selectors of its keys (RSA and Ed25519, as the queue's DKIMConfig
// lays them out), whether it signs, and the domains it signs for (empty:
// all).
func dkimSettings(app *smtpapp.App) (selectors []string, on bool, domains []string) {
	var q struct {
		Target string `json:"target"`
		DKIM   *struct {
			Disable         bool     `json:"disable"`
			Selector        string   `json:"selector"`
			Ed25519Selector string   `json:"ed25519_selector"`
			Algorithms      []string `json:"algorithms"`
			KeyType         string   `json:"key_type"`
			Domains         []string `json:"domains"`
		} `json:"dkim"`
	}
	if app.OutboundRaw == nil || json.Unmarshal(app.OutboundRaw, &q) != nil || q.Target != "queue" {
		return nil, false, nil
	}
	selector, edSelector, algs := "caddysmtp", "", []string{"rsa", "ed25519"}
	if dk := q.DKIM; dk != nil {
		if dk.Disable {
			return nil, false, nil
		}
		if dk.Selector != "" {
			selector = dk.Selector
		}
		edSelector, domains = dk.Ed25519Selector, dk.Domains
		if len(dk.Algorithms) > 0 {
			algs = dk.Algorithms
		}
		if dk.KeyType == "ed25519" { // the earlier setting: Ed25519 only, under selector
			algs = []string{"ed25519"}
			if edSelector == "" {
				edSelector = selector
			}
		}
	}
	if edSelector == "" {
		edSelector = selector + "-ed25519"
	}
	for _, a := range algs {
		switch a {
		case "rsa":
			selectors = append(selectors, selector)
		case "ed25519":
			selectors = append(selectors, edSelector)
		}
	}
	return selectors, true, domains
}

// DKIMStorageKey is where the queue keeps a domain's DKIM key (PEM) in
// Caddy's storage (modules/queue's layout, read here without importing it).
func DKIMStorageKey(domain, selector string) string {
	return "smtp/dkim/" + domain + "/" + selector + ".key"
}

// dkimRecord reads a domain's key from storage and returns its TXT value.
func dkimRecord(ctx context.Context, storage certmagic.Storage, domain, selector string) (string, error) {
	key := DKIMStorageKey(domain, selector)
	pemBytes, err := storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s is not in storage (the queue makes it when the server starts)", key)
	}
	if err != nil {
		return "", err
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return "", fmt.Errorf("%s: no PEM block", key)
	}
	var priv any
	if block.Type == "RSA PRIVATE KEY" {
		priv, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	} else {
		priv, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %v", key, err)
	}
	switch p := priv.(type) {
	case *rsa.PrivateKey:
		der, err := x509.MarshalPKIXPublicKey(&p.PublicKey)
		if err != nil {
			return "", err
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PrivateKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(p.Public().(ed25519.PublicKey)), nil
	}
	return "", fmt.Errorf("%s: unsupported key type %T", key, priv)
}

// certDigest finds the newest certificate for host in certmagic's storage
// (certificates/<issuer>/<host>/<host>.crt) and returns the SHA-256 of its
// public key (TLSA 3 1 1), in hex.
func certDigest(ctx context.Context, storage certmagic.Storage, host string) (string, error) {
	keys, err := storage.List(ctx, "certificates", true)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	suffix := "/" + host + "/" + host + ".crt"
	var best *x509.Certificate
	for _, k := range keys {
		if !strings.HasSuffix(k, suffix) {
			continue
		}
		b, err := storage.Load(ctx, k)
		if err != nil {
			continue
		}
		block, _ := pem.Decode(b)
		if block == nil {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			continue
		}
		if best == nil || cert.NotBefore.After(best.NotBefore) {
			best = cert
		}
	}
	if best == nil {
		return "", fmt.Errorf("no certificate in storage yet (start the server first)")
	}
	sum := sha256.Sum256(best.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:]), nil
}

// Print writes the records in zone-file syntax.
func Print(w io.Writer, domains []Domain) {
	for i, d := range domains {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "; ---- %s\n", d.Name)
		for _, r := range d.Records {
			if r.Comment != "" {
				for _, l := range strings.Split(r.Comment, "\n") {
					fmt.Fprintf(w, "; %s\n", l)
				}
			}
			fmt.Fprintln(w, r.RR.String())
		}
		for _, n := range d.Notes {
			fmt.Fprintf(w, "; NOTE: %s\n", n)
		}
	}
}

// The results of a check.
const (
	StatusOK        = "ok"
	StatusMissing   = "missing"
	StatusDifferent = "different"
	StatusCustom    = "custom"
	StatusError     = "error"
)

// Check queries each record and prints its status; it reports whether
// all are ok (or custom).
func Check(ctx context.Context, w io.Writer, res *smtpapp.Resolver, domains []Domain) bool {
	good := true
	for _, d := range domains {
		for _, r := range d.Records {
			status, published, err := checkRecord(ctx, res, r)
			h := r.RR.Header()
			fmt.Fprintf(w, "%-9s %s %s\n", status, h.Name, dns.TypeToString[h.Rrtype])
			switch status {
			case StatusOK:
				continue
			case StatusError:
				fmt.Fprintf(w, "          %v\n", err)
			default:
				fmt.Fprintf(w, "          want:      %s\n", strings.TrimSpace(rdata(r.RR)))
				for _, p := range published {
					fmt.Fprintf(w, "          published: %s\n", p)
				}
			}
			if status != StatusCustom {
				good = false
			}
		}
	}
	return good
}

// rdata is the record's data, without name, TTL, class and type.
func rdata(rr dns.RR) string {
	s := rr.String()
	h := rr.Header().String()
	return strings.TrimPrefix(s, h)
}

func txtValue(rr dns.RR) string {
	if t, ok := rr.(*dns.TXT); ok {
		return strings.Join(t.Txt, "")
	}
	return ""
}

// checkRecord compares one record with the resolver's answer: ok when
// an answer of its type (and, for TXT, its kind) equals it; different (or
// custom) when there are others; missing when there are none. A CNAME
// replaced by address records counts as custom.
func checkRecord(ctx context.Context, res *smtpapp.Resolver, r Record) (string, []string, error) {
	h := r.RR.Header()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	msg, err := res.Query(ctx, h.Name, h.Rrtype)
	if err != nil {
		return StatusError, nil, err
	}
	var published []string
	for _, rr := range msg.Answer {
		if rr.Header().Rrtype != h.Rrtype || !strings.EqualFold(rr.Header().Name, h.Name) {
			continue
		}
		if h.Rrtype == dns.TypeTXT {
			v := txtValue(rr)
			if r.Kind != "" && !strings.HasPrefix(strings.ToLower(v), strings.ToLower(r.Kind)) {
				continue
			}
			if v == txtValue(r.RR) {
				return StatusOK, nil, nil
			}
			published = append(published, strings.TrimSpace(rdata(rr)))
			continue
		}
		if strings.EqualFold(rdata(rr), rdata(r.RR)) {
			return StatusOK, nil, nil
		}
		published = append(published, strings.TrimSpace(rdata(rr)))
	}
	if len(published) > 0 {
		if r.Custom {
			return StatusCustom, published, nil
		}
		return StatusDifferent, published, nil
	}
	if h.Rrtype == dns.TypeCNAME {
		for _, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
			if m, err := res.Query(ctx, h.Name, t); err == nil && len(m.Answer) > 0 {
				for _, rr := range m.Answer {
					published = append(published, strings.TrimSpace(rr.String()))
				}
				return StatusCustom, published, nil
			}
		}
	}
	return StatusMissing, nil, nil
}
