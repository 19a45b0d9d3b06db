package mtasts

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// A cached policy is served without a TXT lookup, fetch or storage read;
// after TXTCheck the TXT id is checked in the background, a new id gets
// the new policy, a fetch that fails keeps the cached one and its error
// is returned once. A domain without a record costs no storage read.
func TestCacheBackgroundCheck(t *testing.T) {
	var mu sync.Mutex
	txt, policy, fetchErr := "v=STSv1; id=1;", "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmax_age: 86400\n", false
	var lookups, fetches, loads atomic.Int32
	now := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
	st := &countingStorage{Storage: &certmagic.FileStorage{Path: t.TempDir()}, loads: &loads}
	c := &Cache{
		Storage: st,
		LookupTXT: func(_ context.Context, name string) ([]string, error) {
			lookups.Add(1)
			mu.Lock()
			defer mu.Unlock()
			if name != "_mta-sts.example.com" {
				return nil, nil
			}
			return []string{txt}, nil
		},
		Client: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
			fetches.Add(1)
			mu.Lock()
			defer mu.Unlock()
			if fetchErr {
				return nil, errors.New("connection refused")
			}
			return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/plain"}},
				Body: io.NopCloser(strings.NewReader(policy)), Request: r}, nil
		})},
		TXTCheck: time.Minute,
		Now:      func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
	}
	ctx := context.Background()
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	waitChecked := func() {
		t.Helper()
		for i := 0; i < 500; i++ {
			c.mu.Lock()
			busy := c.mem["example.com"].checking
			c.mu.Unlock()
			if !busy {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		t.Fatal("background check did not end")
	}

	if r := c.Get(ctx, "example.com"); r.Policy == nil || r.Cached || r.ID != "1" {
		t.Fatalf("cold: %+v", r)
	}
	l, f, s := lookups.Load(), fetches.Load(), loads.Load()
	for range 100 {
		if r := c.Get(ctx, "example.com"); r.Policy == nil || !r.Cached || r.Err != nil {
			t.Fatalf("cached: %+v", r)
		}
	}
	if lookups.Load() != l || fetches.Load() != f || loads.Load() != s {
		t.Fatalf("cached Get: %d lookups, %d fetches, %d storage loads", lookups.Load()-l, fetches.Load()-f, loads.Load()-s)
	}

	// New id and policy: the cached one is served while the check runs.
	mu.Lock()
	txt, policy = "v=STSv1; id=2;", "version: STSv1\nmode: testing\nmx: mx2.example.com\nmax_age: 86400\n"
	mu.Unlock()
	advance(2 * time.Minute)
	if r := c.Get(ctx, "example.com"); r.ID != "1" || !r.Cached {
		t.Fatalf("during the check: %+v", r)
	}
	waitChecked()
	if r := c.Get(ctx, "example.com"); r.ID != "2" || r.Policy.Mode != ModeTesting {
		t.Fatalf("after the check: %+v", r)
	}

	// Another new id whose fetch fails: the cached policy stays, the
	// error comes once.
	mu.Lock()
	txt, fetchErr = "v=STSv1; id=3;", true
	mu.Unlock()
	advance(2 * time.Minute)
	if r := c.Get(ctx, "example.com"); r.ID != "2" || r.Err != nil {
		t.Fatalf("before the failed fetch: %+v", r)
	}
	waitChecked()
	r := c.Get(ctx, "example.com")
	if r.ID != "2" || r.Err == nil || r.Failure != "sts-policy-fetch-error" {
		t.Fatalf("failed fetch: %+v", r)
	}
	if r := c.Get(ctx, "example.com"); r.ID != "2" || r.Err != nil {
		t.Fatalf("after the failed fetch: %+v", r)
	}

	// No record: one lookup and one storage read, then neither.
	c.Get(ctx, "none.example")
	l, s = lookups.Load(), loads.Load()
	for range 100 {
		if r := c.Get(ctx, "none.example"); r.Policy != nil {
			t.Fatalf("none.example: %+v", r)
		}
	}
	if lookups.Load() != l || loads.Load() != s {
		t.Errorf("domain without policy: %d lookups, %d storage loads", lookups.Load()-l, loads.Load()-s)
	}
}

type countingStorage struct {
	certmagic.Storage
	loads *atomic.Int32
}

func (s *countingStorage) Load(ctx context.Context, key string) ([]byte, error) {
	s.loads.Add(1)
	return s.Storage.Load(ctx, key)
}
