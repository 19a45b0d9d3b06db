package queue

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/mail"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/emersion/go-msgauth/dkim"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// DKIMConfig configures DKIM signing (RFC 6376) of mail whose From domain
// is one of the app's local domains. By default each message gets two
// signatures: RSA (verified everywhere) and Ed25519 (RFC 8463; small and
// cheap, but not yet verified by every receiver). A receiver uses the
// signatures it can verify and ignores the others.
type DKIMConfig struct {
	// Disable turns signing off.
	Disable bool `json:"disable,omitempty"`

	// Selector names the RSA key in DNS: <selector>._domainkey.<domain>.
	// Default: caddysmtp.
	Selector string `json:"selector,omitempty"`

	// Ed25519Selector names the Ed25519 key in DNS. Default:
	// <selector>-ed25519 (caddysmtp-ed25519); with key_type ed25519, the
	// selector itself.
	Ed25519Selector string `json:"ed25519_selector,omitempty"`

	// Algorithms to sign with, each with its own key and signature: rsa,
	// ed25519. Default: both. ["ed25519"] avoids the cost of RSA, for
	// mail whose receivers verify Ed25519.
	Algorithms []string `json:"algorithms,omitempty"`

	// KeyType of the RSA key generated when a domain has none: rsa2048
	// (default) or rsa4096. An existing key is used as it is. ed25519 is
	// the setting of earlier versions (one Ed25519 key, under selector):
	// it means algorithms ["ed25519"] with ed25519_selector defaulting to
	// selector.
	KeyType string `json:"key_type,omitempty"`

	// Domains to sign for. Default: every local domain.
	Domains []string `json:"domains,omitempty"`
}

// DKIM signing algorithms (the "algorithms" values).
const (
	algRSA     = "rsa"
	algEd25519 = "ed25519"
)

// provision checks the config and loads (or makes) the keys of each
// domain to sign for, in signing order; localDomains is the default list.
func (d *DKIMConfig) provision(ctx caddy.Context, localDomains []string, logger *zap.Logger) (map[string][]*dkimKey, error) {
	if d == nil {
		d = &DKIMConfig{}
	}
	if d.Disable {
		return nil, nil
	}
	sel := d.Selector
	if sel == "" {
		sel = "caddysmtp"
	}
	if !validSelector(sel) {
		return nil, fmt.Errorf("selector: %q is not a valid DNS label sequence", sel)
	}
	legacy := d.KeyType == "ed25519"
	switch d.KeyType {
	case "", "rsa2048", "rsa4096", "ed25519":
	default:
		return nil, fmt.Errorf("key_type: %q is not rsa2048, rsa4096 or ed25519", d.KeyType)
	}
	var rsaOn, edOn bool
	for i, a := range d.Algorithms {
		switch strings.ToLower(a) {
		case algRSA:
			rsaOn = true
		case algEd25519:
			edOn = true
		default:
			return nil, fmt.Errorf("algorithms[%d]: %q is not rsa or ed25519", i, a)
		}
	}
	switch {
	case len(d.Algorithms) == 0 && legacy:
		edOn = true
	case len(d.Algorithms) == 0:
		rsaOn, edOn = true, true
	case legacy && rsaOn:
		return nil, fmt.Errorf("key_type: ed25519 with algorithms rsa: key_type is the RSA key's size (rsa2048 or rsa4096)")
	}
	edSel := d.Ed25519Selector
	switch {
	case edSel == "" && legacy:
		edSel = sel
	case edSel == "":
		edSel = sel + "-ed25519"
	case !validSelector(edSel):
		return nil, fmt.Errorf("ed25519_selector: %q is not a valid DNS label sequence", edSel)
	}
	if rsaOn && edOn && edSel == sel {
		return nil, fmt.Errorf("ed25519_selector: %q is also the RSA key's selector; signing with both needs two", edSel)
	}
	rsaType := d.KeyType
	if legacy {
		rsaType = ""
	}
	domains := d.Domains
	if len(domains) == 0 {
		domains = localDomains
	}
	keys := map[string][]*dkimKey{}
	for i, dom := range domains {
		dom, ok := smtpapp.CanonicalDomain(dom) // an IDN: its A-label, as in envelopes
		if !ok {
			return nil, fmt.Errorf("domains[%d]: invalid domain %q", i, domains[i])
		}
		// Ed25519 first: a receiver that checks only the first
		// signature it understands finds the cheap one at once.
		if edOn {
			k, err := loadDKIMKey(ctx, ctx.Storage(), dom, edSel, algEd25519, logger)
			if err != nil {
				return nil, fmt.Errorf("domains[%d]: Ed25519 key of %s: %v", i, dom, err)
			}
			keys[dom] = append(keys[dom], k)
		}
		if rsaOn {
			k, err := loadDKIMKey(ctx, ctx.Storage(), dom, sel, rsaType, logger)
			if err != nil {
				return nil, fmt.Errorf("domains[%d]: RSA key of %s: %v", i, dom, err)
			}
			keys[dom] = append(keys[dom], k)
		}
	}
	return keys, nil
}

