package dnsrecords_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-smtp/caddy-smtp"
	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/modules/dnsrecords"
)

var update = flag.Bool("update", false, "rewrite the golden zone file")

// exampleConfig adapts examples/domain.Caddyfile and, in a scratch folder
// (its storage is ./data/caddy), stores a DKIM key and a certificate for
// mail.example.test made from fixed seeds, as the running server would.
func exampleConfig(t *testing.T) []byte {
	t.Helper()
	src, err := os.ReadFile("../../examples/domain.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "domain.Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	store := func(path string, block *pem.Block) {
		path = filepath.Join("data", "caddy", path)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dkimKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))
	der, _ := x509.MarshalPKCS8PrivateKey(dkimKey)
	store("smtp/dkim/example.test/caddysmtp.key", &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	edKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32)) // the queue's second key (RFC 8463)
	edDER, _ := x509.MarshalPKCS8PrivateKey(edKey)
	store("smtp/dkim/example.test/caddysmtp-ed25519.key", &pem.Block{Type: "PRIVATE KEY", Bytes: edDER})
	certKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32))
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mail.example.test"},
		DNSNames: []string{"mail.example.test"}, NotBefore: time.Unix(1700000000, 0), NotAfter: time.Unix(1800000000, 0)}
	certDER, err := x509.CreateCertificate(nil, tmpl, tmpl, certKey.Public(), certKey)
	if err != nil {
		t.Fatal(err)
	}
	store("certificates/local/mail.example.test/mail.example.test.crt", &pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	return cfg
}

// TestRecordsOfTheExample: `caddy smtp-dns` for examples/domain.Caddyfile
// prints testdata/domain.zone (run with -update to rewrite it).
func TestRecordsOfTheExample(t *testing.T) {
	golden, _ := filepath.Abs(filepath.Join("testdata", "domain.zone"))
	cfg := exampleConfig(t)
	var out bytes.Buffer
	code, err := dnsrecords.Run(context.Background(), &out, cfg, dnsrecords.Options{})
	if err != nil || code != 0 {
		t.Fatalf("exit %d: %v", code, err)
	}
	if *update {
		os.WriteFile(golden, out.Bytes(), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(want) {
		t.Fatalf("output differs from %s (run with -update and review):\n%s", golden, out.String())
	}
}

// TestCheck: --check against a real DNS server on loopback that serves
// every record right but one wrong (an old _mta-sts id) and one missing
// (the DKIM key) reports exactly those, and exits 1.
func TestCheck(t *testing.T) {
	cfg := exampleConfig(t)
	var zone bytes.Buffer
	if _, err := dnsrecords.Run(context.Background(), &zone, cfg, dnsrecords.Options{}); err != nil {
		t.Fatal(err)
	}
	srv := testenv.StartDNS(t)
	var names []string
	for _, line := range strings.Split(zone.String(), "\n") {
		if line == "" || strings.HasPrefix(line, ";") {
			continue
		}
		fields := strings.Fields(line)
		name, typ := fields[0], fields[3]
		switch {
		case strings.HasPrefix(name, "caddysmtp._domainkey."):
			continue // missing
		case strings.HasPrefix(name, "_mta-sts."):
			line = name + ` 3600 IN TXT "v=STSv1; id=20240101"`
		}
		srv.Add(t, line)
		names = append(names, name+" "+typ)
	}
	// Other TXT records at the same names do not matter.
	srv.Add(t, `example.test. 3600 IN TXT "google-site-verification=abc"`)

	var out bytes.Buffer
	code, err := dnsrecords.Run(context.Background(), &out, cfg, dnsrecords.Options{Check: true, Resolver: srv.Addr})
	if err != nil {
		t.Fatal(err)
	}
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out.String())
	}
	var bad []string
	ok := 0
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || strings.HasPrefix(line, " ") {
			continue
		}
		switch f[0] {
		case "ok":
			ok++
		default:
			bad = append(bad, f[0]+" "+f[1]+" "+f[2])
		}
	}
	want := []string{"missing caddysmtp._domainkey.example.test. TXT", "different _mta-sts.example.test. TXT"}
	if strings.Join(bad, "\n") != strings.Join(want, "\n") || ok != len(names)-1 {
		t.Fatalf("report (ok %d of %d):\n%s", ok, len(names)+1, out.String())
	}
	if !strings.Contains(out.String(), "published: \"v=STSv1; id=20240101\"") {
		t.Fatalf("the wrong record is not shown:\n%s", out.String())
	}

	// All right: exit 0.
	srv.Clear()
	for _, line := range strings.Split(zone.String(), "\n") {
		if line != "" && !strings.HasPrefix(line, ";") {
			srv.Add(t, line)
		}
	}
	out.Reset()
	if code, err := dnsrecords.Run(context.Background(), &out, cfg, dnsrecords.Options{Check: true, Resolver: srv.Addr}); code != 0 || err != nil {
		t.Fatalf("exit %d (%v):\n%s", code, err, out.String())
	}
}
