package limitstore

import (
	"context"
	"hash/maphash"
	"sort"
	"strings"
	"sync"
	"time"
)

const shards = 32

// memory is the in-process store: sharded maps, swept by a janitor.
type memory struct {
	seed   maphash.Seed
	shards [shards]memShard
	stop   chan struct{}
	now    func() time.Time
}

type memShard struct {
	mu      sync.Mutex
	buckets map[string]int64            // theoretical arrival time, unix ns
	sets    map[string]map[string]int64 // member -> expiry, unix ns
	bans    map[string]Ban
}

func newMemory() *memory {
	m := &memory{seed: maphash.MakeSeed(), stop: make(chan struct{}), now: time.Now}
	for i := range m.shards {
		m.shards[i] = memShard{buckets: map[string]int64{}, sets: map[string]map[string]int64{}, bans: map[string]Ban{}}
	}
	go m.janitor(30 * time.Second)
	return m
}

func (m *memory) String() string { return "memory" }

// Destruct stops the janitor (the UsagePool calls it when no config uses
// the store any more).
func (m *memory) Destruct() error { close(m.stop); return nil }

func (m *memory) shard(key string) *memShard {
	return &m.shards[maphash.String(m.seed, key)%shards]
}

func (m *memory) janitor(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep drops full buckets, empty sets and ended bans.
func (m *memory) sweep() {
	now := m.now()
	ns := now.UnixNano()
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for k, tat := range s.buckets {
			if tat <= ns {
				delete(s.buckets, k)
			}
		}
		for k, set := range s.sets {
			for mem, exp := range set {
				if exp <= ns {
					delete(set, mem)
				}
			}
			if len(set) == 0 {
				delete(s.sets, k)
			}
		}
		for k, b := range s.bans {
			if !b.Until.After(now) {
				delete(s.bans, k)
			}
		}
		s.mu.Unlock()
	}
}

// Take implements the generic cell rate algorithm: the bucket is the
// "theoretical arrival time" tat; each unit pushes it window/limit later;
// a request is refused when it would push tat more than window ahead.
func (m *memory) Take(_ context.Context, key string, limit float64, window time.Duration, cost float64, peek bool) (bool, float64, error) {
	if limit <= 0 || window <= 0 {
		return false, 0, nil
	}
	now := m.now().UnixNano()
	interval := float64(window) / limit
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	tat, ok := s.buckets[key]
	if !ok || tat < now {
		tat = now
	}
	next := tat + int64(cost*interval)
	if next-now > int64(window) {
		return false, float64(int64(window)-(tat-now)) / interval, nil
	}
	if !peek {
		s.buckets[key] = next
	}
	return true, float64(int64(window)-(next-now)) / interval, nil
}

func (m *memory) Acquire(_ context.Context, key, member string, limit int, ttl time.Duration) (bool, error) {
	now := m.now().UnixNano()
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	set := s.sets[key]
	if set == nil {
		set = map[string]int64{}
		s.sets[key] = set
	}
	for mem, exp := range set {
		if exp <= now {
			delete(set, mem)
		}
	}
	if _, ok := set[member]; ok {
		return true, nil
	}
	if len(set) >= limit {
		return false, nil
	}
	set[member] = now + int64(ttl)
	return true, nil
}

func (m *memory) Release(_ context.Context, key, member string) error {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if set := s.sets[key]; set != nil {
		delete(set, member)
		if len(set) == 0 {
			delete(s.sets, key)
		}
	}
	return nil
}

func (m *memory) Delete(_ context.Context, keys ...string) error {
	for _, key := range keys {
		s := m.shard(key)
		s.mu.Lock()
		delete(s.buckets, key)
		delete(s.sets, key)
		s.mu.Unlock()
	}
	return nil
}

func (m *memory) SetBan(_ context.Context, key string, b Ban) error {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bans[key] = b
	return nil
}

func (m *memory) GetBan(_ context.Context, key string) (*Ban, error) {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.bans[key]
	if !ok {
		return nil, nil
	}
	if !b.Until.After(m.now()) {
		delete(s.bans, key)
		return nil, nil
	}
	return &b, nil
}

func (m *memory) DeleteBan(_ context.Context, key string) (bool, error) {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.bans[key]
	delete(s.bans, key)
	return ok && b.Until.After(m.now()), nil
}

func (m *memory) ListBans(_ context.Context, prefix string) ([]Ban, error) {
	now := m.now()
	var out []Ban
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for k, b := range s.bans {
			if strings.HasPrefix(k, prefix) && b.Until.After(now) {
				out = append(out, b)
			}
		}
		s.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Since.Before(out[j].Since) })
	return out, nil
}
