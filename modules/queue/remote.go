package queue

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
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

// hop is a host to try for a destination.
type hop struct {
	host      string
	port      string
	smarthost bool
	pol       *hostPolicy // transport security of an MX host (nil for the smarthost)
}

// deliverRemote delivers to a domain's MX hosts (RFC 5321 5.1) in
// preference order, or to the smarthost, and returns one result per
// recipient.
func (e *engine) deliverRemote(s *settings, ent *entry, domain string, idx []int) []result {
	ctx := e.ctx
	hops, res := e.hops(ctx, s, domain)
	if res != nil {
		return fill(len(idx), *res)
	}
	f, err := os.Open(e.sp.path(ent.rec.ID))
	if err != nil {
		return fill(len(idx), tempErr("4.3.0", "opening the queued message: %v", err))
	}
	defer f.Close()
	last := tempErr("4.4.1", "no MX host of %s could be reached", domain)
	var refused []string // internal addresses not tried
	tries, lookupFailed := 0, false
	var dp *domainPolicy
	if s.smarthost == nil {
		dp = e.domainPolicy(ctx, s, domain)
	}
	if ent.rec.RequireTLS && s.smarthost != nil && (!s.smarthost.implicitTLS && !s.smarthost.starttls || s.smarthost.tlsConfig.InsecureSkipVerify) {
		return fill(len(idx), permErr(550, "5.7.30", "REQUIRETLS: the smarthost %s is not used with validated TLS", s.smarthost.host))
	}
	for _, h := range hops {
		var hp *hostPolicy
		if dp != nil {
			var res *result
			if hp, res = e.hostPolicy(ctx, s, dp, h); res == nil && ent.rec.RequireTLS {
				res = requireTLSPolicy(hp, h.host, domain)
			}
			if res != nil {
				s.logger.Info("MX host skipped by the TLS policy", zap.String("id", ent.rec.ID), zap.String("mx", h.host), zap.String("reason", res.text))
				last, lookupFailed = *res, true
				continue
			}
		}
		ips, internal, err := e.addresses(ctx, s, h)
		if err != nil {
			last, lookupFailed = tempErr("4.4.3", "%s: %v", h.host, err), true
			continue
		}
		if len(internal) > 0 {
			s.logger.Warn("not delivering to internal addresses (allow_private_destinations is off)",
				zap.String("id", ent.rec.ID), zap.String("domain", domain), zap.Strings("refused", internal))
			refused = append(refused, internal...)
		}
		for _, ip := range ips {
			if tries >= maxConnTries || ctx.Err() != nil {
				return fill(len(idx), last)
			}
			tries++
			ha := h
			if hp != nil {
				attempt := *hp
				ha.pol = &attempt
			}
			res, reused, err := e.sessionWithFallback(ctx, s, ent, f, ha, ip, idx)
			if ha.pol != nil && !reused {
				// A reused connection's session was counted when it
				// was set up.
				e.endSession(ha.pol, h.host, ip)
			}
			if err == nil {
				for i := range res {
					res[i].withPolicy(ha.pol)
				}
				return res
			}
			s.logger.Debug("MX host failed", zap.String("id", ent.rec.ID), zap.String("mx", h.host),
				zap.Stringer("ip", ip), zap.Error(err))
			last = sessionErr(h.host, err)
			if rt := (*errRequireTLS)(nil); errors.As(err, &rt) {
				last = permErr(550, "5.7.30", "REQUIRETLS: %s", rt.msg)
			}
			last.withPolicy(ha.pol)
		}
	}
	if len(refused) > 0 && tries == 0 && !lookupFailed {
		// Every address the domain leads to is internal: retrying will
		// not change that.
		return fill(len(idx), permErr(550, "5.4.4", "destination address not allowed (private/loopback): %s",
			strings.Join(refused, ", ")))
	}
	return fill(len(idx), last)
}

// addresses looks up h's addresses and leaves out the internal ones
// (unless allowed, or h is the smarthost), which it returns as
// "host (ip)" for the log and the bounce.
func (e *engine) addresses(ctx context.Context, s *settings, h hop) (ips []netip.Addr, internal []string, err error) {
	ips, err = e.lookupHost(ctx, s, h.host)
	if err != nil || h.smarthost || s.allowPrivate {
		return ips, nil, err
	}
	ips, refused := splitInternal(ips)
	for _, ip := range refused {
		internal = append(internal, h.host+" ("+ip.String()+")")
	}
	return ips, internal, nil
}

