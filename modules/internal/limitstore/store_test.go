package limitstore

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/limitstore/redistest"
)

// stores runs f against the memory store and a real Redis.
func stores(t *testing.T, f func(t *testing.T, s Store)) {
	t.Run("memory", func(t *testing.T) {
		m := newMemory()
		defer m.Destruct()
		f(t, m)
	})
	t.Run("redis", func(t *testing.T) {
		addr := redistest.Start(t)
		r := newRedis(&Config{Type: "redis", Address: addr, KeyPrefix: "t:", Timeout: 1e9})
		defer r.Destruct()
		f(t, r)
	})
}

func TestTakeEdge(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		for i := 1; i <= 3; i++ {
			ok, rem, err := s.Take(ctx, "k", 3, time.Minute, 1, false)
			if err != nil || !ok {
				t.Fatalf("take %d: %v %v", i, ok, err)
			}
			if want := float64(3 - i); rem < want-0.01 || rem > want+0.01 {
				t.Errorf("take %d: remaining %v, want %v", i, rem, want)
			}
		}
		if ok, _, _ := s.Take(ctx, "k", 3, time.Minute, 1, true); ok {
			t.Fatal("peek at an empty bucket: ok")
		}
		if ok, _, _ := s.Take(ctx, "k", 3, time.Minute, 1, false); ok {
			t.Fatal("take 4: ok")
		}
		// Other keys are apart; peeking spends nothing; a cost over the
		// limit never fits.
		for i := 0; i < 5; i++ {
			if ok, _, _ := s.Take(ctx, "other", 1, time.Minute, 1, true); !ok {
				t.Fatal("peek refused")
			}
		}
		if ok, _, _ := s.Take(ctx, "big", 100, time.Minute, 101, false); ok {
			t.Fatal("cost over the limit fits")
		}
		if ok, _, _ := s.Take(ctx, "big", 100, time.Minute, 100, false); !ok {
			t.Fatal("cost equal to the limit refused")
		}
		// A full window later, the bucket is full again.
		for i := 0; i < 2; i++ {
			s.Take(ctx, "short", 2, 200*time.Millisecond, 1, false)
		}
		if ok, _, _ := s.Take(ctx, "short", 2, 200*time.Millisecond, 1, false); ok {
			t.Fatal("short bucket not empty")
		}
		time.Sleep(250 * time.Millisecond)
		for i := 0; i < 2; i++ {
			if ok, _, _ := s.Take(ctx, "short", 2, 200*time.Millisecond, 1, false); !ok {
				t.Fatalf("after a window, take %d refused", i+1)
			}
		}
		// Delete empties the count.
		s.Delete(ctx, "k")
		if ok, _, _ := s.Take(ctx, "k", 3, time.Minute, 1, false); !ok {
			t.Fatal("after Delete: refused")
		}
	})
}

func TestMemoryRefill(t *testing.T) {
	m := newMemory()
	defer m.Destruct()
	now := time.Unix(1000, 0)
	m.now = func() time.Time { return now }
	ctx := context.Background()
	for i := 0; i < 4; i++ {
		m.Take(ctx, "k", 4, time.Minute, 1, false)
	}
	if ok, _, _ := m.Take(ctx, "k", 4, time.Minute, 1, false); ok {
		t.Fatal("5th in a minute: ok")
	}
	now = now.Add(15*time.Second - time.Millisecond)
	if ok, _, _ := m.Take(ctx, "k", 4, time.Minute, 1, false); ok {
		t.Fatal("refilled too early")
	}
	now = now.Add(time.Millisecond)
	if ok, _, _ := m.Take(ctx, "k", 4, time.Minute, 1, false); !ok {
		t.Fatal("one unit per window/limit: refused")
	}
	now = now.Add(time.Hour)
	m.sweep()
	if n := len(m.shard("k").buckets); n != 0 {
		t.Fatalf("full bucket not swept (%d left)", n)
	}
}

