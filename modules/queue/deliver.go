package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// Result kinds of one recipient's attempt.
const (
	resDelivered = iota
	resTemp
	resPerm
)

// result is what happened to one recipient in an attempt.
type result struct {
	kind     int
	code     int
	enhanced string
	text     string // the reply text or the error
	mta      string // the host that answered, if any
	tls      string // none, unverified, verified
	// policy is the transport security policy of the MX host (mta-sts,
	// dane, opportunistic...), tlsFailure the TLS-RPT type of its
	// failure, tlsOutcome the metric label of a delivery.
	policy, tlsFailure, tlsOutcome string
	// again asks for a new attempt right away (a "too many recipients"
	// reply after others were accepted).
	again bool
}

func fromReply(r *reply, mta, tlsState string) result {
	res := result{code: r.Code, enhanced: r.Enhanced, text: r.Error(), mta: mta, tls: tlsState}
	switch {
	case r.ok():
		res.kind = resDelivered
	case r.temp():
		res.kind = resTemp
	default:
		res.kind = resPerm
	}
	return res
}

// withPolicy notes the host's transport security policy in the result.
func (r *result) withPolicy(p *hostPolicy) {
	if p == nil {
		return
	}
	r.policy, r.tlsOutcome = p.kind, p.outcome()
	if p.failure != "" {
		r.tlsFailure = p.failure
		if r.kind == resTemp && (r.enhanced == "" || r.enhanced == "4.4.1" || r.enhanced == "4.4.0") {
			r.enhanced = "4.7.5"
		}
	}
}

func tempErr(enh, format string, args ...any) result {
	return result{kind: resTemp, enhanced: enh, text: fmt.Sprintf(format, args...)}
}

func permErr(code int, enh, format string, args ...any) result {
	return result{kind: resPerm, code: code, enhanced: enh, text: fmt.Sprintf(format, args...)}
}

func fill(n int, r result) []result {
	out := make([]result, n)
	for i := range out {
		out[i] = r
	}
	return out
}

// run is one attempt of a task: deliver its pending recipients, record the
// results, and queue the notifications that are due.
func (e *engine) run(t *task) {
	defer e.inflight.Done()
	defer e.finish(t)
	s := e.settings()
	ent := t.e
	ent.mu.Lock()
	var idx []int
	for i, r := range ent.rec.Recipients {
		if rcptKey(r) == t.domain && ent.st.Rcpts[i].Status == statusPending {
			idx = append(idx, i)
		}
	}
	ent.mu.Unlock()
	if _, err := os.Stat(e.sp.path(ent.rec.ID)); errors.Is(err, fs.ErrNotExist) {
		// Delivered or deleted by another process that held the spool.
		s.logger.Warn("queue entry vanished from the spool; forgetting it", zap.String("id", ent.rec.ID))
		e.mu.Lock()
		ent.deleted = true
		e.mu.Unlock()
		return
	}
	if len(idx) > 0 {
		start := time.Now()
		var res []result
		if t.domain == localKey {
			res = e.deliverLocal(s, ent, idx)
		} else {
			res = e.deliverRemote(s, ent, t.domain, idx)
		}
		e.record(s, ent, idx, res, start)
	}
	e.notify(s, t)
}

// record stores the results of an attempt in the entry's state.
func (e *engine) record(s *settings, ent *entry, idx []int, res []result, start time.Time) {
	now := time.Now()
	expiry := ent.rec.Queued.Add(s.giveUp)
	ent.mu.Lock()
	defer ent.mu.Unlock()
	allDelivered := true
	for k, i := range idx {
		r, st := res[k], &ent.st.Rcpts[i]
		st.Attempts++
		st.LastTry = now
		st.Code, st.Enhanced, st.Reply, st.RemoteMTA = r.code, r.enhanced, r.text, r.mta
		st.TLSPolicy, st.TLSFailure = r.policy, r.tlsFailure
		outcome := "delivered"
		switch r.kind {
		case resDelivered:
			st.Status = statusDelivered
			if r.tlsOutcome != "" {
				metricTLSDeliveries.WithLabelValues(r.tlsOutcome).Inc()
			}
		case resPerm:
			st.Status = statusFailed
			outcome = "bounced"
		case resTemp:
			outcome = "deferred"
			if !now.Before(expiry) {
				st.Status, st.Expired = statusFailed, true
				outcome = "bounced"
				break
			}
			next := now.Add(s.backoff(st.Attempts))
			if r.again {
				next = now
			}
			if next.After(expiry) {
				next = expiry
			}
			st.NextTry = next
		}
		metricDeliveries.WithLabelValues(outcome).Inc()
		fields := []zap.Field{
			zap.String("id", ent.rec.ID), zap.String("from", ent.rec.From), zap.String("rcpt", ent.rec.Recipients[i].Address),
			zap.String("result", outcome), zap.Int("attempt", st.Attempts), zap.String("mx", r.mta),
			zap.String("reply", r.text), zap.Duration("duration", now.Sub(start)),
		}
		if r.tls != "" {
			fields = append(fields, zap.String("tls", r.tls))
		}
		if r.policy != "" {
			fields = append(fields, zap.String("tls_policy", r.policy))
		}
		if r.tlsFailure != "" {
			fields = append(fields, zap.String("tls_failure", r.tlsFailure))
		}
		if outcome == "deferred" {
			fields = append(fields, zap.Time("next_try", st.NextTry))
		}
		if st.Expired {
			fields = append(fields, zap.Bool("expired", true))
		}
		s.logger.Info("delivery attempt", fields...)
	}
	for _, st := range ent.st.Rcpts {
		if st.Status != statusDelivered {
			allDelivered = false
		}
	}
	if allDelivered {
		return // the files go now; no need to record progress
	}
	if err := e.sp.writeState(ent.rec.ID, &ent.st); err != nil {
		s.logger.Error("writing queue state (the attempt may be repeated)", zap.String("id", ent.rec.ID), zap.Error(err))
	}
}

