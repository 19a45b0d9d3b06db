package rbl

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-smtp/caddy-smtp/modules/internal/promreg"
)

// The collectors are package-level so that counts survive a config reload;
// each config's registry gets the same ones.
var (
	metricQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_rbl", Name: "queries_total",
		Help: "DNS queries sent to the lists, by zone and result (listed, not_listed, list_error, error).",
	}, []string{"zone", "result"})
	metricCacheHits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_rbl", Name: "cache_hits_total",
		Help: "Client lookups answered from the cache (or joined to a query in flight), by zone.",
	}, []string{"zone"})
	metricChecks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_rbl", Name: "checks_total",
		Help: "Clients checked at MAIL, by zone and outcome (listed, not_listed, list_error, error, skipped).",
	}, []string{"zone", "result"})
	metricRejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_rbl", Name: "rejections_total",
		Help: "Clients refused at RCPT (counted once per connection), by the zone that refused them (or \"threshold\").",
	}, []string{"zone"})
	metricZoneUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "smtp_rbl", Name: "zone_up",
		Help: "1 while a zone passes its RFC 5782 self-test, 0 while it fails (and is skipped).",
	}, []string{"zone"})
	metricSelfTestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp_rbl", Name: "self_tests_total",
		Help: "RFC 5782 self-tests of the lists, by zone and result (pass, fail).",
	}, []string{"zone", "result"})
	metricQueryDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "smtp_rbl", Name: "query_duration_seconds",
		Help:    "Time to get a list's answer (A, and TXT when listed), by zone.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"zone"})
)

func registerMetrics(reg prometheus.Registerer) error {
	return promreg.Register(reg, metricQueries, metricCacheHits, metricChecks, metricRejections, metricZoneUp, metricSelfTestsTotal, metricQueryDuration)
}
