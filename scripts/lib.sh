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

# drop_scratch DIR: removes the scratch folder DIR, or keeps it and says
# where with KEEP=1.
drop_scratch() {
	if [ "${KEEP:-}" = 1 ]; then
		echo "scratch folder kept: $1" >&2
	else
		rm -rf "$1"
	fi
}
