package queue

import (
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/modules/queue/tlsrpt"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// localKey is the task key of recipients delivered to local mailboxes
// (bounces to local senders); it cannot be a domain.
const localKey = "@local"

// entry is one queued message in memory.
type entry struct {
	rec     record
	bodyOff int64
	size    int64

	mu sync.Mutex // guards st and the state file
	st state

	// Guarded by engine.mu:
	tasks   map[string]*task
	deleted bool
}

// task is the delivery of one entry to one destination (a domain, or
// localKey): one transaction carrying all its pending recipients.
type task struct {
	e        *entry
	domain   string
	next     time.Time
	index    int // in the heap, -1 when not there
	running  bool
	ready    bool
	notifyAt time.Time // retry of a DSN that could not be queued
}

func rcptKey(r smtpapp.Recipient) string {
	if r.Mailbox != "" {
		return localKey
	}
	return domainOf(r.Address)
}

func domainOf(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	return strings.TrimSuffix(strings.ToLower(addr[at+1:]), ".")
}

// work reports whether the task has something to do and from when:
// pending recipients (at their next try) or failures whose DSN is not yet
// queued. Called with e.mu held.
func (ent *entry) work(t *task) (bool, time.Time) {
	var next time.Time
	found, notify := false, false
	for i, r := range ent.rec.Recipients {
		if rcptKey(r) != t.domain {
			continue
		}
		st := ent.st.Rcpts[i]
		switch {
		case st.Status == statusPending:
			if !found || st.NextTry.Before(next) {
				next = st.NextTry
			}
			found = true
		case st.Status == statusFailed && !st.Notified:
			notify = true
		}
	}
	if notify && (!found || t.notifyAt.Before(next)) {
		next, found = t.notifyAt, true
	}
	return found, next
}

// done reports whether every recipient is final and every failure
// notified. Called with e.mu held.
func (ent *entry) done() bool {
	for _, st := range ent.st.Rcpts {
		if st.Status == statusPending || st.Status == statusFailed && !st.Notified {
			return false
		}
	}
	return true
}

// engine runs one spool: it is shared by every config that uses the same
// path (caddy.UsagePool), so a reload neither restarts nor doubles it.
type engine struct {
	sp *spool

	mu        sync.Mutex
	owners    []*Queue // configs attached, oldest first; the last one's settings apply
	fallback  *settings
	entries   map[string]*entry
	reserved  map[string]bool
	waiting   taskHeap
	ready     map[string][]*task
	order     []string // destinations with ready tasks, served in turn
	running   int
	perDomain map[string]int
	closed    bool
	started   bool

	wake     chan struct{}
	stop     chan struct{}
	loopDone chan struct{}
	inflight sync.WaitGroup
	ctx      context.Context // of delivery attempts
	cancel   context.CancelFunc

	// conns are the idle outbound connections kept for reuse.
	conns *connCache

	// rpt counts TLS sessions for the TLS reports (kept across reloads).
	rpt        *tlsrpt.Counter
	reportDone chan struct{}
	// outbox keeps the built reports until they are delivered.
	outbox   *tlsrpt.Outbox
	reportMu sync.Mutex // one report run at a time (loop, admin API)
}

var errClosed = errors.New("the outbound queue is shutting down")

func openEngine(path string, s *settings) (*engine, error) {
	sp, err := openSpool(path)
	if err != nil {
		return nil, err
	}
	e := &engine{
		sp:        sp,
		fallback:  s,
		entries:   map[string]*entry{},
		reserved:  map[string]bool{},
		ready:     map[string][]*task{},
		perDomain: map[string]int{},
		wake:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		loopDone:  make(chan struct{}),
		conns:     &connCache{idle: map[string][]*cachedConn{}},

		reportDone: make(chan struct{}),
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.rpt = &tlsrpt.Counter{Storage: s.storage, Key: "smtp/tlsrpt/" + s.hostname + "/counts.json"}
	if rs := s.transport.reports; rs != nil {
		e.rpt.SetAlign(rs.align)
	}
	e.outbox = &tlsrpt.Outbox{Storage: s.storage, Prefix: "smtp/tlsrpt/" + s.hostname + "/pending"}
	if err := e.rpt.Load(e.ctx); err != nil {
		s.logger.Warn("reading the saved TLS report counts", zap.Error(err))
	}
	return e, nil
}

// rescanInterval is how often the spool folder is read again for entries
// another process (or an administrator) put there.
const rescanInterval = time.Minute

// start takes the spool lock (waiting while another process holds it),
// loads the spool, then schedules. Until then, messages can be queued but
// none is delivered. It runs when the smtp app starts (Queue.Start), never
// in Provision, so that `caddy validate` works next to a running server.
func (e *engine) start() {
	defer close(e.loopDone)
	wait := time.Second
	for logged := false; ; {
		err := e.sp.lockSpool(func(name string) bool {
			e.mu.Lock()
			defer e.mu.Unlock()
			return e.reserved[strings.TrimSuffix(name, ".state")]
		})
		if err == nil {
			break
		}
		if !logged {
			e.settings().logger.Error("cannot lock the spool: queueing, but not delivering from it until the lock is free",
				zap.String("path", e.sp.root), zap.Error(err))
			logged = true
		}
		select {
		case <-e.stop:
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
	// The spool is the truth: what this process queued before it had the
	// lock is read back with whatever progress another holder recorded.
	e.mu.Lock()
	for _, ent := range e.entries {
		delete(e.entries, ent.rec.ID)
		ent.deleted = true
		metricQueued.Dec()
	}
	e.waiting = e.waiting[:0]
	clear(e.ready)
	e.order = e.order[:0]
	e.mu.Unlock()
	n := e.rescan()
	e.settings().logger.Info("outbound queue started", zap.String("path", e.sp.root), zap.Int("messages", n))
	e.loop()
}

// rescan loads the entries on disk that are not in memory and returns how
// many it added.
func (e *engine) rescan() int {
	known := func(id string) bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.entries[id] != nil || e.reserved[id]
	}
	loaded, err := e.sp.load(e.settings().logger, known)
	if err != nil {
		e.settings().logger.Error("reading the spool", zap.String("path", e.sp.root), zap.Error(err))
		return 0
	}
	e.mu.Lock()
	n := 0
	now := time.Now()
	for _, l := range loaded {
		if e.entries[l.rec.ID] != nil || e.reserved[l.rec.ID] {
			continue
		}
		e.addLocked(&entry{rec: l.rec, st: l.st, bodyOff: l.bodyOff, size: l.size}, now)
		n++
	}
	e.mu.Unlock()
	if n > 0 {
		e.kick()
	}
	return n
}

// attach makes q's settings current. Waiting deliveries are brought
// within the new retry limits.
func (e *engine) attach(q *Queue) {
	e.mu.Lock()
	e.owners = append(e.owners, q)
	e.capWaitsLocked(q.s)
	e.mu.Unlock()
	if rs := q.s.transport.reports; rs != nil {
		e.rpt.SetAlign(rs.align)
	}
	e.kick()
}

// begin starts the engine the first time a config using it starts.
func (e *engine) begin() {
	e.mu.Lock()
	start := !e.started && !e.closed
	e.started = true
	e.mu.Unlock()
	if start {
		go e.start()
		go e.reportLoop()
	}
}

// detach drops q's settings; the previous config's apply again (a failed
// reload) or the next one's already do.
func (e *engine) detach(q *Queue) {
	e.mu.Lock()
	if i := indexOf(e.owners, q); i >= 0 {
		e.owners = append(e.owners[:i], e.owners[i+1:]...)
		if len(e.owners) == 0 {
			e.fallback = q.s
		}
	}
	e.mu.Unlock()
	e.kick()
}

// capWaitsLocked moves waiting tasks no later than the longest backoff
// (and the give-up age) of s, so that shortened retry settings apply to
// what is already queued.
func (e *engine) capWaitsLocked(s *settings) {
	if e.waiting.Len() == 0 {
		return
	}
	now := time.Now()
	latest := now.Add(s.longestWait())
	for _, t := range e.waiting {
		limit := latest
		if exp := t.e.rec.Queued.Add(s.giveUp); exp.Before(limit) {
			limit = exp
		}
		if t.next.After(limit) {
			t.next = limit
		}
	}
	heap.Init(&e.waiting)
}

func indexOf(qs []*Queue, q *Queue) int {
	for i, x := range qs {
		if x == q {
			return i
		}
	}
	return -1
}

func (e *engine) settings() *settings {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.settingsLocked()
}

func (e *engine) settingsLocked() *settings {
	if n := len(e.owners); n > 0 {
		return e.owners[n-1].s
	}
	return e.fallback
}

// Destruct stops the engine when no config uses it any more: no new
// attempts start, those in flight get a grace period to finish, then are
// cancelled. Everything not delivered stays in the spool.
func (e *engine) Destruct() error {
	e.mu.Lock()
	e.closed = true
	started := e.started
	logger := e.settingsLocked().logger
	e.mu.Unlock()
	close(e.stop)
	if started {
		<-e.loopDone
		<-e.reportDone
	}
	e.saveCounts()
	done := make(chan struct{})
	go func() { e.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		logger.Warn("cancelling deliveries still in progress at shutdown")
		e.cancel()
		<-done
	}
	e.cancel()
	e.conns.closeAll()
	e.sp.close()
	e.mu.Lock()
	if n := len(e.entries); n > 0 {
		logger.Info("outbound queue stopped; undelivered messages stay in the spool",
			zap.String("path", e.sp.root), zap.Int("messages", n))
	}
	metricQueued.Sub(float64(len(e.entries)))
	e.entries = map[string]*entry{}
	e.mu.Unlock()
	return nil
}

func (e *engine) kick() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

var idEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

func newID() string {
	var b [10]byte
	rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

func safeID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// enqueue signs (if the From domain has a DKIM key), stores and schedules a
// message. write produces the message; reader reads it again from the
// start (to find the header before writing).
func (e *engine) enqueue(s *settings, rec *record, write func(io.Writer) (int64, error), reader func() io.Reader) error {
	_, fields := readHeader(reader())
	var prefix []byte
	if keys := s.dkimKeysFor(fields, rec.From); len(keys) > 0 {
		sig, err := signDKIM(keys, fields, write)
		if err != nil {
			s.logger.Error("DKIM signing failed; queueing the message unsigned",
				zap.String("id", rec.ID), zap.String("domain", keys[0].Domain), zap.Error(err))
		} else {
			prefix, rec.DKIM = sig, keys[0].Domain
		}
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return errClosed
	}
	for !safeID(rec.ID) || e.entries[rec.ID] != nil || e.reserved[rec.ID] || e.sp.exists(rec.ID) {
		rec.ID = newID()
	}
	e.reserved[rec.ID] = true
	e.mu.Unlock()

	off, size, err := e.sp.write(rec, prefix, write, s.sync)

	e.mu.Lock()
	delete(e.reserved, rec.ID)
	if err != nil {
		e.mu.Unlock()
		return err
	}
	ent := &entry{rec: *rec, bodyOff: off, size: size, st: state{Rcpts: make([]rcptState, len(rec.Recipients))}}
	e.addLocked(ent, time.Now())
	e.mu.Unlock()
	e.kick()
	s.logger.Info("queued", zap.String("id", rec.ID), zap.String("from", rec.From),
		zap.Strings("to", addresses(rec.Recipients)), zap.Int64("size", size), zap.String("dkim", rec.DKIM), zap.Bool("dsn", rec.DSN))
	return nil
}

func addresses(rs []smtpapp.Recipient) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Address
	}
	return out
}

// dkimKeysFor picks the keys of the From field's domain (or of the envelope
// sender's, for a message without a From field). The From domain must be
// the envelope sender's, which smtpapp checked against the account: one
// user of a shared server must not get another hosted domain's signature.
// Mail from the null sender (our own reports) is signed for its From.
func (s *settings) dkimKeysFor(fields []headerField, from string) []*dkimKey {
	if len(s.dkim) == 0 {
		return nil
	}
	d := fromDomain(fields)
	if d != "" && from != "" && !strings.EqualFold(d, domainOf(from)) {
		return nil
	}
	if d == "" {
		hasFrom := false
		for _, f := range fields {
			if strings.EqualFold(f.name, "From") {
				hasFrom = true
			}
		}
		if hasFrom || from == "" {
			return nil
		}
		d = domainOf(from)
	}
	return s.dkim[d]
}

// addLocked indexes an entry and schedules its tasks.
func (e *engine) addLocked(ent *entry, now time.Time) {
	e.entries[ent.rec.ID] = ent
	metricQueued.Inc()
	ent.tasks = map[string]*task{}
	for _, r := range ent.rec.Recipients {
		k := rcptKey(r)
		if ent.tasks[k] == nil {
			ent.tasks[k] = &task{e: ent, domain: k, index: -1}
		}
	}
	ent.mu.Lock()
	for _, t := range ent.tasks {
		if ok, next := ent.work(t); ok {
			t.next = next
			heap.Push(&e.waiting, t)
		}
	}
	done := ent.done()
	ent.mu.Unlock()
	if done {
		// Loaded with nothing left to do (a crash right before removal).
		e.removeLocked(ent)
	}
}

func (e *engine) anyRunning(ent *entry) bool {
	for _, t := range ent.tasks {
		if t.running {
			return true
		}
	}
	return false
}

func (e *engine) removeLocked(ent *entry) {
	if e.entries[ent.rec.ID] != ent {
		return
	}
	delete(e.entries, ent.rec.ID)
	ent.deleted = true
	metricQueued.Dec()
	for _, t := range ent.tasks {
		if t.index >= 0 {
			heap.Remove(&e.waiting, t.index)
		}
	}
	if err := e.sp.remove(ent.rec.ID); err != nil {
		e.settingsLocked().logger.Error("removing queue files", zap.String("id", ent.rec.ID), zap.Error(err))
	}
}

// loop is the scheduler: it moves due tasks to the ready lists and starts
// them within the concurrency limits, one destination after another.
func (e *engine) loop() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	rescan := time.NewTicker(rescanInterval)
	defer rescan.Stop()
	for {
		wait := e.dispatch()
		timer.Reset(wait)
		select {
		case <-e.stop:
			return
		case <-e.wake:
		case <-timer.C:
		case <-rescan.C:
			e.rescan()
		}
	}
}

func (e *engine) dispatch() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return time.Hour
	}
	s := e.settingsLocked()
	now := time.Now()
	for e.waiting.Len() > 0 && !e.waiting[0].next.After(now) {
		t := heap.Pop(&e.waiting).(*task)
		if t.e.deleted {
			continue
		}
		if len(e.ready[t.domain]) == 0 {
			e.order = append(e.order, t.domain)
		}
		e.ready[t.domain] = append(e.ready[t.domain], t)
		t.ready = true
	}
	for e.running < s.maxConc && len(e.order) > 0 {
		progressed := false
		for i := 0; i < len(e.order) && e.running < s.maxConc; {
			d := e.order[i]
			if e.perDomain[d] >= s.maxPerDomain {
				i++
				continue
			}
			q := e.ready[d]
			t := q[0]
			q[0] = nil
			if len(q) == 1 {
				delete(e.ready, d)
				e.order = append(e.order[:i], e.order[i+1:]...)
			} else {
				e.ready[d] = q[1:]
				i++
			}
			progressed = true
			t.ready = false
			if t.e.deleted {
				continue
			}
			t.running = true
			e.running++
			e.perDomain[d]++
			e.inflight.Add(1)
			go e.run(t)
		}
		if !progressed {
			break
		}
	}
	if e.waiting.Len() == 0 {
		return time.Hour
	}
	return max(time.Until(e.waiting[0].next), time.Millisecond)
}

