package queue

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
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
		outcome := "delivered"
		switch r.kind {
		case resDelivered:
			st.Status = statusDelivered
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

// maxDSNHeader bounds the original header quoted in a DSN.
const maxDSNHeader = 64 << 10

// queueDSN builds a notification to the entry's sender and queues it.
func (e *engine) queueDSN(s *settings, ent *entry, rcpts []dsnRcpt, delayed bool) error {
	hdr, err := e.originalHeader(ent)
	if err != nil {
		return err
	}
	return e.queueNotification(s, &dsnInput{
		QueueID:    ent.rec.ID,
		Sender:     ent.rec.From,
		Arrival:    ent.rec.Received,
		RetryUntil: ent.rec.Queued.Add(s.giveUp),
		Header:     hdr,
		Rcpts:      rcpts,
		Delayed:    delayed,
	})
}

// queueNotification queues a notification to in.Sender: to the sender's local
// mailbox, or by MX like any other mail. A sender that cannot get mail (an
// unknown local mailbox, a bad address) is logged and counted as notified.
func (e *engine) queueNotification(s *settings, in *dsnInput) error {
	to := in.Sender
	addr, err := smtpapp.ParseAddress(to)
	if err != nil {
		s.logger.Warn("no bounce: the sender address is invalid", zap.String("id", in.QueueID), zap.String("from", to))
		return nil
	}
	rcpt := smtpapp.Recipient{Address: to}
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
	rec := &record{ID: newID(), From: "", Recipients: []smtpapp.Recipient{rcpt}, Received: now, Queued: now, DSN: true}
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

// originalHeader reads the header block of a queued message (complete
// lines, at most maxDSNHeader bytes).
func (e *engine) originalHeader(ent *entry) ([]byte, error) {
	f, err := os.Open(e.sp.path(ent.rec.ID))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	hdr, _ := readHeader(io.NewSectionReader(f, ent.bodyOff, ent.size))
	if len(hdr) > maxDSNHeader {
		hdr = hdr[:maxDSNHeader]
		if i := bytes.LastIndex(hdr, []byte("\r\n")); i > 0 {
			hdr = hdr[:i+2]
		}
	}
	return hdr, nil
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

// hop is a host to try for a destination.
type hop struct {
	host      string
	port      string
	smarthost bool
}

// deliverRemote delivers to a domain's MX hosts (RFC 5321 5.1) in
// preference order, or to the smarthost, and returns one result per
// recipient.
func (e *engine) deliverRemote(s *settings, ent *entry, domain string, idx []int) []result {
	ctx := e.ctx
	var hops []hop
	if sh := s.smarthost; sh != nil {
		hops = []hop{{host: sh.host, port: sh.port, smarthost: true}}
	} else {
		hosts, res := e.mxHosts(ctx, s, domain)
		if res != nil {
			return fill(len(idx), *res)
		}
		for _, h := range hosts {
			hops = append(hops, hop{host: h, port: strconv.Itoa(s.port)})
		}
	}
	last := tempErr("4.4.1", "no MX host of %s could be reached", domain)
	tries := 0
	for _, h := range hops {
		ips, err := e.lookupHost(ctx, s, h.host)
		if err != nil {
			last = tempErr("4.4.3", "%s: %v", h.host, err)
			continue
		}
		for _, ip := range ips {
			if tries >= maxConnTries || ctx.Err() != nil {
				return fill(len(idx), last)
			}
			tries++
			res, err := e.session(ctx, s, ent, h, ip, idx, false)
			var hs *errTLSHandshake
			if errors.As(err, &hs) && !s.tlsRequire && !h.smarthost {
				s.logger.Info("TLS handshake failed; trying again without TLS",
					zap.String("id", ent.rec.ID), zap.String("mx", h.host), zap.Stringer("ip", ip), zap.Error(err))
				res, err = e.session(ctx, s, ent, h, ip, idx, true)
			}
			if err == nil {
				return res
			}
			s.logger.Debug("MX host failed", zap.String("id", ent.rec.ID), zap.String("mx", h.host),
				zap.Stringer("ip", ip), zap.Error(err))
			last = sessionErr(h.host, err)
		}
	}
	return fill(len(idx), last)
}

// maxConnTries bounds the addresses tried in one attempt.
const maxConnTries = 10

// sessionErr makes a temporary result from a host that failed before the
// transaction (the next host is tried).
func sessionErr(host string, err error) result {
	var r *reply
	if errors.As(err, &r) {
		return result{kind: resTemp, code: r.Code, enhanced: tempEnh(r.Enhanced), text: r.Error(), mta: host}
	}
	return tempErr("4.4.1", "%s: %v", host, err)
}

func tempEnh(enh string) string {
	if enh == "" {
		return "4.4.0"
	}
	return "4" + enh[1:]
}

// mxHosts returns the hosts to try for domain, or a result for every
// recipient when there are none.
func (e *engine) mxHosts(ctx context.Context, s *settings, domain string) ([]string, *result) {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	mxs, err := s.app.DNS().LookupMX(lctx, domain)
	switch {
	case errors.Is(err, smtpapp.ErrNotFound):
		// No MX: the domain itself is the implicit MX, if it has an address.
		_, err := s.app.DNS().LookupIP(lctx, domain)
		if errors.Is(err, smtpapp.ErrNotFound) {
			r := permErr(550, "5.1.2", "domain %s has no MX and no address record", domain)
			return nil, &r
		}
		if err != nil {
			r := tempErr("4.4.3", "looking up %s: %v", domain, err)
			return nil, &r
		}
		return []string{domain}, nil
	case err != nil:
		r := tempErr("4.4.3", "MX lookup of %s: %v", domain, err)
		return nil, &r
	}
	// RFC 7505: a single MX "." means the domain accepts no mail.
	if len(mxs) == 1 && (mxs[0].Host == "" || mxs[0].Host == ".") {
		r := permErr(556, "5.1.10", "domain %s does not accept mail (null MX)", domain)
		return nil, &r
	}
	// Equal preferences in random order (RFC 5321 5.1).
	var hosts []string
	for i := 0; i < len(mxs); {
		j := i
		for j < len(mxs) && mxs[j].Pref == mxs[i].Pref {
			j++
		}
		group := mxs[i:j]
		rand.Shuffle(len(group), func(a, b int) { group[a], group[b] = group[b], group[a] })
		for _, mx := range group {
			if mx.Host != "" && mx.Host != "." {
				hosts = append(hosts, strings.ToLower(mx.Host))
			}
		}
		i = j
	}
	return hosts, nil
}

func (e *engine) lookupHost(ctx context.Context, s *settings, host string) ([]netip.Addr, error) {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ips, err := s.app.DNS().LookupIP(lctx, host)
	if err != nil {
		return nil, err
	}
	// IPv4 first: many hosts have no working IPv6 route.
	var v4, v6 []netip.Addr
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			v4 = append(v4, ip.Unmap())
		} else {
			v6 = append(v6, ip)
		}
	}
	return append(v4, v6...), nil
}

// session delivers to one address of a host. A returned error means the
// host failed before any transaction got a final answer: the caller tries
// the next address.
func (e *engine) session(ctx context.Context, s *settings, ent *entry, h hop, ip netip.Addr, idx []int, plain bool) ([]result, error) {
	addr := net.JoinHostPort(ip.String(), h.port)
	d := net.Dialer{Timeout: s.connectTimout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	sh := s.smarthost
	if h.smarthost && sh.implicitTLS {
		tc := tls.Client(conn, sh.tlsConfig)
		hctx, cancel := context.WithTimeout(ctx, s.cmdTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		conn = tc
	}
	c := newClient(conn, s.cmdTimeout)
	ok := false
	tlsState := "none"
	defer func() {
		result := "error"
		if ok {
			result = "ok"
		}
		metricSessions.WithLabelValues(tlsState, result).Inc()
	}()
	if tc, isTLS := conn.(*tls.Conn); isTLS {
		st := tc.ConnectionState()
		c.tlsState = &st
		tlsState = "verified"
		if sh.tlsConfig.InsecureSkipVerify {
			tlsState = "unverified"
		}
	}
	if err := c.greet(); err != nil {
		c.close()
		return nil, err
	}
	if !h.smarthost && strings.EqualFold(c.serverName, s.hostname) {
		c.quit()
		r := permErr(554, "5.4.6", "mail for %s loops back to myself (%s greets as %s)", domainOf(ent.rec.Recipients[idx[0]].Address), h.host, c.serverName)
		return fill(len(idx), r), nil
	}
	if err := c.hello(s.hostname); err != nil {
		c.close()
		return nil, err
	}
	if c.tlsState == nil {
		verified := false
		wantTLS := !plain && (h.smarthost && sh.starttls || !h.smarthost && !s.tlsDisable)
		mustTLS := h.smarthost && sh.starttls || !h.smarthost && s.tlsRequire
		if wantTLS && c.has("STARTTLS") {
			cfg := e.tlsConfig(s, h, &verified)
			err := c.startTLS(ctx, cfg)
			var r *reply
			switch {
			case err == nil:
				tlsState = "unverified"
				if verified || s.tlsVerify && !h.smarthost || h.smarthost && !sh.tlsConfig.InsecureSkipVerify {
					tlsState = "verified"
				}
				if err := c.hello(s.hostname); err != nil {
					c.close()
					return nil, err
				}
			case errors.As(err, &r) && !mustTLS:
				// STARTTLS refused: carry on in plain text.
			default:
				c.close()
				return nil, err
			}
		} else if mustTLS {
			c.quit()
			return nil, fmt.Errorf("STARTTLS is required but %s does not offer it", h.host)
		}
	}
	if h.smarthost && sh.username != "" {
		if c.tlsState == nil {
			c.quit()
			return nil, fmt.Errorf("refusing to send the password without TLS")
		}
		if err := c.auth(sh.saslClient(c.ext["AUTH"])); err != nil {
			c.quit()
			var r *reply
			if errors.As(err, &r) && r.Code >= 500 {
				// Wrong credentials fail every message the same way: keep
				// them queued until the administrator fixes the config.
				return nil, fmt.Errorf("AUTH refused: %w", err)
			}
			return nil, fmt.Errorf("AUTH: %w", err)
		}
	}
	if limit, err := strconv.ParseInt(c.ext["SIZE"], 10, 64); err == nil && limit > 0 && ent.size > limit {
		c.quit()
		ok = true
		return fill(len(idx), permErr(552, "5.3.4", "message size %d exceeds the limit of %s (%d)", ent.size, h.host, limit)), nil
	}
	f, err := os.Open(e.sp.path(ent.rec.ID))
	if err != nil {
		c.quit()
		return fill(len(idx), tempErr("4.3.0", "opening the queued message: %v", err)), nil
	}
	defer f.Close()

	out := make([]result, len(idx))
	for start := 0; start < len(idx); start += s.maxRcpts {
		end := min(start+s.maxRcpts, len(idx))
		batch := idx[start:end]
		rcpts := make([]string, len(batch))
		for k, i := range batch {
			rcpts[k] = ent.rec.Recipients[i].Address
		}
		tx, err := c.transaction(ent.rec.From, rcpts, ent.size, s.dataTimeout, func(w io.Writer) error {
			_, err := io.Copy(w, io.NewSectionReader(f, ent.bodyOff, ent.size))
			return err
		})
		if err != nil {
			c.close()
			if start == 0 && !tx.sent {
				// Nothing was delivered on this host: try the next one.
				return nil, err
			}
			r := tempErr("4.4.2", "%s: connection lost: %v", h.host, err)
			r.mta = h.host
			for k := start; k < len(idx); k++ {
				out[k] = r
			}
			ok = true
			return out, nil
		}
		for k := range batch {
			out[start+k] = txOutcome(tx, k, h.host, tlsState)
		}
	}
	ok = true
	c.quit()
	return out, nil
}

// txOutcome is recipient k's result in a transaction.
func txOutcome(tx *txResult, k int, host, tlsState string) result {
	switch {
	case !tx.mail.ok():
		return fromReply(tx.mail, host, tlsState)
	case tx.rcpts[k] == nil:
		return tempErr("4.4.2", "%s: no reply to RCPT", host)
	case !tx.rcpts[k].ok():
		r := fromReply(tx.rcpts[k], host, tlsState)
		// 452 "too many recipients" after others were accepted: send
		// the rest again right away (RFC 5321 4.5.3.1.10).
		if tx.rcpts[k].Code == 452 && tx.final != nil && tx.final.ok() {
			r.again = true
		}
		return r
	case tx.data == nil:
		return tempErr("4.4.2", "%s: DATA was not sent", host)
	case tx.data.Code != 354:
		return fromReply(tx.data, host, tlsState)
	case tx.final == nil:
		return tempErr("4.4.2", "%s: no reply after the message", host)
	default:
		return fromReply(tx.final, host, tlsState)
	}
}

// tlsConfig is the STARTTLS config for a host. With opportunistic TLS it
// checks the certificate only to report whether it was valid.
func (e *engine) tlsConfig(s *settings, h hop, verified *bool) *tls.Config {
	if h.smarthost {
		return s.smarthost.tlsConfig
	}
	cfg := &tls.Config{ServerName: h.host, RootCAs: s.roots}
	if s.tlsVerify {
		return cfg
	}
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		opts := x509.VerifyOptions{DNSName: h.host, Roots: s.roots, Intermediates: x509.NewCertPool()}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(opts)
		*verified = err == nil
		return nil
	}
	return cfg
}