func validSelector(sel string) bool {
	return smtpapp.ValidHostname(sel) && !strings.Contains(sel, "_")
}

// dkimKey is one domain's signing key.
type dkimKey struct {
	Domain   string
	Selector string
	// Algorithm is rsa or ed25519.
	Algorithm string
	signer    crypto.Signer
	// Record is the TXT record value to publish.
	Record string
}

// Name is the DNS name of the key's TXT record.
func (k *dkimKey) Name() string { return k.Selector + "._domainkey." + k.Domain }

// ZoneLine is the record in zone-file syntax, split in 255-byte strings.
func (k *dkimKey) ZoneLine() string {
	var parts []string
	for s := k.Record; len(s) > 0; {
		n := min(len(s), 255)
		parts = append(parts, `"`+s[:n]+`"`)
		s = s[n:]
	}
	return k.Name() + ". 3600 IN TXT " + strings.Join(parts, " ")
}

func dkimStorageKey(domain, selector string) string {
	return "smtp/dkim/" + domain + "/" + selector + ".key"
}

// loadDKIMKey loads a domain's key from storage, generating and storing it
// if missing (under the storage lock, so that instances sharing storage
// agree on one key). keyType is "" or rsa2048, rsa4096 (an RSA key), or
// ed25519; a stored key of the other algorithm is an error.
func loadDKIMKey(ctx context.Context, storage certmagic.Storage, domain, selector, keyType string, logger *zap.Logger) (*dkimKey, error) {
	key := dkimStorageKey(domain, selector)
	pemBytes, err := storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		lockName := "smtp_dkim_" + domain + "_" + selector
		if err := storage.Lock(ctx, lockName); err != nil {
			return nil, fmt.Errorf("locking storage for %s: %v", key, err)
		}
		defer storage.Unlock(context.WithoutCancel(ctx), lockName)
		pemBytes, err = storage.Load(ctx, key)
		if errors.Is(err, fs.ErrNotExist) {
			pemBytes, err = generateDKIMKey(keyType)
			if err != nil {
				return nil, err
			}
			if err := storage.Store(ctx, key, pemBytes); err != nil {
				return nil, fmt.Errorf("storing %s: %v", key, err)
			}
			k, err := parseDKIMKey(pemBytes, domain, selector)
			if err != nil {
				return nil, err
			}
			logger.Warn("generated a DKIM key: publish its DNS record",
				zap.String("domain", domain), zap.String("selector", selector),
				zap.String("storage_key", key), zap.String("record", k.ZoneLine()))
			return k, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("loading %s: %v", key, err)
	}
	k, err := parseDKIMKey(pemBytes, domain, selector)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", key, err)
	}
	if want := keyAlgorithm(keyType); k.Algorithm != want {
		return nil, fmt.Errorf("%s is an %s key, not %s (give this algorithm another selector)", key, k.Algorithm, want)
	}
	logger.Info("DKIM key loaded", zap.String("domain", domain), zap.String("selector", selector),
		zap.String("record", k.ZoneLine()))
	return k, nil
}

// keyAlgorithm is the algorithm of a key type.
func keyAlgorithm(keyType string) string {
	if keyType == "ed25519" {
		return algEd25519
	}
	return algRSA
}

func generateDKIMKey(keyType string) ([]byte, error) {
	var priv any
	var err error
	switch keyType {
	case "", "rsa2048":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "rsa4096":
		priv, err = rsa.GenerateKey(rand.Reader, 4096)
	case "ed25519":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("unknown key type %q", keyType)
	}
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseDKIMKey(pemBytes []byte, domain, selector string) (*dkimKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, fmt.Errorf("no PEM block")
	}
	var priv any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		priv, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		priv, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, err
	}
	k := &dkimKey{Domain: domain, Selector: selector, Algorithm: algRSA}
	switch p := priv.(type) {
	case *rsa.PrivateKey:
		der, err := x509.MarshalPKIXPublicKey(&p.PublicKey)
		if err != nil {
			return nil, err
		}
		k.signer = p
		k.Record = "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	case ed25519.PrivateKey:
		k.signer, k.Algorithm = p, algEd25519
		k.Record = "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(p.Public().(ed25519.PublicKey))
	default:
		return nil, fmt.Errorf("unsupported key type %T", priv)
	}
	return k, nil
}

