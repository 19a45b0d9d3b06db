package autoconfig_test

import (
	"crypto/tls"
	"encoding/xml"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"howett.net/plist"

	_ "github.com/caddy-smtp/caddy-smtp"
	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// TestAutoconfiguration: through Caddy's http app on loopback (internal
// CA), Thunderbird's autoconfig, Outlook's Autodiscover and the Apple
// profile for alice@example.test name the smtp app's submission ports
// with the right security, and the handler's IMAP server.
func TestAutoconfiguration(t *testing.T) {
	env := testenv.New(t)
	hosts := []string{"autoconfig.example.test", "autodiscover.example.test"}
	web := testenv.NewWeb(t, hosts...)
	routes := []any{map[string]any{
		"match": []any{map[string]any{"host": hosts}},
		"handle": []any{
			map[string]any{"handler": "mail_autoconfig", "imap": map[string]any{"host": "imap.example.test"}},
			map[string]any{"handler": "static_response", "status_code": 404},
		},
	}}
	mx, sub, subs := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	internal := map[string]any{"issuer": "internal"}
	app := map[string]any{
		"local_domains":  []string{"example.test"},
		"local_delivery": map[string]any{"target": "maildir", "root": env.Path("maildir")},
		"spool_dir":      env.Path("spool"),
		"hostname":       "mail.example.test",
		"servers": map[string]any{
			"mx":          map[string]any{"listen": []string{fmt.Sprintf("127.0.0.1:%d", mx)}, "tls": internal},
			"submission":  map[string]any{"listen": []string{fmt.Sprintf("127.0.0.1:%d", sub)}, "require_auth": true, "tls": internal},
			"submissions": map[string]any{"listen": []string{fmt.Sprintf("127.0.0.1:%d", subs)}, "require_auth": true, "implicit_tls": true, "tls": internal},
		},
	}
	env.Load(env.Config(app, web.Apps(t, routes)))
	for _, h := range hosts {
		web.WaitForHost(t, env, h)
	}
	testenv.WaitForCertificate(t, fmt.Sprintf("127.0.0.1:%d", mx), &tls.Config{RootCAs: env.RootCAs(), ServerName: "mail.example.test"})
	client := web.Client(env)

	t.Run("thunderbird", func(t *testing.T) {
		for _, path := range []string{"/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"} {
			req, _ := http.NewRequest(http.MethodGet, "https://autoconfig.example.test"+path+"?emailaddress=alice%40example.test", nil)
			status, _, body := web.Do(t, client, req)
			if status != 200 {
				t.Fatalf("%s: %d %s", path, status, body)
			}
			var cfg struct {
				Provider struct {
					ID       string     `xml:"id,attr"`
					Domain   string     `xml:"domain"`
					Incoming []tbServer `xml:"incomingServer"`
					Outgoing []tbServer `xml:"outgoingServer"`
				} `xml:"emailProvider"`
			}
			if err := xml.Unmarshal(body, &cfg); err != nil {
				t.Fatalf("%s: %v\n%s", path, err, body)
			}
			want := []tbServer{
				{"smtp", "mail.example.test", subs, "SSL", "%EMAILADDRESS%"},
				{"smtp", "mail.example.test", sub, "STARTTLS", "%EMAILADDRESS%"},
			}
			if cfg.Provider.Domain != "example.test" || fmt.Sprint(cfg.Provider.Outgoing) != fmt.Sprint(want) {
				t.Fatalf("%s: outgoing %v, want %v\n%s", path, cfg.Provider.Outgoing, want, body)
			}
			if in := []tbServer{{"imap", "imap.example.test", 993, "SSL", "%EMAILADDRESS%"}}; fmt.Sprint(cfg.Provider.Incoming) != fmt.Sprint(in) {
				t.Fatalf("%s: incoming %v", path, cfg.Provider.Incoming)
			}
		}
		req, _ := http.NewRequest(http.MethodGet, "https://autoconfig.example.test/mail/config-v1.1.xml?emailaddress=eve%40elsewhere.example", nil)
		if status, _, _ := web.Do(t, client, req); status != 404 {
			t.Fatalf("address of another domain: %d, want 404", status)
		}
	})

	t.Run("autodiscover", func(t *testing.T) {
		// The request Outlook sends (POX, 2006 schemas).
		body := `<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>alice@example.test</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>`
		req, _ := http.NewRequest(http.MethodPost, "https://autodiscover.example.test/Autodiscover/Autodiscover.xml", strings.NewReader(body))
		req.Header.Set("Content-Type", "text/xml")
		status, _, resp := web.Do(t, client, req)
		if status != 200 {
			t.Fatalf("%d %s", status, resp)
		}
		var ad struct {
			XMLName  xml.Name `xml:"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006 Autodiscover"`
			Response struct {
				Account struct {
					AccountType string `xml:"AccountType"`
					Action      string `xml:"Action"`
					Protocol    []struct {
						Type, Server, LoginName, SSL, Encryption string
						Port                                     int
					} `xml:"Protocol"`
				} `xml:"Account"`
			} `xml:"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a Response"`
		}
		if err := xml.Unmarshal(resp, &ad); err != nil {
			t.Fatalf("%v\n%s", err, resp)
		}
		acct := ad.Response.Account
		if acct.AccountType != "email" || acct.Action != "settings" || len(acct.Protocol) != 3 {
			t.Fatalf("account: %+v\n%s", acct, resp)
		}
		got := fmt.Sprint(acct.Protocol)
		want := fmt.Sprintf("[{IMAP imap.example.test alice@example.test on SSL 993} {SMTP mail.example.test alice@example.test on SSL %d} {SMTP mail.example.test alice@example.test on TLS %d}]", subs, sub)
		if got != want {
			t.Fatalf("protocols:\n%s\nwant\n%s", got, want)
		}
		req, _ = http.NewRequest(http.MethodPost, "https://autodiscover.example.test/autodiscover/autodiscover.xml", strings.NewReader("<Autodiscover><Request></Request></Autodiscover>"))
		if status, _, _ := web.Do(t, client, req); status != 400 {
			t.Fatalf("request without an address: %d, want 400", status)
		}
	})

	t.Run("apple profile", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, "https://autoconfig.example.test/mail/config.mobileconfig?emailaddress=alice@example.test", nil)
		status, hdr, body := web.Do(t, client, req)
		if status != 200 || hdr.Get("Content-Type") != "application/x-apple-aspen-config" {
			t.Fatalf("%d %s\n%s", status, hdr.Get("Content-Type"), body)
		}
		var p struct {
			PayloadType    string
			PayloadVersion int
			PayloadUUID    string
			PayloadContent []map[string]any
		}
		format, err := plist.Unmarshal(body, &p)
		if err != nil || format != plist.XMLFormat {
			t.Fatalf("not an XML plist (%d): %v\n%s", format, err, body)
		}
		if p.PayloadType != "Configuration" || p.PayloadVersion != 1 || len(p.PayloadUUID) != 36 || len(p.PayloadContent) != 1 {
			t.Fatalf("profile: %+v", p)
		}
		m := p.PayloadContent[0]
		want := map[string]any{
			"PayloadType":                  "com.apple.mail.managed",
			"EmailAddress":                 "alice@example.test",
			"EmailAccountType":             "EmailTypeIMAP",
			"IncomingMailServerHostName":   "imap.example.test",
			"IncomingMailServerPortNumber": uint64(993),
			"OutgoingMailServerHostName":   "mail.example.test",
			"OutgoingMailServerPortNumber": uint64(subs),
			"OutgoingMailServerUseSSL":     true,
			"OutgoingMailServerUsername":   "alice@example.test",
		}
		for k, v := range want {
			if fmt.Sprint(m[k]) != fmt.Sprint(v) {
				t.Errorf("%s = %v, want %v", k, m[k], v)
			}
		}
	})
}

type tbServer struct {
	Type       string `xml:"type,attr"`
	Hostname   string `xml:"hostname"`
	Port       int    `xml:"port"`
	SocketType string `xml:"socketType"`
	Username   string `xml:"username"`
}
