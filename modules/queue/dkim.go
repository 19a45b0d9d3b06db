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
// is one of the app's local domains.
type DKIMConfig struct {
	// Disable turns signing off.
	Disable bool `json:"disable,omitempty"`

	// Selector names the key in DNS: <selector>._domainkey.<domain>.
	// Default: caddysmtp.
	Selector string `json:"selector,omitempty"`

	// KeyType of keys generated when a domain has none: rsa2048 (default,
	// verified everywhere), rsa4096, or ed25519 (RFC 8463; not yet
	// verified by every receiver). An existing key is used as it is.
	KeyType string `json:"key_type,omitempty"`

	// Domains to sign for. Default: every local domain.
	Domains []string `json:"domains,omitempty"`
}

// provision checks the config and loads (or makes) the key of each domain
// to sign for; localDomains is the default list.
func (d *DKIMConfig) provision(ctx caddy.Context, localDomains []string, logger *zap.Logger) (map[string]*dkimKey, error) {
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
	if !smtpapp.ValidHostname(sel) || strings.Contains(sel, "_") {
		return nil, fmt.Errorf("selector: %q is not a valid DNS label sequence", sel)
	}
	switch d.KeyType {
	case "", "rsa2048", "rsa4096", "ed25519":
	default:
		return nil, fmt.Errorf("key_type: %q is not rsa2048, rsa4096 or ed25519", d.KeyType)
	}
	domains := d.Domains
	if len(domains) == 0 {
		domains = localDomains
	}
	keys := map[string]*dkimKey{}
	for i, dom := range domains {
		dom = strings.TrimSuffix(strings.ToLower(dom), ".")
		if !smtpapp.ValidHostname(dom) {
			return nil, fmt.Errorf("domains[%d]: invalid domain %q", i, domains[i])
		}
		k, err := loadDKIMKey(ctx, ctx.Storage(), dom, sel, d.KeyType, logger)
		if err != nil {
			return nil, fmt.Errorf("domains[%d]: key of %s: %v", i, dom, err)
		}
		keys[dom] = k
	}
	return keys, nil
}

// dkimKey is one domain's signing key.
type dkimKey struct {
	Domain   string
	Selector string
	signer   crypto.Signer
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
// agree on one key).
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
	logger.Info("DKIM key loaded", zap.String("domain", domain), zap.String("selector", selector),
		zap.String("record", k.ZoneLine()))
	return k, nil
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
	k := &dkimKey{Domain: domain, Selector: selector}
	switch p := priv.(type) {
	case *rsa.PrivateKey:
		der, err := x509.MarshalPKIXPublicKey(&p.PublicKey)
		if err != nil {
			return nil, err
		}
		k.signer = p
		k.Record = "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	case ed25519.PrivateKey:
		k.signer = p
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

// sign returns the DKIM-Signature field (with CRLF) for the message that
// write produces, whose header fields are fields.
func (k *dkimKey) sign(fields []headerField, write func(io.Writer) (int64, error)) ([]byte, error) {
	count := map[string]int{}
	for _, f := range fields {
		count[strings.ToLower(f.name)]++
	}
	var keys []string
	for _, name := range signedHeaders {
		n := count[strings.ToLower(name)]
		if overSigned[strings.ToLower(name)] {
			n++
		}
		for range n {
			keys = append(keys, name)
		}
	}
	s, err := dkim.NewSigner(&dkim.SignOptions{
		Domain:                 k.Domain,
		Selector:               k.Selector,
		Signer:                 k.signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             keys,
	})
	if err != nil {
		return nil, err
	}
	if _, err := write(s); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.Close(); err != nil {
		return nil, err
	}
	return []byte(s.Signature()), nil
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
