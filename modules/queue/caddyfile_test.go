package queue_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	_ "github.com/caddy-smtp/caddy-smtp/caddyfile"
	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

func adaptCaddyfile(t *testing.T, src []byte, strict bool) map[string]any {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	for _, w := range warnings {
		if strict {
			t.Errorf("warning: %s", w)
		}
	}
	var cfg struct {
		Apps struct {
			SMTP struct {
				Outbound map[string]any `json:"outbound"`
			} `json:"smtp"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.Apps.SMTP.Outbound
}

func TestCaddyfile(t *testing.T) {
	got := adaptCaddyfile(t, []byte(`{
	smtp {
		local_domains example.test
		outbound queue /var/spool/caddy-smtp {
			hostname mail.example.test
			max_concurrency 50
			max_per_domain 10
			max_recipients 200
			remote_port 2525
			retry {
				initial 1m
				max 2h
				multiplier 3
				jitter 0
				give_up 3d
				warn_after 4h
			}
			tls verify {
				ca_file /etc/ssl/roots.pem
			}
			smarthost relay.example.net:465 {
				username user
				password {env.PW}
				tls implicit
				ca_file /etc/ssl/relay.pem
			}
			dkim {
				selector s1
				ed25519_selector s1ed
				algorithms ed25519
				key_type rsa4096
				domains example.test
			}
			timeouts {
				connect 10s
				command 1m
				data 5m
			}
			connection_cache {
				max_messages 50
				idle_timeout 5s
				max_idle 8
			}
		}
		server mx {
			listen 127.0.0.1:2525
		}
	}
}`), false)
	want := `{"connection_cache":{"idle_timeout":5000000000,"max_idle":8,"max_messages":50},"dkim":{"algorithms":["ed25519"],"domains":["example.test"],"ed25519_selector":"s1ed","key_type":"rsa4096","selector":"s1"},"hostname":"mail.example.test",` +
		`"max_concurrency":50,"max_per_domain":10,"max_recipients":200,"path":"/var/spool/caddy-smtp","remote_port":2525,` +
		`"retry":{"give_up":259200000000000,"initial":60000000000,"jitter":-1,"max":7200000000000,"multiplier":3,"warn_after":14400000000000},` +
		`"smarthost":{"address":"relay.example.net:465","ca_file":"/etc/ssl/relay.pem","password":"{env.PW}","tls":"implicit","username":"user"},` +
		`"target":"queue","timeouts":{"command":60000000000,"connect":10000000000,"data":300000000000},` +
		`"tls":{"ca_file":"/etc/ssl/roots.pem","verify":true}}`
	b, _ := json.Marshal(got)
	if string(b) != want {
		t.Errorf("adapted outbound:\n got %s\nwant %s", b, want)
	}

	for _, tc := range []struct{ bad, want string }{
		{"outbound queue { retry { sometimes 1m } }", "unrecognized retry option"},
		{"outbound queue { tls maybe }", "not off, opportunistic"},
		{"outbound queue { dkim on }", "the only argument is off"},
		{"outbound queue { connection_cache on }", "the only argument is off"},
		{"outbound queue { connection_cache { lifetime 1m } }", "unrecognized connection_cache option"},
		{"outbound queue { max_concurrency many }", "not a positive number"},
		{"outbound queue { retry { initial soon } }", "initial"},
		{"outbound queue { frobnicate }", "unrecognized queue option"},
		{"outbound queue a b", "wrong argument count"},
	} {
		src := "{\n\tsmtp {\n\t\t" + strings.ReplaceAll(tc.bad, "{ ", "{\n") + "\n\t\tserver mx {\n\t\t\tlisten :2525\n\t\t}\n\t}\n}"
		src = strings.ReplaceAll(src, " }", "\n}")
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: want an error with %q, got %v", tc.bad, tc.want, err)
		}
	}
}

// The example Caddyfile adapts, and loads with its paths moved to a
// temporary folder.
func TestExampleCaddyfile(t *testing.T) {
	src, err := os.ReadFile("../../examples/queue.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	got := adaptCaddyfile(t, src, true)
	if got["target"] != "queue" || got["path"] != "./data/queue" || got["hostname"] != "mail.example.test" {
		t.Errorf("example outbound: %v", got)
	}
	// The golden JSON (caddyfile/adapt_test.go compares every example with
	// its .json) is up to date, and validates.
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "../../examples/queue.Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	var pretty bytes.Buffer
	json.Indent(&pretty, adapted, "", "\t")
	pretty.WriteByte('\n')
	golden, err := os.ReadFile("../../examples/queue.json")
	if err != nil || !bytes.Equal(golden, pretty.Bytes()) {
		t.Errorf("examples/queue.json is not the adapted example (%v); it should be:\n%s", err, pretty.Bytes())
	}
	var gcfg caddy.Config
	if err := json.Unmarshal(golden, &gcfg); err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	t.Chdir(t.TempDir())
	if err := caddy.Validate(&gcfg); err != nil {
		t.Errorf("examples/queue.json does not validate: %v", err)
	}
	t.Chdir(wd)
	env := testenv.New(t)
	dir := env.Path("example")
	port := testenv.FreePort(t)
	s := strings.ReplaceAll(string(src), "./data", dir)
	s = strings.ReplaceAll(s, "localhost:2019", env.Admin)
	s = strings.ReplaceAll(s, "127.0.0.1:2587", fmt.Sprintf("127.0.0.1:%d", port))
	s = strings.Replace(s, "key_type rsa2048", "key_type ed25519", 1)
	s = strings.Replace(s, "tls internal", "tls off", 1) // no certificate work left running at the end
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(s), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	env.Load(cfg)
	if _, err := os.Stat(filepath.Join(dir, "queue", "queue")); err != nil {
		t.Errorf("the example's spool was not created: %v", err)
	}
}

// The transport security options adapt to their JSON, and their errors
// name the option.
func TestCaddyfileTransportSecurity(t *testing.T) {
	got := adaptCaddyfile(t, []byte(`{
	smtp {
		local_domains example.test
		outbound queue {
			mta_sts {
				port 8443
				ca_file /etc/ssl/test-ca.pem
				fetch_timeout 10s
				check_interval 5m
			}
			dane {
				resolver 127.0.0.1:53
				timeout 2s
			}
			tls_reports {
				interval 12h
				organization_name "Example Org"
				contact_info tls@example.test
				from reports@example.test
				ca_file /etc/ssl/test-ca.pem
				give_up 48h
			}
			destination partner.example *.partner.example {
				tls verify
				mta_sts off
				dane off
			}
			destination legacy.example {
				tls opportunistic
			}
		}
		server mx {
			listen 127.0.0.1:2525
		}
	}
}`), false)
	b, _ := json.Marshal(map[string]any{"mta_sts": got["mta_sts"], "dane": got["dane"], "tls_reports": got["tls_reports"], "destinations": got["destinations"]})
	want := `{"dane":{"resolver":"127.0.0.1:53","timeout":2000000000},` +
		`"destinations":[{"disable_dane":true,"disable_mta_sts":true,"domains":["partner.example","*.partner.example"],"tls":"verify"},{"domains":["legacy.example"],"tls":"opportunistic"}],` +
		`"mta_sts":{"ca_file":"/etc/ssl/test-ca.pem","check_interval":300000000000,"fetch_timeout":10000000000,"port":8443},` +
		`"tls_reports":{"ca_file":"/etc/ssl/test-ca.pem","contact_info":"tls@example.test","from":"reports@example.test","give_up":172800000000000,"interval":43200000000000,"organization_name":"Example Org"}}`
	if string(b) != want {
		t.Errorf("adapted:\n got %s\nwant %s", b, want)
	}
	off := adaptCaddyfile(t, []byte("{\n\tsmtp {\n\t\toutbound queue {\n\t\t\tmta_sts off\n\t\t\ttls_reports off\n\t\t}\n\t\tserver mx {\n\t\t\tlisten :2525\n\t\t}\n\t}\n}"), false)
	if b, _ := json.Marshal(off); !strings.Contains(string(b), `"mta_sts":{"disable":true}`) || !strings.Contains(string(b), `"tls_reports":{"disable":true}`) {
		t.Errorf("off: %s", b)
	}
	for _, tc := range []struct{ bad, want string }{
		{"outbound queue { mta_sts on }", "the only argument is off"},
		{"outbound queue { mta_sts { max 1 } }", "unrecognized mta_sts option"},
		{"outbound queue { dane { resolvers x } }", "unrecognized dane option"},
		{"outbound queue { tls_reports { every 1h } }", "unrecognized tls_reports option"},
		{"outbound queue { destination }", "wrong argument count"},
		{"outbound queue { destination a.example { dane on } }", "the only value is off"},
	} {
		src := "{\n\tsmtp {\n\t\t" + strings.ReplaceAll(tc.bad, "{ ", "{\n") + "\n\t\tserver mx {\n\t\t\tlisten :2525\n\t\t}\n\t}\n}"
		src = strings.ReplaceAll(src, " }", "\n}")
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: want an error with %q, got %v", tc.bad, tc.want, err)
		}
	}
}
