package rbl_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/testenv"
)

// BenchmarkSession measures, end to end, a client's connect, greeting,
// EHLO and MAIL FROM reply (where the RBL answers are collected), then
// QUIT: without handlers ("baseline"), and with the rbl handler and 5
// zones, cold (a new client address each time, so 5 DNS queries) and
// cached (the same address). The rtt5ms variants make the DNS server wait
// 5ms per answer. The difference to the baseline is what the check adds:
// the queries start at connect and overlap with the greeting and EHLO.
func BenchmarkSession(b *testing.B) {
	d := testenv.StartDNS(b)
	var zones []any
	var names []string
	for i := range 5 {
		name := fmt.Sprintf("z%d.bench.test", i)
		names = append(names, name)
		d.Add(b, "2.0.0.127."+name+". 300 IN A 127.0.0.2")
		zones = append(zones, map[string]any{"name": name, "weight": 1})
	}
	var n uint32
	nextIP := func() string {
		n++
		return netip.AddrFrom4([4]byte{127, 1 + byte(n>>16), byte(n >> 8), byte(n)}).String()
	}
	delay := func(ip string, rtt time.Duration) {
		if rtt == 0 {
			return
		}
		p := strings.Split(ip, ".")
		for _, z := range names {
			d.Delay(p[3]+"."+p[2]+"."+p[1]+"."+p[0]+"."+z, rtt)
		}
	}
	session := func(b *testing.B, addr, ip string) {
		c, greet := testenv.DialFrom(b, ip, addr)
		if greet.Code != 220 {
			b.Fatal(greet)
		}
		c.Expect("EHLO client.example.org", 250)
		c.Expect("MAIL FROM:<sender@example.org>", 250)
		c.Expect("QUIT", 221)
		c.Conn.Close()
	}
	load := func(b *testing.B, handlers ...any) string {
		env := testenv.New(b)
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(b))
		env.Load(env.Config(testenv.SpamMXApp(env, addr, d.Addr, handlers...), nil))
		return addr
	}

	b.Run("baseline", func(b *testing.B) {
		addr := load(b)
		for b.Loop() {
			session(b, addr, nextIP())
		}
	})
	for _, rtt := range []time.Duration{0, 5 * time.Millisecond} {
		suffix := ""
		if rtt > 0 {
			suffix = "-rtt5ms"
		}
		b.Run("rbl5-cold"+suffix, func(b *testing.B) {
			addr := load(b, map[string]any{"handler": "rbl", "zones": zones})
			for b.Loop() {
				b.StopTimer()
				ip := nextIP()
				delay(ip, rtt)
				b.StartTimer()
				session(b, addr, ip)
			}
		})
		b.Run("rbl5-cached"+suffix, func(b *testing.B) {
			addr := load(b, map[string]any{"handler": "rbl", "zones": zones})
			ip := nextIP()
			delay(ip, rtt)
			session(b, addr, ip)
			for b.Loop() {
				session(b, addr, ip)
			}
		})
	}
}
