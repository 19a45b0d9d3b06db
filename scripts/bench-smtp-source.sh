#!/usr/bin/env bash
# Load test of the quick-start server with Postfix's smtp-source: N messages
# of SIZE bytes over SESSIONS parallel sessions to alice@example.test on
# 127.0.0.1:2525, then checks that every acknowledged message is on disk.
#
#   scripts/bench-smtp-source.sh [messages=20000] [sessions=20] [size=4096]
#   SYNC=files scripts/bench-smtp-source.sh
#
# SYNC sets the maildir sync setting (files, file_system or auto; default:
# the module's default, auto on Linux 5.8+), for an A/B of the two. KEEP=1
# keeps the scratch folder: on ext4 without a journal, removing 20,000
# files slows file creation nearby for minutes, so back-to-back runs should
# keep theirs. Prints messages/s, the server's peak RSS and its CPU time
# (user + system) per message.
#
# Installs Debian's postfix for smtp-source if missing (its daemon is not
# left running). Prints messages/s; the 250 still means synced to disk.
set -euo pipefail
messages=${1:-20000} sessions=${2:-20} size=${3:-4096}
root=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v smtp-source >/dev/null; then
	echo "installing postfix (for smtp-source)..." >&2
	export DEBIAN_FRONTEND=noninteractive
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	apt-get update -qq && apt-get install -y -qq postfix >/dev/null
	(service postfix stop || true) >/dev/null 2>&1
fi

work=$(mktemp -d)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
pid=''
trap '[ -z "$pid" ] || stop_pid "$pid"; drop_scratch "$work"' EXIT
echo "building..." >&2
go build -o "$work/caddy" "$root/cmd/caddy"
cd "$work"
sync_opt=
if [ -n "${SYNC:-}" ]; then
	sync_opt=" {\n\t\t\tsync $SYNC\n\t\t}"
fi
# smtp-source connects from one address: past the quick start's 20
# connections per client network, the benchmark's copy allows more.
sed -e "s|listen 127.0.0.1:2525|&\n\t\t\tlimits {\n\t\t\t\tmax_connections_per_ip $((sessions + 5))\n\t\t\t}|" \
	-e "s|local_delivery maildir ./data/maildir|&$sync_opt|" \
	"$root/examples/Caddyfile" >"$work/Caddyfile"
sync # what the build left unwritten is not this run's work
"$work/caddy" run --config "$work/Caddyfile" >"$work/caddy.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
	(exec 3<>/dev/tcp/127.0.0.1/2525) 2>/dev/null && break
	sleep 0.1
done
sleep 0.5 # the probe's connection is gone (max_connections_per_ip is 20)
mkdir -p data/maildir/example.test/alice/new
before=$(ls data/maildir/example.test/alice/new | wc -l)

echo "sending $messages messages of $size bytes over $sessions sessions..." >&2
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; } # clock ticks
cpu0=$(cpu)
start=$(date +%s.%N)
smtp-source -l "$size" -m "$messages" -s "$sessions" -f sender@example.org -t alice@example.test 127.0.0.1:2525 >/dev/null
end=$(date +%s.%N)
cpu_us=$((($(cpu) - cpu0) * 1000000 / $(getconf CLK_TCK) / messages))
after=$(ls data/maildir/example.test/alice/new | wc -l)
stored=$((after - before))
rss=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
python3 - "$messages" "$start" "$end" "$stored" "$rss" "$cpu_us" <<'PY'
import sys
n, start, end, stored, rss, cpu = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
secs = end - start
print(f"messages: {n}  stored: {stored}  time: {secs:.2f}s  throughput: {n/secs:.0f} messages/s  server peak RSS: {rss/1024:.0f} MiB  server CPU: {cpu} us/message")
if stored != n:
    print("MISMATCH: acknowledged and stored counts differ", file=sys.stderr); sys.exit(1)
PY
