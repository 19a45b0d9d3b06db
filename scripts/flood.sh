#!/usr/bin/env bash
# Flood load test of the quick-start server ("Survive the hostile Internet").
# Builds the server and internal/cmd/smtpflood, runs examples/Caddyfile in a
# scratch folder (so ./data is scratch) for each scenario, floods
# 127.0.0.1:2525 from loopback sources 127.0.1.x while a probe on 127.0.2.1
# times a complete message, and prints the server's peak RSS and the probe
# latencies against the goals (peak RSS < 300 MiB, each probe's 250 within
# 2 s). Exit status non-zero if a scenario FAILs.
#
#   scripts/flood.sh data|idle|all [smtpflood flags...]
#
#   data: 2000 connections from 50 sources, each stalls in DATA after
#         ~900 KiB of body (no final dot) and holds
#   idle: 10000 connections from 200 sources, each reads the greeting and
#         sits idle
#
# Flags go to smtpflood, e.g. -conns 500 -sources 20 -concurrency 100
# -timeout 60s -body 102400 -probes 3 -probe-interval 5s -abort-rss 3072;
# -ehlo (idle: say EHLO first); -reload localhost:2019 (reload the config
# once the flood is set up: the peak RSS then includes the reload)
# (go run ./internal/cmd/smtpflood -h lists them). KEEP=1 keeps the scratch
# folder (server log, Maildir). Only the server started here is stopped, by
# its PID.
set -euo pipefail
scenario=${1:-}
case "$scenario" in
data | idle) scenarios=$scenario ;;
all) scenarios="data idle" ;;
*)
	sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
shift
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

# As many open files as allowed, for this shell, the server and the tool.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "open files limit: $(ulimit -n)" >&2

work=$(mktemp -d)
pid=
stop_server() {
	if [ -n "$pid" ]; then
		stop_pid "$pid"
		pid=
	fi
}
cleanup() {
	stop_server
	drop_scratch "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building..." >&2
(cd "$root" && go build -o "$work/caddy" ./cmd/caddy && go build -o "$work/smtpflood" ./internal/cmd/smtpflood)

status=0
for s in $scenarios; do
	dir="$work/$s"
	mkdir -p "$dir"
	cp "$root/examples/Caddyfile" "$dir/Caddyfile"
	cd "$dir"
	"$work/caddy" run --config Caddyfile >"$dir/caddy.log" 2>&1 &
	pid=$!
	up=
	for _ in $(seq 1 150); do
		if (exec 3<>/dev/tcp/127.0.0.1/2525) 2>/dev/null; then
			up=1
			break
		fi
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if [ -z "$up" ]; then
		echo "server did not come up on 127.0.0.1:2525; its log:" >&2
		tail -n 30 "$dir/caddy.log" >&2
		exit 1
	fi
	mkdir -p data/maildir/example.test/alice/new
	echo "=== scenario $s: server pid $pid, scratch $dir, open files $(awk '/Max open files/ {print $4}' /proc/$pid/limits) ==="
	rc=0
	"$work/smtpflood" -scenario "$s" -pid "$pid" -maildir "$dir/data/maildir/example.test/alice" "$@" || rc=$?
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "the server exited during the flood; the end of its log:" >&2
		tail -n 30 "$dir/caddy.log" >&2
	fi
	stop_server
	[ "$rc" = 0 ] || status=$rc
	cd "$root"
done
exit "$status"
