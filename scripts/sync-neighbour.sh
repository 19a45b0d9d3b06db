#!/usr/bin/env bash
# What a busy neighbour on the same file system costs a 250, for each value
# of the maildir sync setting (issue 16). For auto, file_system and files in
# turn: the quick-start config (its MX on 127.0.0.1:12525, admin 12019,
# submission 12587/12465; all must be free) in a scratch folder, one
# session at a time sending MESSAGES messages one after another (100 per
# connection) to alice while, from 0.5 s in, dd writes DD_MB MiB to a file
# in that scratch folder (the same file system as the Maildir). Prints each
# setting's p50, p99 and max
# latency from the final dot to its 250 (internal/cmd/smtpsubmit), and
# checks that every acknowledged message is in the Maildir.
#
#   scripts/sync-neighbour.sh
#   MESSAGES=5000 DD_MB=4000 scripts/sync-neighbour.sh
#
# file_system shares one syncfs between concurrent deliveries, so a 250 can
# wait for the neighbour's data; auto falls back to one fsync per message
# while more than 16 MiB is unwritten. Needs free space for DD_MB (3000).
set -euo pipefail
messages=${MESSAGES:-3000} dd_mb=${DD_MB:-3000}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
for port in 12019 12525 12587 12465; do
	if ss -Hltn "sport = :$port" | grep -q .; then
		echo "port $port is in use; this script needs it free" >&2
		exit 2
	fi
done
work=$(mktemp -d)
pid='' dd_pid=''
cleanup() {
	[ -z "$dd_pid" ] || stop_pid "$dd_pid"
	[ -z "$pid" ] || stop_pid "$pid"
	drop_scratch "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building..." >&2
(cd "$root" && go build -o "$work/caddy" ./cmd/caddy && go build -o "$work/smtpsubmit" ./internal/cmd/smtpsubmit)
status=0
for mode in auto file_system files; do
	dir=$work/$mode
	mkdir -p "$dir"
	sed -e "s|admin localhost:2019|admin localhost:12019|" \
		-e "s|listen 127.0.0.1:2525|listen 127.0.0.1:12525|" \
		-e "s|listen 127.0.0.1:2587|listen 127.0.0.1:12587|" \
		-e "s|listen 127.0.0.1:2465|listen 127.0.0.1:12465|" \
		-e "s|local_delivery maildir ./data/maildir|& {\n\t\t\tsync $mode\n\t\t}|" \
		"$root/examples/Caddyfile" >"$dir/Caddyfile"
	sync # nothing left unwritten from the build or the last round
	(cd "$dir" && exec "$work/caddy" run --config Caddyfile >caddy.log 2>&1) &
	pid=$!
	for _ in $(seq 1 150); do
		(exec 3<>/dev/tcp/127.0.0.1/12525) 2>/dev/null && break
		sleep 0.1
	done
	sleep 0.5
	(sleep 0.5 && exec dd if=/dev/zero of="$dir/neighbour" bs=1M count="$dd_mb" status=none) &
	dd_pid=$!
	out=$("$work/smtpsubmit" -addr 127.0.0.1:12525 -starttls=false -from sender@example.org -to alice@example.test \
		-sessions 1 -messages "$messages" -per-conn 100 -size 4096) || true
	dirty=$(awk '/^Dirty:/ {print int($2 / 1024)}' /proc/meminfo)
	stop_pid "$dd_pid"
	dd_pid=''
	stop_pid "$pid"
	pid=''
	stored=$(find "$dir/data/maildir/example.test/alice/new" -type f | wc -l)
	ok=$(echo "$out" | sed -n 's/^ok=\([0-9]*\) .*/\1/p')
	echo "sync $mode: $(echo "$out" | head -n 1 | sed 's/.*250 after the final dot: /250 after the final dot: /') (unwritten at the end: $dirty MiB); stored $stored"
	if [ "${ok:-0}" -ne "$messages" ] || [ "$stored" -ne "$messages" ]; then
		echo "MISMATCH: sync $mode: $messages sent, ${ok:-0} acknowledged, $stored stored"
		status=1
	fi
	rm -f "$dir/neighbour"
done
exit "$status"
