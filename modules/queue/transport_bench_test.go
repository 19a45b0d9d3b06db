package queue_test

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkMTASTSLatency is the time from submission to arrival at the
// MX of one message at a time: to a domain without policy (the baseline),
// with a cached enforce policy (no DNS or HTTPS on the way), and with a
// cold one (the TXT id changes before every message, so each delivery
// looks up the TXT record and fetches the policy over HTTPS).
//
//	go test -run '^$' -bench MTASTSLatency -benchtime 200x ./modules/queue/
func BenchmarkMTASTSLatency(b *testing.B) {
	for _, mode := range []string{"no-policy", "cached", "cold"} {
		b.Run(mode, func(b *testing.B) {
			w := newTLSWorld(b)
			w.queue["dkim"] = map[string]any{"disable": true}
			w.mxAt("policy.example", "mx.policy.example", "127.0.0.4")
			if mode != "no-policy" {
				w.sts("policy.example", "0", "enforce", "mx.policy.example")
			}
			if mode == "cold" {
				w.queue["mta_sts"].(map[string]any)["check_interval"] = "1ns"
			}
			w.load()
			send := func(i int) {
				to := fmt.Sprintf("r%d@policy.example", i)
				w.send("alice@example.test", []string{to}, message("bench", to))
				deadline := time.Now().Add(10 * time.Second)
				for {
					if _, ok := received(w.good, to); ok {
						break
					}
					if time.Now().After(deadline) {
						b.Fatalf("%s not delivered", to)
					}
					time.Sleep(200 * time.Microsecond)
				}
			}
			send(-1) // warm: the policy is cached after this one
			b.ResetTimer()
			for i := range b.N {
				if mode == "cold" {
					b.StopTimer()
					w.sts("policy.example", fmt.Sprint(i+1), "enforce", "mx.policy.example")
					b.StartTimer()
				}
				send(i)
			}
		})
	}
}
