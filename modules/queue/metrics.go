package queue

import (
	"github.com/prometheus/client_golang/prometheus"

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
)

func registerMetrics(reg prometheus.Registerer) error {
	return promreg.Register(reg, metricQueued, metricDeliveries, metricDSN, metricSessions)
}
