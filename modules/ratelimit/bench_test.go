package ratelimit_test

import (
	"os"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/abusetest"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/limitstore/redistest"
)

// BenchmarkMessage is one whole SMTP transaction (MAIL, RCPT, DATA of 100
// bytes, delivered to a Maildir) over one connection, without the
// ratelimit handler and with it (messages, recipients and bytes limits,
// which are never reached) on each store. The difference is the cost the
// handler adds per message. The Maildir is on /dev/shm where available,
// so that fsync does not drown the difference.
//
//	go test ./modules/ratelimit -run '^$' -bench Message -benchtime 2000x -count 5
func BenchmarkMessage(b *testing.B) {
	limits := map[string]any{"messages": rate(1<<30, "1h"), "recipients": rate(1<<30, "1h"), "bytes": rate(1<<40, "1h")}
	cases := []struct {
		name    string
		handler func(b *testing.B) []any
	}{
		{"none", func(b *testing.B) []any { return nil }},
		{"memory", func(b *testing.B) []any { return []any{rl(limits)} }},
		{"redis", func(b *testing.B) []any {
			h := rl(limits)
			h["store"] = map[string]any{"type": "redis", "address": redistest.Start(b)}
			return []any{h}
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			env := testenv.New(b)
			if _, err := os.Stat("/dev/shm"); err == nil {
				dir, err := os.MkdirTemp("/dev/shm", "ratelimit-bench")
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { os.RemoveAll(dir) })
				env.Dir = dir
			}
			addr := abusetest.Addr(b)
			env.Load(env.Config(abusetest.App(env, addr, tc.handler(b), func(srv map[string]any) {
				srv["limits"] = map[string]any{"max_messages": 1 << 30}
			}), nil))
			c, _ := abusetest.Greet(b, "127.0.0.1", addr)
			c.Expect("EHLO client.example.org", 250)
			to := []string{"alice@example.test"}
			b.ResetTimer()
			for b.Loop() {
				if r := abusetest.Send(c, "s@example.org", to, body100); r.Code != 250 {
					b.Fatalf("message: %s", r)
				}
			}
		})
	}
}