// finish puts a task back after an attempt: rescheduled if it has work
// left, and the entry removed once nothing is left.
func (e *engine) finish(t *task) {
	e.mu.Lock()
	t.running = false
	e.running--
	if e.perDomain[t.domain]--; e.perDomain[t.domain] <= 0 {
		delete(e.perDomain, t.domain)
	}
	ent := t.e
	ent.mu.Lock()
	ok, next := ent.work(t)
	done := ent.done()
	ent.mu.Unlock()
	switch {
	case ent.deleted || done:
		if !e.anyRunning(ent) {
			e.removeLocked(ent)
		}
	case ok && !e.closed:
		// Within the current settings' limits (they may have changed by
		// a reload during the attempt).
		s := e.settingsLocked()
		if limit := time.Now().Add(s.longestWait()); next.After(limit) {
			next = limit
		}
		if exp := ent.rec.Queued.Add(s.giveUp); next.After(exp) {
			next = exp
		}
		t.next = next
		heap.Push(&e.waiting, t)
	}
	e.mu.Unlock()
	e.kick()
}

// Flush makes every waiting delivery (or only id's) due now. It returns
// the number of entries flushed.
func (e *engine) Flush(id string) int {
	e.mu.Lock()
	n := 0
	now := time.Now()
	for _, ent := range e.entries {
		if id != "" && ent.rec.ID != id || ent.deleted {
			continue
		}
		n++
		for _, t := range ent.tasks {
			t.notifyAt = time.Time{}
			if t.index >= 0 {
				t.next = now
			}
		}
	}
	heap.Init(&e.waiting)
	e.mu.Unlock()
	e.kick()
	return n
}