// hops are the hosts to try for domain: the smarthost, or its MX hosts.
func (e *engine) hops(ctx context.Context, s *settings, domain string) ([]hop, *result) {
	if sh := s.smarthost; sh != nil {
		return []hop{{host: sh.host, port: sh.port, smarthost: true}}, nil
	}
	hosts, res := e.mxHosts(ctx, s, domain)
	if res != nil {
		return nil, res
	}
	hops := make([]hop, len(hosts))
	for i, h := range hosts {
		hops[i] = hop{host: h, port: strconv.Itoa(s.port)}
	}
	return hops, nil
}

// sessionWithFallback runs a session and, when the STARTTLS handshake
// fails and TLS is not required, another one in plain text (what Postfix
// does at its "may" level).
// reused is true when the message went on a cached connection.
func (e *engine) sessionWithFallback(ctx context.Context, s *settings, ent *entry, body io.ReaderAt, h hop, ip netip.Addr, idx []int) (res []result, reused bool, err error) {
	res, reused, err = e.session(ctx, s, ent, body, h, ip, idx, false)
	var hs *errTLSHandshake
	if errors.As(err, &hs) && !h.smarthost && !h.pol.mustTLS {
		s.logger.Info("TLS handshake failed; trying again without TLS",
			zap.String("id", ent.rec.ID), zap.String("mx", h.host), zap.Stringer("ip", ip), zap.Error(err))
		res, reused, err = e.session(ctx, s, ent, body, h, ip, idx, true)
	}
	return res, reused, err
}

// errRequireTLS is a host that cannot take a REQUIRETLS message.
type errRequireTLS struct{ msg string }

func (e *errRequireTLS) Error() string { return "REQUIRETLS: " + e.msg }

