package rspamd

import (
	"fmt"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// BenchmarkMessages: messages per second through one SMTP connection
// (MAIL, RCPT, DATA, stored in the Maildir with fsync), without a
// content filter and with the real rspamd (no action for this message).
//
//	go test ./modules/rspamd -run '^$' -bench Messages -benchtime 300x
func BenchmarkMessages(b *testing.B) {
	for _, name := range []string{"without", "rspamd"} {
		b.Run(name, func(b *testing.B) {
			var handlers []any
			if name == "rspamd" {
				handlers = append(handlers, map[string]any{"handler": "rspamd", "url": needRspamd(b)})
			}
			d := testenv.StartDNS(b)
			env := testenv.New(b)
			addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(b))
			env.Load(env.Config(testenv.SpamMXApp(env, addr, d.Addr, handlers...), nil))
			c, _ := testenv.DialFrom(b, "127.0.0.1", addr)
			c.Expect("EHLO client.example.org", 250)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c.StartMessage("someone@example.org", "alice@example.test")
				c.Send(normal + ".\r\n")
				if r := c.Read(); r.Code != 250 {
					b.Fatalf("message %d: %s", i, r)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
