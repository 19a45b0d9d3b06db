package groupsync

import "github.com/prometheus/client_golang/prometheus"

// Metrics, so that an administrator sees what sync auto does: how many
// files were made durable alone (fsync) or by a shared file system sync,
// and how many shared syncs ran or were skipped for a busy system.
var (
	metricFiles = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "durable_files_total",
		Help: "New message files (Maildir copies, queue entries) made durable before their reply, by how: alone (fsync) or shared (a file system sync).",
	}, []string{"how"})
	metricFileSystemSyncs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "smtp", Name: "file_system_syncs_total",
		Help: "Shared file system syncs (sync file_system or auto), by result: synced, busy (skipped: too much unwritten data), failed.",
	}, []string{"result"})
)

// The counters a message's sync touches, looked up once.
var (
	filesAlone  = metricFiles.WithLabelValues("alone")
	filesShared = metricFiles.WithLabelValues("shared")
)

// Collectors are this package's metrics, for the modules to register.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricFiles, metricFileSystemSyncs}
}