// requireTLSPolicy checks that a host may get a REQUIRETLS message (RFC
// 8689 4.2.1): its TLS must be validated by DANE (usable TLSA records) or
// by an MTA-STS policy it matches (a testing policy is enforced for such
// a message). hp is tightened accordingly; a result means the host must
// not be used (permanent: no policy to validate it).
func requireTLSPolicy(hp *hostPolicy, host, domain string) *result {
	switch {
	case hp.kind == polDANE && len(hp.tlsa) > 0:
		return nil
	case hp.kind == polSTS || hp.kind == polSTSTesting && hp.failure == "":
		hp.mustTLS, hp.verify = true, true
		return nil
	case hp.kind == polSTSTesting:
		r := permErr(550, "5.7.30", "REQUIRETLS: %s is not an MX host of the MTA-STS policy of %s", host, domain)
		r.policy, r.tlsFailure = hp.kind, hp.failure
		return &r
	}
	r := permErr(550, "5.7.30", "REQUIRETLS: no DANE records or MTA-STS policy validate %s (TLS policy %s)", host, hp.kind)
	r.policy = hp.kind
	return &r
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

// session delivers to one address of a host: on a cached connection to
// it if there is one, else dial, secure (STARTTLS), authenticate
// (smarthost), transact. A returned error means the host failed before
// any transaction got a final answer: the caller tries the next address.
// reused is true when a cached connection took the message.
func (e *engine) session(ctx context.Context, s *settings, ent *entry, body io.ReaderAt, h hop, ip netip.Addr, idx []int, plain bool) (res []result, reused bool, err error) {
	key := connKey(s, h, ip)
	if !plain && s.cache.maxMessages > 0 {
		for x := e.conns.get(key); x != nil; x = e.conns.get(key) {
			res, err := e.reuse(ctx, s, x, ent, body, h, idx)
			if err == nil {
				return res, true, nil
			}
			s.logger.Debug("cached connection failed; opening a new one", zap.String("id", ent.rec.ID),
				zap.String("host", h.host), zap.Stringer("ip", ip), zap.Error(err))
		}
	}
	res, err = e.newSession(ctx, s, ent, body, h, ip, idx, plain, key)
	return res, false, err
}

// reuse sends the message on a cached connection (after an RSET). An error
// means nothing was sent: the connection is closed and the caller opens a
// new one.
func (e *engine) reuse(ctx context.Context, s *settings, x *cachedConn, ent *entry, body io.ReaderAt, h hop, idx []int) ([]result, error) {
	stop := context.AfterFunc(ctx, func() { x.c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var orig hostPolicy
	if h.pol != nil {
		// The attempt's TLS outcome is the connection's.
		orig = *h.pol
		h.pol.tlsUp, h.pol.failure, h.pol.detail = x.tlsUp, x.failure, x.detail
	}
	x.c.needRset = true
	res, err := e.transact(s, x, ent, body, h, idx)
	if err != nil {
		if h.pol != nil {
			*h.pol = orig
		}
		return nil, err
	}
	metricConnReuses.Inc()
	return res, nil
}

// newSession is session on a new connection.
func (e *engine) newSession(ctx context.Context, s *settings, ent *entry, body io.ReaderAt, h hop, ip netip.Addr, idx []int, plain bool, key string) (res []result, err error) {
	c, tlsState, err := e.dial(ctx, s, h, ip)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	looped := false
	defer func() {
		outcome := "ok"
		if err != nil || looped {
			outcome = "error"
		}
		metricSessions.WithLabelValues(tlsState, outcome).Inc()
	}()
	if err := c.greet(); err != nil {
		c.close()
		return nil, err
	}
	if !h.smarthost && strings.EqualFold(c.serverName, s.hostname) {
		c.quit()
		looped = true
		return fill(len(idx), permErr(554, "5.4.6", "mail for %s loops back to myself (%s greets as %s)",
			domainOf(ent.rec.Recipients[idx[0]].Address), h.host, c.serverName)), nil
	}
	if err := c.hello(s.hostname); err != nil {
		c.close()
		return nil, err
	}
	if tlsState, err = e.secure(ctx, s, c, h, plain, tlsState); err != nil {
		return nil, err
	}
	if err := s.authenticate(c, h); err != nil {
		return nil, err
	}
	return e.transact(s, &cachedConn{c: c, key: key, tlsState: tlsState}, ent, body, h, idx)
}

// dial connects to ip, with TLS from the first byte for a smarthost that
// wants it, and returns the client and its TLS metric label.
func (e *engine) dial(ctx context.Context, s *settings, h hop, ip netip.Addr) (*client, string, error) {
	d := net.Dialer{Timeout: s.connectTimeout}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), h.port))
	if err != nil {
		return nil, "", err
	}
	if !h.smarthost || !s.smarthost.implicitTLS {
		return newClient(conn, s.cmdTimeout), "none", nil
	}
	tc := tls.Client(conn, s.smarthost.tlsConfig)
	hctx, cancel := context.WithTimeout(ctx, s.cmdTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		conn.Close()
		return nil, "", fmt.Errorf("TLS handshake: %w", err)
	}
	c := newClient(tc, s.cmdTimeout)
	st := tc.ConnectionState()
	c.tlsState = &st
	return c, s.smarthost.tlsLabel(), nil
}

// secure runs STARTTLS when the policy wants it (not when plain) and
// returns the session's TLS metric label. On error the connection is
// closed.
func (e *engine) secure(ctx context.Context, s *settings, c *client, h hop, plain bool, tlsState string) (string, error) {
	if c.tlsState != nil {
		return tlsState, nil // implicit TLS
	}
	sh := s.smarthost
	wantTLS := !plain && (h.smarthost && sh.starttls || !h.smarthost && h.pol.kind != polNone)
	mustTLS := h.smarthost && sh.starttls || !h.smarthost && h.pol.mustTLS
	if !wantTLS || !c.has("STARTTLS") {
		if !h.smarthost && !plain && wantTLS && (mustTLS || h.pol.kind == polSTSTesting) {
			h.pol.fail("starttls-not-supported", h.host+" does not offer STARTTLS")
		}
		if mustTLS {
			c.quit()
			return tlsState, fmt.Errorf("STARTTLS is required (TLS policy %s) but %s does not offer it", h.pol.kind, h.host)
		}
		return tlsState, nil
	}
	verified := false
	var cfg *tls.Config
	if h.smarthost {
		cfg = sh.tlsConfig
	} else {
		cfg = h.pol.tlsConfig(h.host, &verified)
	}
	err := c.startTLS(ctx, cfg)
	var r *reply
	switch {
	case err == nil:
	case errors.As(err, &r) && !mustTLS:
		if !h.smarthost && h.pol.kind == polSTSTesting {
			h.pol.fail("starttls-not-supported", "STARTTLS refused: "+r.Error())
		}
		return tlsState, nil // STARTTLS refused: carry on in plain text
	default:
		if !h.smarthost && errors.As(err, &r) {
			h.pol.fail("starttls-not-supported", "STARTTLS refused: "+r.Error())
		} else if !h.smarthost && mustTLS {
			h.pol.fail("validation-failure", err.Error())
		}
		c.close()
		if !h.smarthost && mustTLS {
			return tlsState, fmt.Errorf("TLS policy %s: %w", h.pol.kind, err)
		}
		return tlsState, err
	}
	if !h.smarthost {
		h.pol.tlsUp = true
	}
	tlsState = "unverified"
	if verified || h.smarthost && !sh.tlsConfig.InsecureSkipVerify {
		tlsState = "verified"
	}
	if err := c.hello(s.hostname); err != nil {
		c.close()
		return tlsState, err
	}
	return tlsState, nil
}

