package tlsrpt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// Pending is a built report not yet delivered to one of its domain's
// addresses, kept until it is (RFC 8460 reports are sent "at least
// once"; they may be dropped after a while).
type Pending struct {
	Domain string `json:"domain"`
	// RUA is the report address; "" while the domain's _smtp._tls record
	// is still to be looked up (the lookup failed).
	RUA       string    `json:"rua,omitempty"`
	Report    *Report   `json:"report"`
	Created   time.Time `json:"created"`
	Attempts  int       `json:"attempts"`
	NextTry   time.Time `json:"next_try"`
	LastError string    `json:"last_error,omitempty"`
}

// key is the item's name under the outbox prefix: one per report and
// address.
func (p *Pending) key() string {
	sum := sha256.Sum256([]byte(p.RUA))
	return safeName(p.Report.ReportID) + "!" + hex.EncodeToString(sum[:8]) + ".json"
}

// Outbox keeps pending reports in storage (one file each under Prefix),
// or in memory when Storage is nil.
type Outbox struct {
	Storage certmagic.Storage
	Prefix  string // e.g. "smtp/tlsrpt/<host>/pending"

	mu  sync.Mutex
	mem map[string][]byte
}

func (o *Outbox) path(p *Pending) string { return o.Prefix + "/" + p.key() }

// Put stores (or replaces) an item.
func (o *Outbox) Put(ctx context.Context, p *Pending) error {
	if p.Report == nil || p.Report.ReportID == "" {
		return errors.New("pending report without a report id")
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if o.Storage == nil {
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.mem == nil {
			o.mem = map[string][]byte{}
		}
		o.mem[o.path(p)] = b
		return nil
	}
	return o.Storage.Store(ctx, o.path(p), b)
}

// Delete removes an item.
func (o *Outbox) Delete(ctx context.Context, p *Pending) error {
	if o.Storage == nil {
		o.mu.Lock()
		delete(o.mem, o.path(p))
		o.mu.Unlock()
		return nil
	}
	err := o.Storage.Delete(ctx, o.path(p))
	if err != nil && !errors.Is(err, fs.ErrNotExist) && o.Storage.Exists(ctx, o.path(p)) {
		return err
	}
	return nil
}

// List returns the items, oldest first. Unreadable items are returned
// as errors (and left in place).
func (o *Outbox) List(ctx context.Context) ([]*Pending, error) {
	var blobs [][]byte
	var errs []error
	if o.Storage == nil {
		o.mu.Lock()
		for _, b := range o.mem {
			blobs = append(blobs, b)
		}
		o.mu.Unlock()
	} else {
		keys, err := o.Storage.List(ctx, o.Prefix, false)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		for _, k := range keys {
			if !strings.HasSuffix(k, ".json") {
				continue
			}
			b, err := o.Storage.Load(ctx, k)
			if errors.Is(err, fs.ErrNotExist) {
				continue // sent meanwhile
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %v", k, err))
				continue
			}
			blobs = append(blobs, b)
		}
	}
	out := make([]*Pending, 0, len(blobs))
	for _, b := range blobs {
		var p Pending
		if err := json.Unmarshal(b, &p); err != nil || p.Report == nil {
			errs = append(errs, fmt.Errorf("unreadable pending report: %v", err))
			continue
		}
		out = append(out, &p)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].key() < out[j].key()
	})
	return out, errors.Join(errs...)
}