// notify queues a DSN for the task's failures not yet notified, and a
// delay warning when one is due.
func (e *engine) notify(s *settings, t *task) {
	ent := t.e
	e.mu.Lock()
	deleted := ent.deleted
	e.mu.Unlock()
	if deleted {
		return // deleted by the administrator: no notifications
	}
	now := time.Now()
	nullSender := ent.rec.From == "" || ent.rec.DSN
	ent.mu.Lock()
	var failed, delayed []dsnRcpt
	var failedIdx []int
	for i, r := range ent.rec.Recipients {
		if rcptKey(r) != t.domain {
			continue
		}
		st := ent.st.Rcpts[i]
		switch {
		case st.Status == statusFailed && !st.Notified:
			failedIdx = append(failedIdx, i)
			failed = append(failed, dsnEntry(r.Address, st, "failed"))
		case st.Status == statusPending && st.Attempts > 0:
			delayed = append(delayed, dsnEntry(r.Address, st, "delayed"))
		}
	}
	warn := s.warnAfter > 0 && !nullSender && !ent.st.Warned && len(delayed) > 0 &&
		now.Sub(ent.rec.Queued) >= s.warnAfter
	if warn {
		ent.st.Warned = true // claimed; undone if the warning cannot be queued
	}
	ent.mu.Unlock()

	if len(failed) > 0 {
		var err error
		kind := "failed"
		if nullSender {
			kind = "dropped"
			s.logger.Warn("undeliverable message from the null sender dropped",
				zap.String("id", ent.rec.ID), zap.Strings("rcpts", dsnAddrs(failed)))
		} else {
			err = e.queueDSN(s, ent, failed, false)
		}
		if err != nil {
			s.logger.Error("queueing the bounce failed; retrying later", zap.String("id", ent.rec.ID), zap.Error(err))
			e.mu.Lock()
			t.notifyAt = now.Add(s.initial)
			e.mu.Unlock()
		} else {
			metricDSN.WithLabelValues(kind).Inc()
			ent.mu.Lock()
			for _, i := range failedIdx {
				ent.st.Rcpts[i].Notified = true
			}
			if !ent.done() {
				if err := e.sp.writeState(ent.rec.ID, &ent.st); err != nil {
					s.logger.Error("writing queue state", zap.String("id", ent.rec.ID), zap.Error(err))
				}
			}
			ent.mu.Unlock()
		}
	}
	if warn {
		if err := e.queueDSN(s, ent, delayed, true); err != nil {
			s.logger.Error("queueing the delay warning failed", zap.String("id", ent.rec.ID), zap.Error(err))
			ent.mu.Lock()
			ent.st.Warned = false
			ent.mu.Unlock()
		} else {
			metricDSN.WithLabelValues("delayed").Inc()
			ent.mu.Lock()
			if err := e.sp.writeState(ent.rec.ID, &ent.st); err != nil {
				s.logger.Error("writing queue state", zap.String("id", ent.rec.ID), zap.Error(err))
			}
			ent.mu.Unlock()
		}
	}
}

func dsnEntry(addr string, st rcptState, action string) dsnRcpt {
	status := st.Enhanced
	if status == "" {
		switch {
		case action == "delayed":
			status = "4.0.0"
		case st.Expired:
			status = "4.4.7"
		case st.Code >= 500:
			status = "5.0.0"
		default:
			status = "5.0.0"
		}
	}
	if action == "delayed" && status[0] != '4' {
		status = "4.0.0"
	}
	return dsnRcpt{Address: addr, Action: action, Status: status, Diagnostic: st.Reply,
		RemoteMTA: st.RemoteMTA, LastAttempt: st.LastTry, Expired: st.Expired}
}

func dsnAddrs(rs []dsnRcpt) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Address
	}
	return out
}

// queueDSN builds a notification to the entry's sender and queues it.
func (e *engine) queueDSN(s *settings, ent *entry, rcpts []dsnRcpt, delayed bool) error {
	hdr, msgID, err := e.originalHeader(s, ent)
	if err != nil {
		return err
	}
	return e.queueNotification(s, &dsnInput{
		QueueID:    ent.rec.ID,
		Sender:     ent.rec.From,
		Arrival:    ent.rec.Received,
		RetryUntil: ent.rec.Queued.Add(s.giveUp),
		Header:     hdr,
		MessageID:  msgID,
		Rcpts:      rcpts,
		Delayed:    delayed,
		UTF8:       ent.rec.UTF8,
	})
}