// authenticate logs in to a smarthost that has credentials. On error the
// session is ended.
func (s *settings) authenticate(c *client, h hop) error {
	sh := s.smarthost
	if !h.smarthost || sh.username == "" {
		return nil
	}
	if c.tlsState == nil {
		c.quit()
		return fmt.Errorf("refusing to send the password without TLS")
	}
	err := c.auth(sh.saslClient(c.ext["AUTH"]))
	if err == nil {
		return nil
	}
	c.quit()
	var r *reply
	if errors.As(err, &r) && r.Code >= 500 {
		// Wrong credentials fail every message the same way: keep them
		// queued (a temporary error) until the administrator fixes the
		// config.
		return fmt.Errorf("AUTH refused: %w", err)
	}
	return fmt.Errorf("AUTH: %w", err)
}

// transact sends the message in transactions of at most max_recipients,
// then leaves the connection in the cache for the next message (or ends
// the session). An error means nothing was delivered on this host, and
// the connection is closed.
func (e *engine) transact(s *settings, x *cachedConn, ent *entry, body io.ReaderAt, h hop, idx []int) ([]result, error) {
	c, tlsState := x.c, x.tlsState
	if ent.rec.RequireTLS {
		switch {
		case tlsState != "verified": // DANE matches count as verified
			e.release(s, x, h, true)
			return nil, &errRequireTLS{fmt.Sprintf("%s: TLS was not validated (%s)", h.host, tlsState)}
		case !c.has("REQUIRETLS"):
			e.release(s, x, h, true)
			return nil, &errRequireTLS{h.host + " does not support REQUIRETLS"}
		}
	}
	if limit, err := strconv.ParseInt(c.ext["SIZE"], 10, 64); err == nil && limit > 0 && ent.size > limit {
		e.release(s, x, h, false)
		return fill(len(idx), permErr(552, "5.3.4", "message size %d exceeds the limit of %s (%d)", ent.size, h.host, limit)), nil
	}
	if !ent.rec.UTF8 {
		return e.sendBatches(s, x, ent, body, h, idx, false)
	}
	if c.has("SMTPUTF8") {
		return e.sendBatches(s, x, ent, body, h, idx, true)
	}
	return e.downgradeUTF8(s, x, ent, body, h, idx)
}

// downgradeUTF8 handles an SMTPUTF8 message for a host that does not
// offer the extension (RFC 6531 3.7.1): what needs SMTPUTF8 fails for
// good with 553 5.6.7 (no other MX host is tried: they serve the same
// domain). The reverse path or the header section in UTF-8 fail every
// recipient; otherwise a recipient in UTF-8 fails alone, and the ASCII
// ones are sent without the parameter, as there is nothing in the
// envelope or header it would change (domains are kept in A-label form;
// the body is left to 8BITMIME, as for any message).
func (e *engine) downgradeUTF8(s *settings, x *cachedConn, ent *entry, body io.ReaderAt, h hop, idx []int) ([]result, error) {
	refused := permErr(553, "5.6.7", "%s does not support SMTPUTF8, which the message needs (RFC 6531)", h.host)
	refused.mta = h.host
	if !smtpapp.IsASCII(ent.rec.From) || !asciiHeader(io.NewSectionReader(body, ent.bodyOff, ent.size)) {
		e.release(s, x, h, false)
		return fill(len(idx), refused), nil
	}
	out := make([]result, len(idx))
	var ascii, pos []int
	for k, i := range idx {
		if smtpapp.IsASCII(ent.rec.Recipients[i].Address) {
			ascii, pos = append(ascii, i), append(pos, k)
		} else {
			out[k] = refused
		}
	}
	if len(ascii) == 0 {
		e.release(s, x, h, false)
		return out, nil
	}
	res, err := e.sendBatches(s, x, ent, body, h, ascii, false)
	if err != nil {
		return nil, err
	}
	for j, k := range pos {
		out[k] = res[j]
	}
	return out, nil
}