// Delete removes an entry without notifying anyone. found is false for an
// unknown id; inFlight is true when a delivery is running, in which case
// the files go when it ends.
func (e *engine) Delete(id string) (found, inFlight bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ent := e.entries[id]
	if ent == nil || ent.deleted {
		return false, false
	}
	ent.deleted = true
	for _, t := range ent.tasks {
		if t.index >= 0 {
			heap.Remove(&e.waiting, t.index)
		}
		if t.running {
			inFlight = true
		}
	}
	if !inFlight {
		e.removeLocked(ent)
	}
	e.settingsLocked().logger.Info("deleted from queue", zap.String("id", id), zap.Bool("in_flight", inFlight))
	return true, inFlight
}

// EntryInfo describes a queued message for the admin API.
type EntryInfo struct {
	ID         string     `json:"id"`
	Spool      string     `json:"spool"`
	Sender     string     `json:"sender"`
	Recipients []RcptInfo `json:"recipients"`
	Queued     time.Time  `json:"queued"`
	Size       int64      `json:"size"`
	Attempts   int        `json:"attempts"`
	NextTry    *time.Time `json:"next_try,omitempty"`
	LastError  string     `json:"last_error,omitempty"`
	InFlight   bool       `json:"in_flight,omitempty"`
	DSN        bool       `json:"dsn,omitempty"`
	DKIM       string     `json:"dkim,omitempty"`
	// RequireTLS: the message must be relayed with REQUIRETLS (RFC 8689).
	RequireTLS bool `json:"require_tls,omitempty"`
	// UTF8: the message came with SMTPUTF8 (RFC 6531).
	UTF8 bool `json:"utf8,omitempty"`
}

