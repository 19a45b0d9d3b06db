package smtpapp

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are package-level so that counts survive a config reload; each
// config's registry gets the same collectors.
type metrics struct {
	connections *prometheus.GaugeVec
	parked      *prometheus.GaugeVec
	accepted    *prometheus.CounterVec
	messages    *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	refusals    *prometheus.CounterVec
	events      *prometheus.CounterVec
}

var appMetrics = &metrics{
	connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "connections_open",
		Help: "Client connections currently open.",
	}, []string{"server"}),
	parked: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "connections_parked",
		Help: "Open connections parked while idle (no goroutine or buffers held).",
	}, []string{"server"}),
	accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "connections_total",
		Help: "Client connections accepted.",
	}, []string{"server"}),
	messages: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "messages_total",
		Help: "Messages by result (delivered, rejected, failed).",
	}, []string{"server", "result"}),
	bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "received_bytes_total",
		Help: "Message bytes accepted.",
	}, []string{"server"}),
	refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "refusals_total",
		Help: "Refused commands and connections, by stage, module and reason.",
	}, []string{"server", "stage", "module", "reason"}),
	events: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "abuse_events_total",
		Help: "Abuse-relevant events (failed AUTH, unknown recipients, relay attempts...).",
	}, []string{"server", "kind"}),
}

func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{m.connections, m.parked, m.accepted, m.messages, m.bytes, m.refusals, m.events} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

func (m *metrics) event(server string, ev Event) {
	m.events.WithLabelValues(server, string(ev.Kind)).Inc()
}

// refused counts a refusal; reason is a short, low-cardinality label.
func (m *metrics) refused(server, stage, module, reason string) {
	m.refusals.WithLabelValues(server, stage, module, reason).Inc()
}
