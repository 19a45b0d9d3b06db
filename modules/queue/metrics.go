package queue

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/groupsync"
	"github.com/caddy-smtp/caddy-smtp/modules/internal/promreg"
)

// The collectors are package-level so that counts survive config reloads;
// each config's registry gets the same collectors.
var (
	metricQueued = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "queue_messages",
		Help: "Messages in the outbound queue.",
	})
	metricDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "queue_deliveries_total",
		Help: "Per-recipient delivery attempts of the outbound queue by result (delivered, deferred, bounced).",
	}, []string{"result"})
	metricDSN = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "queue_dsn_total",
		Help: "Delivery status notifications queued, by kind (failed, delayed, dropped).",
	}, []string{"kind"})
	metricSessions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "queue_sessions_total",
		Help: "Outbound SMTP sessions by TLS state (none, unverified, verified) and result (ok, error).",
	}, []string{"tls", "result"})

	metricConnReuses = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "queue_connection_reuses_total",
		Help: "Deliveries sent on a cached outbound connection (a new session is counted in queue_sessions_total).",
	})

	metricTLSDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "queue_tls_deliveries_total",
		Help: "Recipients delivered to MX hosts by TLS outcome (plaintext, opportunistic, mta-sts, dane).",
	}, []string{"tls"})
	metricTLSFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "queue_tls_failures_total",
		Help: "Transport security failures by TLS-RPT result type (certificate-host-mismatch, starttls-not-supported, validation-failure, dnssec-invalid, sts-policy-fetch-error...).",
	}, []string{"reason"})
	metricTLSReports = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "queue_tls_reports_total",
		Help: "TLS report deliveries by method (mailto, https; dns: the _smtp._tls lookup) and result (ok; error: kept and retried later; dropped: given up after tls_reports give_up).",
	}, []string{"method", "result"})
)

func registerMetrics(reg prometheus.Registerer) error {
	return promreg.Register(reg, append([]prometheus.Collector{metricQueued, metricDeliveries, metricDSN, metricSessions, metricConnReuses,
		metricTLSDeliveries, metricTLSFailures, metricTLSReports}, groupsync.Collectors()...)...)
}
