package mtasts

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// BenchmarkCacheGet is the cost of finding the policy of a domain on the
// way of a delivery: a cached policy, and a domain known to publish none.
// The TXT lookup answers at once here (a real one is a DNS round trip).
//
//	go test -run '^$' -bench CacheGet ./modules/queue/mtasts/
func BenchmarkCacheGet(b *testing.B) {
	c := &Cache{
		Storage: &certmagic.FileStorage{Path: b.TempDir()},
		LookupTXT: func(_ context.Context, name string) ([]string, error) {
			if name == "_mta-sts.example.com" {
				return []string{"v=STSv1; id=1;"}, nil
			}
			return nil, nil
		},
		Client: &http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/plain"}},
				Body: io.NopCloser(strings.NewReader("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n")), Request: r}, nil
		})},
		TXTCheck: 10 * time.Minute,
	}
	ctx := context.Background()
	for _, d := range []struct{ name, domain string }{{"cached", "example.com"}, {"no-policy", "none.example"}} {
		b.Run(d.name, func(b *testing.B) {
			c.Get(ctx, d.domain)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				c.Get(ctx, d.domain)
			}
		})
	}
}

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