// signedHeaders are the fields signed when present (RFC 6376 5.4.1, plus
// the MIME fields); From, To, Cc, Subject, Date and Reply-To are also
// signed once more than present, so that none can be added later.
var signedHeaders = []string{
	"From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "Resent-Date", "Resent-From", "Resent-Sender",
	"Resent-To", "Resent-Cc", "List-Id", "List-Help", "List-Unsubscribe",
	"List-Subscribe", "List-Post", "List-Owner", "List-Archive",
}

var overSigned = map[string]bool{"from": true, "to": true, "cc": true, "subject": true, "date": true, "reply-to": true}

// signDKIM returns the DKIM-Signature fields (each with CRLF), one per
// key in order, for the message that write produces, whose header fields
// are fields. The message is produced once for all the signers.
func signDKIM(keys []*dkimKey, fields []headerField, write func(io.Writer) (int64, error)) ([]byte, error) {
	count := map[string]int{}
	for _, f := range fields {
		count[strings.ToLower(f.name)]++
	}
	var hkeys []string
	for _, name := range signedHeaders {
		n := count[strings.ToLower(name)]
		if overSigned[strings.ToLower(name)] {
			n++
		}
		for range n {
			hkeys = append(hkeys, name)
		}
	}
	signers := make([]*dkim.Signer, len(keys))
	ws := make([]io.Writer, len(keys))
	closeAll := func() {
		for _, s := range signers {
			if s != nil {
				s.Close()
			}
		}
	}
	for i, k := range keys {
		s, err := dkim.NewSigner(&dkim.SignOptions{
			Domain:                 k.Domain,
			Selector:               k.Selector,
			Signer:                 k.signer,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed,
			BodyCanonicalization:   dkim.CanonicalizationRelaxed,
			HeaderKeys:             hkeys,
		})
		if err != nil {
			closeAll()
			return nil, err
		}
		signers[i], ws[i] = s, s
	}
	w := ws[0]
	if len(ws) > 1 {
		w = io.MultiWriter(ws...)
	}
	if _, err := write(w); err != nil {
		closeAll()
		return nil, err
	}
	var out []byte
	for i, s := range signers {
		if err := s.Close(); err != nil {
			signers[i] = nil
			closeAll()
			return nil, err
		}
		signers[i] = nil
		out = append(out, s.Signature()...)
	}
	return out, nil
}

// headerField is one header field of a message, unfolded.
type headerField struct {
	name, value string
}

// maxHeaderScan bounds how much of a message is read for its header.
const maxHeaderScan = 1 << 20

// readHeader returns the header block of a message (through the empty line,
// or what there is within maxHeaderScan) and its fields.
func readHeader(r io.Reader) ([]byte, []headerField) {
	br := bufio.NewReader(io.LimitReader(r, maxHeaderScan))
	var raw bytes.Buffer
	for {
		line, err := br.ReadBytes('\n')
		raw.Write(line)
		if len(bytes.TrimRight(line, "\r\n")) == 0 || err != nil {
			break
		}
	}
	var fields []headerField
	for _, line := range strings.SplitAfter(raw.String(), "\n") {
		t := strings.TrimRight(line, "\r\n")
		if t == "" {
			continue
		}
		if t[0] == ' ' || t[0] == '\t' {
			if len(fields) > 0 {
				fields[len(fields)-1].value += " " + strings.TrimSpace(t)
			}
			continue
		}
		name, value, ok := strings.Cut(t, ":")
		if !ok {
			continue
		}
		fields = append(fields, headerField{name: strings.TrimSpace(name), value: strings.TrimSpace(value)})
	}
	return raw.Bytes(), fields
}

// fromDomain returns the lower-case domain of the first address in the
// From field, or "".
func fromDomain(fields []headerField) string {
	for _, f := range fields {
		if !strings.EqualFold(f.name, "From") {
			continue
		}
		list, err := mail.ParseAddressList(f.value)
		if err != nil || len(list) == 0 {
			return ""
		}
		at := strings.LastIndexByte(list[0].Address, '@')
		if at < 0 {
			return ""
		}
		return strings.TrimSuffix(strings.ToLower(list[0].Address[at+1:]), ".")
	}
	return ""
}
