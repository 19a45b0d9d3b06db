# Shared by the scripts here (sourced, not run).

# stop_pid PID: stops a process this script started, by its PID: TERM,
# up to 10 s for it to exit, then KILL; reaps it.
stop_pid() {
	kill "$1" 2>/dev/null || true
	for _ in $(seq 1 100); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}
