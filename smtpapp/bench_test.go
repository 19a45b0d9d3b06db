package smtpapp_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// BenchmarkInboundTransaction measures one whole inbound transaction over
// loopback: connect, EHLO, MAIL, RCPT, DATA with a 4 KiB message stored
// (fsync'd) in a Maildir, QUIT. Run with -cpu and -benchtime as needed:
//
//	go test ./smtpapp -run '^$' -bench InboundTransaction -benchtime 3000x
func BenchmarkInboundTransaction(b *testing.B) {
	env := testenv.New(b)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(b))
	env.Load(env.Config(mxApp(env, addr), nil))
	body := "Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 4096/80) + ".\r\n"
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.SetParallelism(10) // 10 x GOMAXPROCS concurrent clients
	var mu sync.Mutex
	var latencies []time.Duration
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		defer func() { mu.Lock(); latencies = append(latencies, mine...); mu.Unlock() }()
		for pb.Next() {
			start := time.Now()
			c, greet := testenv.Dial(b, addr)
			if greet.Code != 220 {
				b.Error(greet)
				return
			}
			c.Send("EHLO bench.example.org\r\nMAIL FROM:<bench@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
			for i := 0; i < 4; i++ {
				c.Read()
			}
			c.Send(body)
			if r := c.Read(); r.Code != 250 {
				b.Error(r)
				return
			}
			mine = append(mine, time.Since(start)) // connect to 250 after DATA
			c.Send("QUIT\r\n")
			c.Read()
			c.Conn.Close()
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	slices.Sort(latencies)
	if n := len(latencies); n > 0 {
		b.ReportMetric(float64(latencies[n/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(latencies[n*99/100].Microseconds())/1000, "p99-ms")
	}
}
