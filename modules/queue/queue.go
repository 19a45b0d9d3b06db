// Package queue is the smtp.delivery.queue module: the durable outbound
// queue. It takes mail for remote recipients, stores it on disk (synced)
// before the server answers 250, and delivers it to each domain's MX (or a
// smarthost) with retries, backoff, bounces (RFC 3464) and DKIM signing. An
// admin API module (admin.api.smtp_queue) lists, flushes and deletes
// entries; the `caddy smtp-queue` and `caddy smtp-dkim` commands use it.
package queue

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Queue{})
}

// Queue is the outbound queue. Its state (the spool, the delivery workers,
// the messages in flight) is kept across config reloads for as long as some
// config uses the same path; the newest config's settings apply to it.
type Queue struct {
	// Path is the spool folder. Default: smtp/queue under Caddy's data
	// directory. Placeholders like {env.HOME} are replaced.
	Path string `json:"path,omitempty"`

	// Hostname is the name given in EHLO to remote servers and used in
	// bounces (MAILER-DAEMON@hostname). Default: the hostname of the
	// app's first server (by name), else the machine's host name.
	Hostname string `json:"hostname,omitempty"`

	// Sync is how a message file reaches the disk before the message is
	// acknowledged: "files" (fsync each), "file_system" (concurrent
	// enqueues share one syncfs of the spool's file system) or "auto"
	// (file_system while the system has at most 16 MiB unwritten, files
	// otherwise), as the maildir module's sync setting. Either way the file
	// is synced in tmp/ before its rename into the queue. Default: auto on
	// Linux 5.8 or later, files elsewhere.
	Sync string `json:"sync,omitempty"`

	// MaxConcurrency is the number of deliveries in progress at once.
	// Default: 20.
	MaxConcurrency int `json:"max_concurrency,omitempty"`

	// MaxPerDomain is the number of deliveries in progress at once to one
	// destination domain. Default: 5.
	MaxPerDomain int `json:"max_per_domain,omitempty"`

	// MaxRecipients per transaction; more recipients for one domain are
	// sent in further transactions on the same connection. Default: 100.
	MaxRecipients int `json:"max_recipients,omitempty"`

	// RemotePort is the port of remote MX hosts. Default: 25. (Tests point
	// it at a server on loopback.)
	RemotePort int `json:"remote_port,omitempty"`

	// Retry sets when failed deliveries are retried and when the queue
	// gives up.
	Retry *RetryConfig `json:"retry,omitempty"`

	// TLS is the policy for STARTTLS to MX hosts. Default: opportunistic
	// (encrypt when offered, without requiring a valid certificate).
	TLS *TLSPolicy `json:"tls,omitempty"`

	// MTASTS finds and enforces the MTA-STS policies (RFC 8461) of
	// destination domains. On by default.
	MTASTS *MTASTSConfig `json:"mta_sts,omitempty"`

	// DANE checks MX hosts' certificates against their TLSA records (RFC
	// 7672), looked up through a DNSSEC-validating resolver. Off unless
	// configured.
	DANE *DANEConfig `json:"dane,omitempty"`

	// TLSReports sends TLS reports (RFC 8460) to the domains that ask for
	// them. On by default (once a day).
	TLSReports *TLSReportsConfig `json:"tls_reports,omitempty"`

	// Destinations override the transport security of some destination
	// domains (the first match applies).
	Destinations []DestinationPolicy `json:"destinations,omitempty"`

	// Smarthost sends everything through one relay instead of MX lookup.
	Smarthost *Smarthost `json:"smarthost,omitempty"`

	// DKIM signs mail from local domains. On by default.
	DKIM *DKIMConfig `json:"dkim,omitempty"`

	// Timeouts of outbound connections.
	Timeouts *Timeouts `json:"timeouts,omitempty"`

	// ConnectionCache keeps a connection to an MX host (or the smarthost)
	// open after a delivery for the next message to the same host, under
	// the same TLS policy (RSET between messages). On by default: at most
	// 100 messages per connection, 2s idle.
	ConnectionCache *ConnectionCache `json:"connection_cache,omitempty"`

	// AllowPrivateDestinations lets MX, A and AAAA lookups lead to
	// internal addresses: loopback, private (RFC 1918, fc00::/7),
	// shared (100.64.0.0/10), link-local, multicast, unspecified and
	// reserved ones. Off by default, so that a hostile domain whose MX
	// points inside the network cannot make the queue talk to internal
	// services; a domain with only such addresses bounces (5.4.4). Turn it
	// on for mail routed inside a private network. A smarthost is the
	// administrator's choice and is used whatever its address.
	AllowPrivateDestinations bool `json:"allow_private_destinations,omitempty"`

	path string
	s    *settings
	eng  *engine
}

