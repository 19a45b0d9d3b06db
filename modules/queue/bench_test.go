package queue_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// BenchmarkSubmitToMX measures messages per second from SMTP submission
// (fsync'd into the queue before the 250) to their arrival at the test MX
// on loopback: 4 clients submit in parallel, one recipient per message.
// The cases: DKIM with both signatures (the default), RSA only, Ed25519
// only, none; and the default without connection reuse. "conns" is the
// number of connections the MX saw.
//
//	go test -run '^$' -bench SubmitToMX -benchtime 2000x ./modules/queue/
func BenchmarkSubmitToMX(b *testing.B) {
	for _, bc := range []struct {
		name  string
		dkim  map[string]any
		cache map[string]any
	}{
		{"dkim=rsa2048+ed25519", map[string]any{}, nil},
		{"dkim=rsa2048", map[string]any{"algorithms": []string{"rsa"}}, nil},
		{"dkim=ed25519", map[string]any{"algorithms": []string{"ed25519"}}, nil},
		{"dkim=off", map[string]any{"disable": true}, nil},
		{"dkim=rsa2048+ed25519/reuse=off", map[string]any{}, map[string]any{"disable": true}},
		{"dkim=off/reuse=off", map[string]any{"disable": true}, map[string]any{"disable": true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := newHarness(b, "127.0.0.2")
			h.queue["dkim"] = bc.dkim
			if bc.cache != nil {
				h.queue["connection_cache"] = bc.cache
			}
			h.load()
			mx := h.mx["127.0.0.2"]
			body := message("benchmark", "bob@example.org") + strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n", 40)
			const clients = 4
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var cl *testenv.Client
					for i := c; i < b.N; i += clients {
						if cl == nil || i/clients%50 == 0 {
							if cl != nil {
								cl.Cmd("QUIT")
								cl.Conn.Close()
							}
							cl, _ = testenv.Dial(b, h.smtpAddr)
							cl.Expect("EHLO bench.example.test", 250)
						}
						cl.Expect("MAIL FROM:<alice@example.test>", 250)
						cl.Expect(fmt.Sprintf("RCPT TO:<r%d@example.org>", i), 250)
						cl.Expect("DATA", 354)
						cl.Send(body + ".\r\n")
						if r := cl.Read(); r.Code != 250 {
							b.Errorf("end of data: %s", r)
							return
						}
					}
				}()
			}
			wg.Wait()
			submitted := time.Since(start)
			if !mx.WaitMessages(b.N, 5*time.Minute) {
				b.Fatalf("only %d of %d delivered", len(mx.Messages()), b.N)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(float64(b.N)/submitted.Seconds(), "submitted/s")
			b.ReportMetric(float64(mx.Sessions.Load()), "conns")
			b.ReportMetric(0, "ns/op")
		})
	}
}
