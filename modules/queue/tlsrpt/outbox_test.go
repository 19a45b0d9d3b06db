package tlsrpt

import (
	"context"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

func TestOutbox(t *testing.T) {
	ctx := context.Background()
	for name, o := range map[string]*Outbox{
		"memory": {},
		"file":   {Storage: &certmagic.FileStorage{Path: t.TempDir()}, Prefix: "smtp/tlsrpt/h/pending"},
	} {
		if l, err := o.List(ctx); err != nil || len(l) != 0 {
			t.Fatalf("%s: empty outbox: %v %v", name, l, err)
		}
		now := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
		r := &Report{ReportID: "id1@host.example.com"}
		a := &Pending{Domain: "d.example", RUA: "https://r.example/x", Report: r, Created: now}
		b := &Pending{Domain: "d.example", RUA: "mailto:x@r.example", Report: r, Created: now}
		c := &Pending{Domain: "e.example", Report: &Report{ReportID: "id0@host"}, Created: now.Add(-time.Hour)}
		for _, p := range []*Pending{a, b, c} {
			if err := o.Put(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		a.Attempts = 2
		o.Put(ctx, a) // replaces
		l, err := o.List(ctx)
		if err != nil || len(l) != 3 || l[0].Domain != "e.example" {
			t.Fatalf("%s: list: %+v %v", name, l, err)
		}
		for _, p := range l {
			if p.RUA == a.RUA && p.Attempts != 2 {
				t.Errorf("%s: not replaced: %+v", name, p)
			}
		}
		if err := o.Delete(ctx, a); err != nil {
			t.Fatal(err)
		}
		if err := o.Delete(ctx, a); err != nil {
			t.Fatalf("%s: deleting twice: %v", name, err)
		}
		if l, _ := o.List(ctx); len(l) != 2 {
			t.Fatalf("%s: after delete: %d", name, len(l))
		}
	}
}