// RcptInfo is one recipient of a queued message.
type RcptInfo struct {
	Address   string     `json:"address"`
	Status    string     `json:"status"`
	Attempts  int        `json:"attempts"`
	NextTry   *time.Time `json:"next_try,omitempty"`
	LastError string     `json:"last_error,omitempty"`
	// TLSPolicy is the transport security policy of the last attempt (none,
	// opportunistic, require, verify, mta-sts, mta-sts-testing, dane).
	TLSPolicy string `json:"tls_policy,omitempty"`
	// DeferReason is the TLS-RPT result type of a TLS policy failure that
	// deferred the recipient (e.g. certificate-host-mismatch).
	DeferReason string `json:"defer_reason,omitempty"`
}

// List describes every entry, oldest first.
func (e *engine) List() []EntryInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]EntryInfo, 0, len(e.entries))
	for _, ent := range e.entries {
		if ent.deleted {
			continue
		}
		out = append(out, e.infoLocked(ent))
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Queued.Equal(out[j].Queued) {
			return out[i].Queued.Before(out[j].Queued)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Info describes one entry.
func (e *engine) Info(id string) (EntryInfo, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ent := e.entries[id]
	if ent == nil || ent.deleted {
		return EntryInfo{}, false
	}
	return e.infoLocked(ent), true
}

func (e *engine) infoLocked(ent *entry) EntryInfo {
	info := EntryInfo{
		ID: ent.rec.ID, Spool: e.sp.root, Sender: ent.rec.From, Queued: ent.rec.Queued,
		Size: ent.size, DSN: ent.rec.DSN, DKIM: ent.rec.DKIM, RequireTLS: ent.rec.RequireTLS,
		UTF8: ent.rec.UTF8,
	}
	next := map[string]time.Time{}
	for _, t := range ent.tasks {
		if t.running {
			info.InFlight = true
		}
		if t.index >= 0 {
			next[t.domain] = t.next
		} else if t.ready || t.running {
			next[t.domain] = time.Now()
		}
	}
	ent.mu.Lock()
	defer ent.mu.Unlock()
	var last time.Time
	for i, r := range ent.rec.Recipients {
		st := ent.st.Rcpts[i]
		ri := RcptInfo{Address: r.Address, Status: st.Status, Attempts: st.Attempts, LastError: st.Reply, TLSPolicy: st.TLSPolicy}
		if st.Status == statusPending {
			ri.DeferReason = st.TLSFailure
		}
		if ri.Status == statusPending {
			ri.Status = "pending"
			if n, ok := next[rcptKey(r)]; ok {
				n := n
				ri.NextTry = &n
				if info.NextTry == nil || n.Before(*info.NextTry) {
					info.NextTry = &n
				}
			}
		}
		info.Attempts = max(info.Attempts, st.Attempts)
		if st.Reply != "" && st.Status != statusDelivered && !st.LastTry.Before(last) {
			last, info.LastError = st.LastTry, st.Reply
		}
		info.Recipients = append(info.Recipients, ri)
	}
	return info
}

// taskHeap orders waiting tasks by next try.
type taskHeap []*task

func (h taskHeap) Len() int           { return len(h) }
func (h taskHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h taskHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *taskHeap) Push(x any) {
	t := x.(*task)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *taskHeap) Pop() any {
	old := *h
	n := len(old)
	t := old[n-1]
	old[n-1] = nil
	t.index = -1
	*h = old[:n-1]
	return t
}