// CaddyModule returns the Caddy module information.
func (Queue) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.delivery.queue", New: func() caddy.Module { return new(Queue) }}
}

// Provision checks the config, loads the DKIM keys, and attaches to the
// queue engine of the spool path (loading the spool if this is the first
// config that uses it).
func (q *Queue) Provision(ctx caddy.Context) error {
	app := smtpapp.AppFrom(ctx)
	if app == nil {
		return fmt.Errorf("the queue must be loaded by the smtp app (as its outbound target)")
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	s, err := q.settings(ctx, app)
	if err != nil {
		return err
	}
	q.s = s
	repl := caddy.NewReplacer()
	path := q.Path
	if path == "" {
		path = filepath.Join(caddy.AppDataDir(), "smtp", "queue")
	}
	path, err = filepath.Abs(repl.ReplaceKnown(path, ""))
	if err != nil {
		return fmt.Errorf("path: %v", err)
	}
	val, _, err := engines.LoadOrNew(path, func() (caddy.Destructor, error) {
		return openEngine(path, s)
	})
	if err != nil {
		return fmt.Errorf("path: %s: %v", path, err)
	}
	q.path = path
	q.eng = val.(*engine)
	q.eng.attach(q)
	return nil
}

// Bounce queues a delivery status notification to env.From about
// recipients that another target (LMTP) refused for good, for a message
// the server still accepts for the others. For mail from a client that is
// neither authenticated nor in trusted_networks, the notification quotes
// nothing of the message but its Message-ID (no backscatter).
func (q *Queue) Bounce(ctx context.Context, env *smtpapp.Envelope, msg *smtpapp.Message, failed []smtpapp.FailedRecipient) error {
	hdr, msgID := quotedOriginal(msg.Reader(), q.s.trustedClient(env.Account, env.ClientIP))
	now := time.Now()
	rcpts := make([]dsnRcpt, len(failed))
	for i, f := range failed {
		status := "5.0.0"
		if ec := f.Reply.EnhancedCode; ec[0] == 5 {
			status = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
		}
		rcpts[i] = dsnRcpt{Address: f.Address, Action: "failed", Status: status,
			Diagnostic: fmt.Sprintf("%d %s", f.Reply.Code, f.Reply.Message), LastAttempt: now}
	}
	return q.eng.queueNotification(q.s, &dsnInput{QueueID: env.ID, Sender: env.From, Arrival: env.Received, Header: hdr, MessageID: msgID, Rcpts: rcpts})
}

// Start begins delivering from the spool (the smtp app calls it when it
// starts, after its listeners are bound).
func (q *Queue) Start() error {
	q.eng.begin()
	return nil
}

// Cleanup detaches from the engine; the last config to leave stops it.
func (q *Queue) Cleanup() error {
	if q.eng == nil {
		return nil
	}
	q.eng.detach(q)
	_, err := engines.Delete(q.path)
	return err
}

// Deliver queues the message for env's (remote) recipients. It returns once
// the message and envelope are synced to the spool.
func (q *Queue) Deliver(ctx context.Context, env *smtpapp.Envelope, msg *smtpapp.Message) error {
	if len(env.Recipients) == 0 {
		return nil
	}
	now := time.Now()
	rec := &record{
		ID:         env.ID,
		From:       env.From,
		Recipients: append([]smtpapp.Recipient(nil), env.Recipients...),
		Received:   env.Received,
		Queued:     now,
		Account:    env.Account,
	}
	if env.ClientIP.IsValid() {
		rec.ClientIP = env.ClientIP.String()
	}
	if env.RequireTLS {
		rec.RequireTLS = true
	}
	if env.UTF8 {
		rec.UTF8 = true
	}
	if rec.Received.IsZero() {
		rec.Received = now
	}
	return q.eng.enqueue(q.s, rec, func(w io.Writer) (int64, error) { return msg.WriteTo(w) }, msg.Reader)
}

// engines holds the queue engines by spool path, across config reloads.
var engines = caddy.NewUsagePool()

// Interface guards
var (
	_ caddy.Provisioner      = (*Queue)(nil)
	_ caddy.CleanerUpper     = (*Queue)(nil)
	_ smtpapp.Bouncer        = (*Queue)(nil)
	_ smtpapp.DeliveryTarget = (*Queue)(nil)
)