// asciiHeader reports whether a message's header section is all ASCII.
func asciiHeader(r io.Reader) bool {
	br := bufio.NewReader(r)
	partial := false // the last slice did not end its line
	for {
		line, err := br.ReadSlice('\n')
		if !smtpapp.IsASCII(string(line)) {
			return false
		}
		if err == bufio.ErrBufferFull {
			partial = true
			continue
		}
		if err != nil || !partial && (string(line) == "\r\n" || string(line) == "\n") {
			return true // the end of the header section
		}
		partial = false
	}
}

// sendBatches sends the message in transactions of at most
// max_recipients (see transact).
func (e *engine) sendBatches(s *settings, x *cachedConn, ent *entry, body io.ReaderAt, h hop, idx []int, smtputf8 bool) ([]result, error) {
	c, tlsState := x.c, x.tlsState
	closing := false // the server said 421
	out := make([]result, len(idx))
	for start := 0; start < len(idx); start += s.maxRcpts {
		batch := idx[start:min(start+s.maxRcpts, len(idx))]
		rcpts := make([]string, len(batch))
		for k, i := range batch {
			rcpts[k] = ent.rec.Recipients[i].Address
		}
		tx, err := c.transaction(ent.rec.From, rcpts, ent.size, ent.rec.RequireTLS, smtputf8, s.dataTimeout, func(w io.Writer) error {
			_, err := io.Copy(w, io.NewSectionReader(body, ent.bodyOff, ent.size))
			return err
		})
		if err != nil {
			c.close()
			if start == 0 && !tx.sent {
				return nil, err // try the next host
			}
			r := tempErr("4.4.2", "%s: connection lost: %v", h.host, err)
			r.mta = h.host
			for k := start; k < len(idx); k++ {
				out[k] = r
			}
			return out, nil
		}
		x.uses++
		closing = closing || tx.closing()
		for k := range batch {
			out[start+k] = txOutcome(tx, k, h.host, tlsState)
		}
	}
	e.release(s, x, h, closing)
	return out, nil
}

// release puts a connection whose last transaction ended cleanly in the
// cache, with its session's TLS outcome; one the server is closing (421)
// is ended.
func (e *engine) release(s *settings, x *cachedConn, h hop, closing bool) {
	if closing {
		x.c.quit()
		return
	}
	if h.pol != nil {
		x.tlsUp, x.failure, x.detail = h.pol.tlsUp, h.pol.failure, h.pol.detail
	}
	e.conns.put(s.cache, x)
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

// internalPrefixes are address ranges that are not on the public
// Internet beyond what netip's predicates cover.
var internalPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),     // "this network" (RFC 1122)
	netip.MustParsePrefix("100.64.0.0/10"), // shared address space, CGNAT (RFC 6598)
	netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments (RFC 6890)
	netip.MustParsePrefix("198.18.0.0/15"), // benchmarking (RFC 2544)
	netip.MustParsePrefix("240.0.0.0/4"),   // reserved, and the broadcast address
	netip.MustParsePrefix("fec0::/10"),     // deprecated site-local (RFC 3879)
}

// isInternal reports whether ip is an address the queue must not deliver
// to unless allow_private_destinations is on: loopback, private (RFC
// 1918, fc00::/7), link-local, multicast, unspecified, CGNAT or reserved.
func isInternal(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsMulticast() ||
		ip.IsUnspecified() || !ip.IsValid() {
		return true
	}
	for _, p := range internalPrefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// splitInternal separates internal addresses from the others, keeping
// their order.
func splitInternal(ips []netip.Addr) (public, internal []netip.Addr) {
	for _, ip := range ips {
		if isInternal(ip) {
			internal = append(internal, ip)
		} else {
			public = append(public, ip)
		}
	}
	return public, internal
}
