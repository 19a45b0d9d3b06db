package queue_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// BenchmarkMTASTSLatency is the time from submission to arrival at the
// MX of one message at a time: to a domain without policy (the baseline),
// with a cached enforce policy (no DNS, HTTPS or storage on the way), and
// with a cold one (a new domain for every message, so each delivery looks
// up the TXT record and fetches the policy over HTTPS). DANE is off in
// every mode, so that only MTA-STS differs (with DANE on, each delivery
// also waits for a TLSA lookup).
//
//	go test -run '^$' -bench MTASTSLatency -benchtime 200x -count 5 ./modules/queue/
func BenchmarkMTASTSLatency(b *testing.B) {
	for _, mode := range []string{"no-policy", "cached", "cold"} {
		b.Run(mode, func(b *testing.B) {
			w := newTLSWorld(b)
			delete(w.queue, "dane")
			w.queue["dkim"] = map[string]any{"disable": true}
			domain := func(i int) string { return "policy.example" }
			w.mxAt("policy.example", "mx.policy.example", "127.0.0.4")
			if mode == "cached" {
				w.sts("policy.example", "1", "enforce", "mx.policy.example")
			}
			if mode == "cold" {
				// A policy host for cold0.example ... coldN.example, each
				// domain with its MX at the good host and its policy.
				names := make([]string, b.N+1)
				for i := range names {
					d := fmt.Sprintf("cold%d.example", i)
					names[i] = "mta-sts." + d
					w.dns.Add(b, d+". 300 IN MX 10 mx.policy.example.")
					w.sts(d, "1", "enforce", "mx.policy.example")
				}
				srv := testenv.StartHTTPS(b, "127.0.0.6:0", w.ca.Issue(names...), http.HandlerFunc(w.servePolicy))
				w.queue["mta_sts"].(map[string]any)["port"] = srv.Port
				domain = func(i int) string { return fmt.Sprintf("cold%d.example", i+1) }
			}
			w.load()
			send := func(i int) {
				to := fmt.Sprintf("r%d@%s", i, domain(i))
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
			send(-1) // warm: connections, the policy cached (cached mode)
			b.ResetTimer()
			for i := range b.N {
				send(i)
			}
		})
	}
}

// BenchmarkMTASTSLatencyPaired alternates, in one world, a message to a
// domain without policy and one to a domain with a cached enforce policy
// (same MX host), so that the load of a shared machine weighs on both
// alike; it reports the mean latency of each and their difference.
//
//	go test -run '^$' -bench MTASTSLatencyPaired -benchtime 200x -count 5 ./modules/queue/
func BenchmarkMTASTSLatencyPaired(b *testing.B) {
	w := newTLSWorld(b)
	delete(w.queue, "dane")
	w.queue["dkim"] = map[string]any{"disable": true}
	w.mxAt("policy.example", "mx.policy.example", "127.0.0.4")
	w.dns.Add(b, "plain.example. 300 IN MX 10 mx.policy.example.")
	w.sts("policy.example", "1", "enforce", "mx.policy.example")
	w.load()
	send := func(to string) time.Duration {
		start := time.Now()
		w.send("alice@example.test", []string{to}, message("bench", to))
		deadline := start.Add(10 * time.Second)
		for {
			if _, ok := received(w.good, to); ok {
				return time.Since(start)
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s not delivered", to)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	send("warm@plain.example")
	send("warm@policy.example")
	var plain, cached time.Duration
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 { // alternate which goes first
			plain += send(fmt.Sprintf("r%d@plain.example", i))
			cached += send(fmt.Sprintf("r%d@policy.example", i))
		} else {
			cached += send(fmt.Sprintf("r%d@policy.example", i))
			plain += send(fmt.Sprintf("r%d@plain.example", i))
		}
	}
	b.ReportMetric(float64(plain.Microseconds())/float64(b.N), "us-no-policy/op")
	b.ReportMetric(float64(cached.Microseconds())/float64(b.N), "us-cached/op")
	b.ReportMetric(float64((cached-plain).Microseconds())/float64(b.N), "us-added/op")
}