func TestAcquire(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		for _, m := range []string{"a", "b", "a"} {
			if ok, err := s.Acquire(ctx, "set", m, 2, time.Minute); !ok || err != nil {
				t.Fatalf("acquire %s: %v %v", m, ok, err)
			}
		}
		if ok, _ := s.Acquire(ctx, "set", "c", 2, time.Minute); ok {
			t.Fatal("third member: ok")
		}
		s.Release(ctx, "set", "a")
		if ok, _ := s.Acquire(ctx, "set", "c", 2, time.Minute); !ok {
			t.Fatal("after release: refused")
		}
		// Members expire (an instance that died without releasing).
		s.Acquire(ctx, "ttl", "x", 1, 100*time.Millisecond)
		time.Sleep(150 * time.Millisecond)
		if ok, _ := s.Acquire(ctx, "ttl", "y", 1, time.Minute); !ok {
			t.Fatal("expired member still counted")
		}
	})
}

func TestBans(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		now := time.Now().Truncate(time.Millisecond)
		s.SetBan(ctx, "ban:z:b:192.0.2.1/32", Ban{Network: "192.0.2.1/32", Zone: "z", Reason: "r", Since: now, Until: now.Add(time.Hour)})
		s.SetBan(ctx, "ban:z:b:192.0.2.2/32", Ban{Network: "192.0.2.2/32", Zone: "z", Since: now, Until: now.Add(150 * time.Millisecond)})
		s.SetBan(ctx, "ban:y:b:192.0.2.3/32", Ban{Network: "192.0.2.3/32", Zone: "y", Since: now, Until: now.Add(time.Hour)})
		b, err := s.GetBan(ctx, "ban:z:b:192.0.2.1/32")
		if err != nil || b == nil || b.Reason != "r" || !b.Until.Equal(now.Add(time.Hour)) {
			t.Fatalf("GetBan: %+v %v", b, err)
		}
		if l, _ := s.ListBans(ctx, "ban:z:b:"); len(l) != 2 {
			t.Fatalf("ListBans: %+v", l)
		}
		time.Sleep(200 * time.Millisecond)
		if b, _ := s.GetBan(ctx, "ban:z:b:192.0.2.2/32"); b != nil {
			t.Fatal("ban did not end")
		}
		if l, _ := s.ListBans(ctx, "ban:z:b:"); len(l) != 1 {
			t.Fatalf("ListBans after expiry: %+v", l)
		}
		if ok, _ := s.DeleteBan(ctx, "ban:z:b:192.0.2.1/32"); !ok {
			t.Fatal("DeleteBan: false")
		}
		if ok, _ := s.DeleteBan(ctx, "ban:z:b:192.0.2.1/32"); ok {
			t.Fatal("DeleteBan twice: true")
		}
	})
}

func TestNetworkKey(t *testing.T) {
	for _, tc := range []struct {
		ip     string
		v4, v6 int
		want   string
	}{
		{"192.0.2.7", 32, 64, "192.0.2.7/32"},
		{"192.0.2.7", 24, 64, "192.0.2.0/24"},
		{"::ffff:192.0.2.7", 32, 64, "192.0.2.7/32"},
		{"2001:db8:1:2:3:4:5:6", 32, 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:3:4:5:6", 32, 48, "2001:db8:1::/48"},
	} {
		if got := NetworkKey(netip.MustParseAddr(tc.ip), tc.v4, tc.v6); got != tc.want {
			t.Errorf("%s /%d /%d: got %s, want %s", tc.ip, tc.v4, tc.v6, got, tc.want)
		}
	}
}

// BenchmarkTake is the cost of one counter decision (a ratelimit handler
// makes one per limit per command).
func BenchmarkTake(b *testing.B) {
	run := func(b *testing.B, s Store) {
		ctx := context.Background()
		keys := make([]string, 1000)
		for i := range keys {
			keys[i] = fmt.Sprintf("rl:default:messages:1000000/3600000000000:32/64:192.0.%d.%d/32", i/256, i%256)
		}
		b.ReportAllocs()
		b.ResetTimer()
		i := 0
		for b.Loop() {
			if _, _, err := s.Take(ctx, keys[i%len(keys)], 1e9, time.Hour, 1, false); err != nil {
				b.Fatal(err)
			}
			i++
		}
	}
	b.Run("memory", func(b *testing.B) {
		m := newMemory()
		defer m.Destruct()
		run(b, m)
	})
	b.Run("redis", func(b *testing.B) {
		r := newRedis(&Config{Type: "redis", Address: redistest.Start(b), KeyPrefix: "b:", Timeout: 1e9})
		defer r.Destruct()
		run(b, r)
	})
}