// queueNotification queues a notification to in.Sender: to the sender's local
// mailbox, or by MX like any other mail. A sender that cannot get mail (an
// unknown local mailbox, a bad address) is logged and counted as notified.
func (e *engine) queueNotification(s *settings, in *dsnInput) error {
	to := in.Sender
	addr, err := smtpapp.ParseAddressUTF8(to)
	if err != nil {
		s.logger.Warn("no bounce: the sender address is invalid", zap.String("id", in.QueueID), zap.String("from", to))
		return nil
	}
	// A bounce to an SRS address of ours (a forwarded copy that failed)
	// goes to the original sender it stands for; a forged or expired one
	// gets nothing.
	orig, isSRS, err := s.app.ReverseSRS(e.ctx, addr)
	if isSRS {
		if err != nil && !errors.Is(err, smtpapp.ErrSRSInvalid) {
			return fmt.Errorf("checking the sender's SRS address: %v", err)
		}
		if err != nil {
			s.logger.Warn("no bounce: the sender's SRS address does not verify", zap.String("id", in.QueueID), zap.String("from", to), zap.Error(err))
			return nil
		}
		if addr, err = smtpapp.ParseAddress(orig); err != nil || smtpapp.IsSRS(addr.Local) && s.app.IsLocalDomain(addr.Domain) {
			s.logger.Warn("no bounce: the sender's SRS address stands for a bad address", zap.String("id", in.QueueID), zap.String("from", to))
			return nil
		}
		to = addr.String()
	}
	rcpt := smtpapp.Recipient{Address: to}
	if isSRS {
		rcpt.ForwardedFor = in.Sender
	}
	if s.app.IsLocalDomain(addr.Domain) {
		mb, err := s.app.LookupMailbox(e.ctx, addr)
		if errors.Is(err, smtpapp.ErrNoSuchUser) {
			s.logger.Warn("no bounce: the sender's local mailbox does not exist", zap.String("id", in.QueueID), zap.String("from", to))
			return nil
		}
		if err != nil {
			return fmt.Errorf("looking up the sender's mailbox: %v", err)
		}
		rcpt.Mailbox = mb
	}
	now := time.Now()
	in.Hostname = s.hostname
	msg := buildDSN(in, now)
	rec := &record{ID: newID(), From: "", Recipients: []smtpapp.Recipient{rcpt}, Received: now, Queued: now, DSN: true, UTF8: in.UTF8}
	err = e.enqueue(s, rec, func(w io.Writer) (int64, error) {
		n, err := w.Write(msg)
		return int64(n), err
	}, func() io.Reader { return bytes.NewReader(msg) })
	if err == nil {
		kind := "bounce"
		if in.Delayed {
			kind = "delay warning"
		}
		s.logger.Info("notification queued", zap.String("kind", kind), zap.String("id", rec.ID),
			zap.String("about", in.QueueID), zap.String("to", to), zap.Strings("rcpts", dsnAddrs(in.Rcpts)))
	}
	return err
}

// originalHeader reads what a DSN about ent quotes (see quotedOriginal).
func (e *engine) originalHeader(s *settings, ent *entry) ([]byte, string, error) {
	f, err := os.Open(e.sp.path(ent.rec.ID))
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	ip, _ := netip.ParseAddr(ent.rec.ClientIP)
	hdr, msgID := quotedOriginal(io.NewSectionReader(f, ent.bodyOff, ent.size), s.trustedClient(ent.rec.Account, ip))
	return hdr, msgID, nil
}

// deliverLocal hands recipients with a local mailbox (bounces to local
// senders) to the app's local delivery target.
func (e *engine) deliverLocal(s *settings, ent *entry, idx []int) []result {
	f, err := os.Open(e.sp.path(ent.rec.ID))
	if err != nil {
		return fill(len(idx), tempErr("4.3.0", "opening the queued message: %v", err))
	}
	body := make([]byte, ent.size)
	_, err = f.ReadAt(body, ent.bodyOff)
	f.Close()
	if err != nil {
		return fill(len(idx), tempErr("4.3.0", "reading the queued message: %v", err))
	}
	env := &smtpapp.Envelope{ID: ent.rec.ID, From: ent.rec.From, Received: ent.rec.Received}
	for _, i := range idx {
		env.Recipients = append(env.Recipients, ent.rec.Recipients[i])
	}
	target := s.app.LocalDelivery()
	if target == nil {
		return fill(len(idx), tempErr("4.3.0", "no local delivery target"))
	}
	ctx, cancel := context.WithTimeout(e.ctx, s.dataTimeout)
	defer cancel()
	if err := target.Deliver(ctx, env, smtpapp.NewMessage(body)); err != nil {
		return fill(len(idx), tempErr("4.2.0", "local delivery: %v", err))
	}
	return fill(len(idx), result{kind: resDelivered, code: 250, enhanced: "2.0.0", text: "delivered to local mailbox"})
}
