#!/usr/bin/env bash
# Our server against Postfix on the same machine in the same run (issue 16).
# Builds the server and internal/cmd/smtpsubmit, and for each case runs our
# server (examples/Caddyfile in a scratch folder, so ./data is scratch) and
# then a private Postfix instance (its own config, queue, data and Maildir
# folders under the scratch folder, smtpd on 127.0.0.1:12625 only), each
# fresh. A system Postfix, if any, is left alone. Ours runs the quick-start
# config on ports of its own: MX 12525, submission 12587, admin 12019 (the
# quick start's 2525/2587/2019 are shared by SO_REUSEPORT with any other
# server there); the sink listens on 12699, case 3's OpenDKIM milters on
# 12691 (RSA) and 12692 (Ed25519). MX_PORT, SUB_PORT, ADMIN_PORT, PF_PORT,
# SINK_PORT, DKIM_PORT (the RSA milter's; the Ed25519 one's is the next)
# change them; all must be free.
#
#   scripts/bench-vs-postfix.sh
#   MESSAGES=5000 SUBMIT_MESSAGES=2000 scripts/bench-vs-postfix.sh
#   CASES=3 SUBMIT_MESSAGES=500 scripts/bench-vs-postfix.sh
#
# Environment: CASES ("1 2 3": the cases to run, in that order),
# MESSAGES (20000, cases 1 and 2), SIZE (4096 body bytes),
# SUBMIT_MESSAGES (10000, case 3), SUBMIT_SESSIONS (20), SUBMIT_PER_CONN
# (500 messages per connection, so one AUTH per session), TIMEOUT (600 s to
# wait for asynchronous delivery), KEEP=1 keeps the scratch folder.
#
# Cases and figures:
#  1. smtp-source -s 20 -m MESSAGES -l SIZE to alice@example.test, inbound:
#     ours = our MX storing into Maildir; the 250 means the message
#     is already synced in Maildir, so messages/s = MESSAGES / (last 250 -
#     start). postfix = smtpd + virtual(8) into Maildir. Postfix's 250
#     means "in the queue"; it delivers later, so two figures: "250s" =
#     until smtp-source got its last 250, "Maildir" = until all MESSAGES
#     files are in Maildir/new. The ratio ours/postfix uses the Maildir one.
#  2. The same with -s 100.
#  3. Submission to a remote domain: smtpsubmit (STARTTLS, then for ours
#     AUTH PLAIN as alice on submission) sends SUBMIT_MESSAGES to
#     someone@remote.test; both servers relay every message to one
#     smtp-sink on 127.0.0.1:12699 (ours: queue smarthost, tls none;
#     Postfix: relayhost). messages/s = SUBMIT_MESSAGES / (time until the
#     sink counted all of them - start). Ours with DKIM signing
#     (RSA-2048 and Ed25519, the default), with Ed25519 only, and without;
#     Postfix twice: without signing (the rows kept comparable with
#     earlier runs), and with OpenDKIM signing every message twice,
#     RSA-2048 and Ed25519, like our default: the mail admin's real
#     alternative, compared to ours with DKIM on. OpenDKIM 2.11 (Debian
#     12) signs with one algorithm per instance, so two private milters,
#     RSA-2048 on 127.0.0.1:12691 and Ed25519 on 12692, each with its
#     config, key and log under the scratch folder; Postfix calls both
#     (milter_default_action = tempfail). Before the timed runs, an
#     untimed check on a separate instance of each side that signs twice
#     (ours "on", Postfix+OpenDKIM) sends 2 messages to a sink that dumps
#     them (smtp-sink -d): each must arrive with two DKIM-Signature
#     fields, a=rsa-sha256 and a=ed25519-sha256, d=example.test (the
#     fields are checked, not verified against DNS).
#
# After each run the stored or received count must equal the count
# acknowledged, exactly, and the sending server's queue must be empty, and
# the signature checks must pass; otherwise the script says MISMATCH and
# exits 1 at the end. Ratios below their goals (>= 4x inbound, >= 2x
# submission) are reported, not fatal.
set -euo pipefail
messages=${MESSAGES:-20000} size=${SIZE:-4096}
submit_messages=${SUBMIT_MESSAGES:-10000} submit_sessions=${SUBMIT_SESSIONS:-20}
submit_per_conn=${SUBMIT_PER_CONN:-500}
timeout=${TIMEOUT:-600}
cases=${CASES:-1 2 3}
for c in $cases; do
	case $c in
	1 | 2 | 3) ;;
	*)
		echo "CASES: no case $c (cases are 1, 2 and 3)" >&2
		exit 2
		;;
	esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
# Ports of this run, not the quick start's: Caddy listens with SO_REUSEPORT,
# so a second server on 2525 (another benchmark, a dev run) would silently
# share the port and take some of the connections.
mx_port=${MX_PORT:-12525} sub_port=${SUB_PORT:-12587} subs_port=$((${SUB_PORT:-12587} - 122))
admin_port=${ADMIN_PORT:-12019} pf_port=${PF_PORT:-12625} sink_port=${SINK_PORT:-12699}
dkim_port=${DKIM_PORT:-12691} dkim_ed_port=$((${DKIM_PORT:-12691} + 1))

need="postfix postconf smtp-source smtp-sink openssl"
case " $cases " in *" 3 "*) need="$need opendkim" ;; esac # only case 3 signs
for cmd in $need; do
	command -v "$cmd" >/dev/null || {
		echo "$cmd is missing (Debian: apt-get install postfix openssl opendkim)" >&2
		exit 2
	}
done
for port in $admin_port $mx_port $sub_port $subs_port $pf_port $sink_port $dkim_port $dkim_ed_port; do
	if ss -Hltn "sport = :$port" | grep -q .; then
		echo "port $port is in use; this benchmark needs it free" >&2
		exit 2
	fi
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
chmod 755 "$work" # Postfix's virtual(8) runs as nobody and writes below it
# spread DIR: on ext4, the folders made in DIR go to block groups of their
# own (the Orlov allocator's "top directory" flag, chattr +T). Without it
# both servers' files share one group, and where ext4 runs without a
# journal, creating a file there scans past every inode deleted in the
# last minutes (Postfix deletes each queue file after delivery): the
# server that runs second pays for the first one's deletions.
spread() { chattr +T "$1" 2>/dev/null || true; }
spread "$work"
pid='' sink_pid='' pf_dir='' dkim_pids=''
stop_ours() {
	if [ -n "$pid" ]; then
		stop_pid "$pid"
		pid=
	fi
}
stop_sink() {
	if [ -n "$sink_pid" ]; then
		kill "$sink_pid" 2>/dev/null || true
		wait "$sink_pid" 2>/dev/null || true
		sink_pid=
	fi
}
stop_postfix() {
	if [ -n "$pf_dir" ]; then
		MAIL_CONFIG="$pf_dir/etc" postfix -c "$pf_dir/etc" stop >/dev/null 2>&1 || true
		for _ in $(seq 1 100); do
			MAIL_CONFIG="$pf_dir/etc" postfix -c "$pf_dir/etc" status >/dev/null 2>&1 || break
			sleep 0.1
		done
		pf_dir=
	fi
}
# stop_opendkim: stops the OpenDKIM instances this script started, by PID:
# TERM to each first, as each takes seconds to exit, then stop_pid.
stop_opendkim() {
	local p
	for p in $dkim_pids; do
		kill "$p" 2>/dev/null || true
	done
	for p in $dkim_pids; do
		stop_pid "$p"
	done
	dkim_pids=''
}
cleanup() {
	stop_ours
	stop_postfix
	stop_opendkim
	stop_sink
	drop_scratch "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building..." >&2
(cd "$root" && go build -o "$work/caddy" ./cmd/caddy && go build -o "$work/smtpsubmit" ./internal/cmd/smtpsubmit)

now() { date +%s.%N; }
# rate N START END: messages/s.
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.0f", n / (b - a) }'; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else printf "-" }'; }
# files DIR: how many files DIR holds (0 if it does not exist yet).
files() { if [ -d "$1" ]; then find "$1" -maxdepth 1 -type f | wc -l; else echo 0; fi; }
wait_port() {
	for _ in $(seq 1 150); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "nothing listens on 127.0.0.1:$1" >&2
	return 1
}
summary=$work/summary
: >"$summary"
status=0
mismatch() {
	echo "MISMATCH: $*"
	status=1
}

# ours_config SESSIONS [OUTBOUND BLOCK LINES]: the quick start on this
# run's ports, with max_connections_per_ip SESSIONS+5 on the MX and
# submission (smtp-source and smtpsubmit connect from one address) and the
# outbound queue's block.
ours_config() {
	local lim="\n\t\t\tlimits {\n\t\t\t\tmax_connections_per_ip $(($1 + 5))\n\t\t\t}"
	sed -e "s|admin localhost:2019|admin localhost:$admin_port|" \
		-e "s|listen 127.0.0.1:2525|listen 127.0.0.1:$mx_port$lim|" \
		-e "s|listen 127.0.0.1:2587|listen 127.0.0.1:$sub_port$lim|" \
		-e "s|listen 127.0.0.1:2465|listen 127.0.0.1:$subs_port|" \
		-e "s|outbound queue ./data/queue|& {${2:-}\n\t\t}|" "$root/examples/Caddyfile"
}

# start_ours DIR: runs our server with DIR/Caddyfile in DIR.
# settle: writes back what is still unwritten (the build's binaries, the
# previous run's files) before a server starts, so that neither server pays
# for it during its run; our default sync auto would also take it for a
# busy neighbour (over 16 MiB unwritten) and sync each file alone.
settle() { sync; }

start_ours() {
	settle
	(cd "$1" && exec "$work/caddy" run --config Caddyfile >caddy.log 2>&1) &
	pid=$!
	wait_port "$mx_port" && wait_port "$sub_port"
	sleep 0.5 # the probes' connections are gone
}

# start_postfix DIR [main.cf settings...]: a private Postfix instance in
# DIR: config DIR/etc, queue DIR/queue, data DIR/data, log DIR/maillog,
# Maildirs under DIR/mail (virtual(8), owned by nobody), smtpd on
# 127.0.0.1:$pf_port only, no chroot.
start_postfix() {
	local d=$1
	shift
	settle
	mkdir -p "$d/etc" "$d/data" "$d/queue" "$d/mail"
	if [ -f /usr/share/postfix/master.cf.dist ]; then
		cp /usr/share/postfix/master.cf.dist "$d/etc/master.cf"
	else
		cp /etc/postfix/master.cf "$d/etc/master.cf"
	fi
	: >"$d/etc/main.cf"
	printf '%s\n' "alice@example.test example.test/alice/" "bob@example.test example.test/bob/" >"$d/etc/vmailbox"
	local nobody
	nobody=$(id -u nobody)
	postconf -c "$d/etc" -e \
		"compatibility_level = 3.6" \
		"queue_directory = $d/queue" \
		"data_directory = $d/data" \
		"maillog_file_prefixes = $d" \
		"maillog_file = $d/maillog" \
		"inet_interfaces = 127.0.0.1" \
		"inet_protocols = ipv4" \
		"myhostname = postfix.bench.test" \
		"mydestination =" \
		"mynetworks = 127.0.0.0/8" \
		"alias_maps =" "alias_database =" "local_recipient_maps =" \
		"biff = no" \
		"default_process_limit = 200" \
		"smtpd_recipient_limit = 1000" \
		"virtual_mailbox_domains = example.test" \
		"virtual_mailbox_base = $d/mail" \
		"virtual_mailbox_maps = texthash:$d/etc/vmailbox" \
		"virtual_minimum_uid = $nobody" \
		"virtual_uid_maps = static:$nobody" \
		"virtual_gid_maps = static:$(id -g nobody)" \
		"$@"
	postconf -c "$d/etc" -F '*/*/chroot = n'
	postconf -c "$d/etc" -MX smtp/inet
	postconf -c "$d/etc" -M "127.0.0.1:$pf_port/inet = 127.0.0.1:$pf_port inet n - n - - smtpd"
	chown nobody:"$(id -gn nobody)" "$d/mail"
	chown postfix "$d/data"
	MAIL_CONFIG="$d/etc" postfix -c "$d/etc" set-permissions
	pf_dir=$d
	if ! MAIL_CONFIG="$d/etc" postfix -c "$d/etc" start >/dev/null 2>&1; then
		echo "Postfix did not start; its log:" >&2
		cat "$d/maillog" >&2 || true
		return 1
	fi
	wait_port "$pf_port"
	pf_check "$d"
}

# pf_check DIR: shows that the instance is private (its folders under the
# scratch folder, its master listening on 127.0.0.1:$pf_port only) and stops
# the benchmark if it is not.
pf_check() {
	local d=$1 mpid v listens
	mpid=$(tr -d ' ' <"$d/queue/pid/master.pid")
	for v in config_directory queue_directory data_directory maillog_file virtual_mailbox_base; do
		case "$(postconf -c "$d/etc" -h "$v")" in
		"$work"/*) ;;
		*)
			echo "Postfix $v is outside the scratch folder" >&2
			return 1
			;;
		esac
	done
	listens=$(ss -Hltnp | grep "pid=$mpid," | awk '{print $4}' | sort -u | tr '\n' ' ')
	echo "postfix: private instance, master PID $mpid, config/queue/data/log/Maildir under $d, listening on: $listens"
	if [ "$listens" != "127.0.0.1:$pf_port " ]; then
		echo "Postfix listens on more than 127.0.0.1:$pf_port" >&2
		return 1
	fi
}

# pf_queued DIR: messages still in the instance's queue.
pf_queued() { find "$1/queue/incoming" "$1/queue/active" "$1/queue/deferred" "$1/queue/maildrop" -type f | wc -l; }

# inbound CASE SESSIONS: case 1 or 2.
inbound() {
	local c=$1 s=$2 dir=$work/case$1
	echo
	echo "=== case $c: smtp-source -s $s -m $messages -l $size to alice@example.test, stored in Maildir ==="
	mkdir -p "$dir"
	spread "$dir"
	mkdir -p "$dir/ours" "$dir/postfix"

	ours_config "$s" >"$dir/ours/Caddyfile"
	start_ours "$dir/ours"
	local maildir=$dir/ours/data/maildir/example.test/alice/new t0 t1
	t0=$(now)
	smtp-source -s "$s" -m "$messages" -l "$size" -f sender@example.org -t alice@example.test "127.0.0.1:$mx_port" >/dev/null
	t1=$(now)
	local stored rss
	stored=$(files "$maildir")
	rss=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status")
	stop_ours
	local ours_rate
	ours_rate=$(rate "$messages" "$t0" "$t1")
	echo "ours:    $messages messages acknowledged in $(secs "$t0" "$t1")s = $ours_rate messages/s (end point: last 250 = synced in Maildir); stored $stored; peak RSS $rss MiB"
	[ "$stored" -eq "$messages" ] || mismatch "ours case $c: $messages acknowledged, $stored in Maildir"

	start_postfix "$dir/postfix"
	maildir=$dir/postfix/mail/example.test/alice/new
	local t250 tmd=
	t0=$(now)
	smtp-source -s "$s" -m "$messages" -l "$size" -f sender@example.org -t alice@example.test "127.0.0.1:$pf_port" >/dev/null
	t250=$(now)
	local deadline=$(($(date +%s) + timeout))
	while [ "$(date +%s)" -lt "$deadline" ]; do
		if [ "$(files "$maildir")" -ge "$messages" ]; then
			tmd=$(now)
			break
		fi
		sleep 0.1
	done
	sleep 1 # anything past the count would show now
	stored=$(files "$maildir")
	local queued
	queued=$(pf_queued "$dir/postfix")
	stop_postfix
	local pf_rate250 pf_rate
	pf_rate250=$(rate "$messages" "$t0" "$t250")
	echo "postfix: $messages messages acknowledged in $(secs "$t0" "$t250")s = $pf_rate250 messages/s (end point: last 250 = in Postfix's queue)"
	if [ -n "$tmd" ]; then
		pf_rate=$(rate "$messages" "$t0" "$tmd")
		echo "postfix: all $messages in Maildir after $(secs "$t0" "$tmd")s = $pf_rate messages/s (end point: last file in Maildir/new)"
	else
		pf_rate=0
		echo "postfix: only $stored of $messages in Maildir after ${timeout}s"
	fi
	echo "postfix: stored $stored; still queued $queued"
	[ "$stored" -eq "$messages" ] && [ "$queued" -eq 0 ] || mismatch "postfix case $c: $messages acknowledged, $stored in Maildir, $queued queued"
	if [ "$pf_rate" != 0 ]; then
		echo "ratio ours/postfix: $(ratio "$ours_rate" "$pf_rate")x by Maildir (goal >= 4x); $(ratio "$ours_rate" "$pf_rate250")x by 250s"
	fi
	echo "$c|-s $s, inbound to Maildir|$ours_rate|$pf_rate250|$pf_rate|$(ratio "$ours_rate" "$pf_rate")|4" >>"$summary"
}

# start_sink OUT [SMTP-SINK OPTIONS...]: one smtp-sink on
# 127.0.0.1:$sink_port counting messages (-c) into $sink_out (OUT),
# unprivileged (-u nobody).
start_sink() {
	sink_out=$1
	shift
	smtp-sink -c -u nobody "$@" "127.0.0.1:$sink_port" 1000 >"$sink_out" 2>&1 &
	sink_pid=$!
	wait_port "$sink_port"
	sleep 0.2
}
# sink_count: messages the sink received so far (its last "mesg=" counter).
sink_count() { tail -c 200 "$sink_out" | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -n 1 | grep . || echo 0; }
# wait_sink N [SECONDS]: waits until the sink counted N messages (or
# SECONDS, default TIMEOUT); prints the time it did, or nothing.
wait_sink() {
	local deadline=$(($(date +%s) + ${2:-$timeout}))
	while [ "$(date +%s)" -lt "$deadline" ]; do
		if [ "$(sink_count)" -ge "$1" ]; then
			now
			return
		fi
		sleep 0.1
	done
}

# submit_run LABEL: runs smtpsubmit with the remaining arguments, waits for
# the sink and prints one line; sets run_rate.
submit_run() {
	local label=$1 t0 t1 tsink out
	shift
	t0=$(now)
	out=$("$work/smtpsubmit" -messages "$submit_messages" -sessions "$submit_sessions" -per-conn "$submit_per_conn" -size "$size" \
		-to someone@remote.test -timeout "${timeout}s" "$@") || true
	t1=$(now)
	local ok got
	ok=$(echo "$out" | sed -n 's/^ok=\([0-9]*\) .*/\1/p')
	if [ "${ok:-0}" -eq "$submit_messages" ]; then
		tsink=$(wait_sink "$submit_messages")
	else
		# A MISMATCH anyway, and the sink gets no more than that: no need
		# to wait TIMEOUT for the rest.
		wait_sink "${ok:-0}" >/dev/null
		tsink=
	fi
	sleep 1 # duplicates past the count would show now
	got=$(sink_count)
	echo "$label: smtpsubmit: $(echo "$out" | head -n 1)"
	echo "$out" | grep 'first error' || true
	if [ -n "$tsink" ]; then
		run_rate=$(rate "$submit_messages" "$t0" "$tsink")
		echo "$label: the sink got all $submit_messages after $(secs "$t0" "$tsink")s = $run_rate messages/s (end point: last message received by smtp-sink; last 250 to the client after $(secs "$t0" "$t1")s)"
	else
		run_rate=0
		echo "$label: the sink got only $got of $submit_messages within ${timeout}s"
	fi
	[ "${ok:-0}" -eq "$submit_messages" ] && [ "$got" -eq "$submit_messages" ] ||
		mismatch "$label: $submit_messages sent, ${ok:-0} acknowledged, $got received by the sink"
}

# start_dump_sink DIR: start_sink that also writes each message into a file
# of its own in DIR/dump (smtp-sink -d; the folder is nobody's, as the sink
# drops to nobody), for sig_check.
start_dump_sink() {
	mkdir -p "$1/dump"
	chown nobody "$1/dump"
	start_sink "$1/sink.out" -d "$1/dump/"
}

# dkim_sigs FILE: the DKIM-Signature fields in the header of the message
# that smtp-sink -d dumped into FILE, one line each, "a=ALG d=DOMAIN
# s=SELECTOR", sorted. Fields are unfolded and their tags split on ";",
# since a value's base64 (b=, bh=) may contain "a=" after a fold.
dkim_sigs() {
	awk '
	function sig(f,   n, t, i, a, d, sel) {
		if (tolower(f) !~ /^dkim-signature:/)
			return
		sub(/^[^:]*:/, "", f)
		gsub(/[ \t]/, "", f)
		n = split(f, t, ";")
		for (i = 1; i <= n; i++) {
			if (t[i] ~ /^a=/) a = substr(t[i], 3)
			else if (t[i] ~ /^d=/) d = substr(t[i], 3)
			else if (t[i] ~ /^s=/) sel = substr(t[i], 3)
		}
		print "a=" a " d=" d " s=" sel
	}
	{ sub(/\r$/, "") }
	/^[ \t]/ { h = h $0; next }
	{ sig(h); h = $0 }
	NF == 0 { exit }' "$1" | sort
}

# sig_check LABEL DIR SMTPSUBMIT-ARGS...: untimed proof that a server
# signs every message twice. smtpsubmit sends 2 messages to the running
# server, which relays them to the sink of start_dump_sink DIR; each must
# arrive, once, with exactly two DKIM-Signature fields: a=ed25519-sha256
# and a=rsa-sha256, both d=example.test. Stops the sink (so that its files
# are complete); MISMATCH otherwise.
sig_check() {
	local label=$1 d=$2 out ok f sigs n=0 good=0 shown=
	shift 2
	out=$("$work/smtpsubmit" -messages 2 -sessions 1 -per-conn 2 -size "$size" \
		-to someone@remote.test -timeout 60s "$@") || true
	ok=$(echo "$out" | sed -n 's/^ok=\([0-9]*\) .*/\1/p')
	if [ "${ok:-0}" -ne 2 ]; then
		echo "$out" | grep 'first error' || true
		mismatch "$label: signature check: 2 sent, ${ok:-0} acknowledged"
		stop_sink
		return
	fi
	[ -n "$(wait_sink 2 60)" ] || true
	sleep 0.5 # a duplicate would show now
	stop_sink
	for f in "$d/dump"/*; do
		[ -f "$f" ] || continue
		n=$((n + 1))
		sigs=$(dkim_sigs "$f")
		if [ "$(echo "$sigs" | wc -l)" -eq 2 ] &&
			echo "$sigs" | head -n 1 | grep -q '^a=ed25519-sha256 d=example.test s=' &&
			echo "$sigs" | tail -n 1 | grep -q '^a=rsa-sha256 d=example.test s='; then
			good=$((good + 1))
		fi
		[ -n "$shown" ] || shown=$(echo "$sigs" | sed 's/^/DKIM-Signature /' | paste -sd ';' - | sed 's/;/; /g')
	done
	echo "$label: signature check: $good of 2 messages (the sink got $n) signed twice; the first: ${shown:-no DKIM-Signature}"
	if [ "$n" -ne 2 ] || [ "$good" -ne 2 ]; then
		mismatch "$label: signature check: of 2 messages, the sink got $n, $good with an Ed25519 and an RSA signature of example.test"
	fi
}

# start_opendkim DIR ALG PORT: a private OpenDKIM milter (config, key and
# log in DIR) on 127.0.0.1:PORT only, signing mail from example.test with
# one new key: ALG rsa-sha256 (RSA-2048, selector rsa) or ed25519-sha256
# (RFC 8463, selector ed25519). One instance per algorithm, as OpenDKIM
# 2.11.0 (Debian 12) signs all of a message's signatures with its one
# SignatureAlgorithm: one instance with both keys in its KeyTable and
# MultipleSignatures yes fails on the Ed25519 key ("expecting an rsa
# key"), and a KeyTable field for the algorithm came only after that
# release. So Postfix calls two milters, as a Debian 12 admin must.
# Background no keeps it in the foreground, so $! is its PID and
# stop_opendkim stops exactly it. Syslog no keeps it out of the system log
# (and spares it a log line per message; set "Syslog yes" and "LogWhy yes"
# to see why it refuses a message). Started as root, it switches to UserID
# (opendkim, or nobody where there is no such user) after binding; the key
# is that user's, mode 600. RequireSafeKeys no, as the scratch folder is
# below /tmp, which others may write: OpenDKIM would refuse the key there.
start_opendkim() {
	local d=$1 alg=$2 port=$3 user=opendkim sel listens p
	id -u opendkim >/dev/null 2>&1 || user=nobody
	mkdir -p "$d"
	case $alg in
	rsa-sha256) sel=rsa && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/$sel.private" 2>/dev/null ;;
	ed25519-sha256) sel=ed25519 && openssl genpkey -algorithm ED25519 -out "$d/$sel.private" 2>/dev/null ;;
	esac
	chown "$user" "$d/$sel.private"
	chmod 600 "$d/$sel.private"
	echo "$sel._domainkey.example.test example.test:$sel:$d/$sel.private" >"$d/keytable"
	echo "*@example.test $sel._domainkey.example.test" >"$d/signingtable"
	cat >"$d/opendkim.conf" <<-EOF
		Mode s
		Socket inet:$port@127.0.0.1
		Background no
		Syslog no
		UserID $user
		KeyTable file:$d/keytable
		SigningTable refile:$d/signingtable
		SignatureAlgorithm $alg
		Canonicalization relaxed/relaxed
		OversignHeaders From,To,Cc,Subject,Date,Reply-To
		RequireSafeKeys no
	EOF
	opendkim -x "$d/opendkim.conf" >"$d/opendkim.log" 2>&1 &
	p=$!
	dkim_pids="$dkim_pids $p"
	if ! wait_port "$port"; then
		echo "OpenDKIM did not start; its output:" >&2
		cat "$d/opendkim.log" >&2 || true
		return 1
	fi
	listens=$(ss -Hltnp | grep "pid=$p," | awk '{print $4}' | sort -u | tr '\n' ' ')
	echo "opendkim ($alg): private instance, PID $p (user $(ps -o user= -p "$p")), config/key/log under $d, listening on: $listens"
	if [ "$listens" != "127.0.0.1:$port " ]; then
		echo "OpenDKIM listens on more than 127.0.0.1:$port" >&2
		return 1
	fi
}

submission() {
	local dir=$work/case3
	echo
	echo "=== case 3: submission of $submit_messages messages of $size bytes over $submit_sessions sessions ($submit_per_conn per connection) to someone@remote.test, relayed to smtp-sink ==="
	echo "ours:    STARTTLS + AUTH PLAIN (alice) on submission; queue relays to smarthost 127.0.0.1:$sink_port (tls none), max_per_domain 20"
	echo "postfix: STARTTLS, no AUTH (no SASL: clients are trusted by mynetworks = 127.0.0.0/8); relayhost = [127.0.0.1]:$sink_port"
	echo "         (Postfix's default destination concurrency limit is 20, hence our max_per_domain 20; ours signs twice, RSA-2048"
	echo "         and Ed25519; each of our AUTHs is a bcrypt check); Postfix once without DKIM, once with two OpenDKIM 2.11"
	echo "         milters (one algorithm each): RSA-2048 on 127.0.0.1:$dkim_port, Ed25519 on :$dkim_ed_port (milter_default_action = tempfail)"
	local sh="\n\t\t\tsmarthost 127.0.0.1:$sink_port {\n\t\t\t\ttls none\n\t\t\t}\n\t\t\tmax_per_domain 20"
	local -A rates
	mkdir -p "$dir"
	spread "$dir"
	for dkim in on ed25519 off; do
		if [ "$dkim" = on ]; then
			# On an instance of its own, so that the timed one starts fresh
			# and relays to a sink that only counts.
			mkdir -p "$dir/ours-check"
			ours_config "$submit_sessions" "$sh" >"$dir/ours-check/Caddyfile"
			start_dump_sink "$dir/ours-check"
			start_ours "$dir/ours-check"
			sig_check "ours (DKIM on)" "$dir/ours-check" -addr "127.0.0.1:$sub_port" -user alice@example.test -pass demo-alice \
				-ca-file "$dir/ours-check/data/caddy/pki/authorities/local/root.crt" -server-name mail.example.test
			stop_ours
		fi
		mkdir -p "$dir/ours-dkim-$dkim"
		case $dkim in
		on) ours_config "$submit_sessions" "$sh" >"$dir/ours-dkim-$dkim/Caddyfile" ;;
		ed25519) ours_config "$submit_sessions" "$sh\n\t\t\tdkim {\n\t\t\t\talgorithms ed25519\n\t\t\t}" >"$dir/ours-dkim-$dkim/Caddyfile" ;;
		off) ours_config "$submit_sessions" "$sh\n\t\t\tdkim off" >"$dir/ours-dkim-$dkim/Caddyfile" ;;
		esac
		start_sink "$dir/ours-dkim-$dkim/sink.out"
		start_ours "$dir/ours-dkim-$dkim"
		submit_run "ours (DKIM $dkim)" -addr "127.0.0.1:$sub_port" -user alice@example.test -pass demo-alice \
			-ca-file "$dir/ours-dkim-$dkim/data/caddy/pki/authorities/local/root.crt" -server-name mail.example.test
		local q
		q=$(find "$dir/ours-dkim-$dkim/data/queue/queue" -type f -not -name '*.state' 2>/dev/null | wc -l)
		echo "ours (DKIM $dkim): still queued $q"
		[ "$q" -eq 0 ] || mismatch "ours (DKIM $dkim): $q messages still queued"
		stop_ours
		stop_sink
		rates[$dkim]=$run_rate
	done

	mkdir -p "$dir/postfix"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
		-subj /CN=postfix.bench.test -addext subjectAltName=DNS:postfix.bench.test \
		-keyout "$dir/postfix/key.pem" -out "$dir/postfix/cert.pem" 2>/dev/null
	local -a pf_conf=("relayhost = [127.0.0.1]:$sink_port"
		"smtpd_tls_security_level = may" "smtpd_tls_cert_file = $dir/postfix/cert.pem"
		"smtpd_tls_key_file = $dir/postfix/key.pem")
	local -a pf_client=(-addr "127.0.0.1:$pf_port" -from alice@example.test
		-ca-file "$dir/postfix/cert.pem" -server-name postfix.bench.test)
	start_sink "$dir/postfix/sink.out"
	start_postfix "$dir/postfix/pf" "${pf_conf[@]}"
	submit_run "postfix" "${pf_client[@]}"
	local queued
	queued=$(pf_queued "$dir/postfix/pf")
	echo "postfix: still queued $queued"
	[ "$queued" -eq 0 ] || mismatch "postfix: $queued messages still queued"
	stop_postfix
	stop_sink
	local pf=$run_rate

	# Postfix + OpenDKIM. tempfail: a message a milter could not handle is
	# refused with 4xx, so none passes unsigned yet counted; the check
	# shows that the milters do sign. The same two OpenDKIM instances for
	# the check and the timed run; a Postfix instance each, as for ours.
	# Over TCP a lone message waits for delayed ACKs (with one session and
	# one milter, smtpsubmit's p50 was ~90 ms, ~6 ms over a unix socket),
	# but at 20 sessions the rate was the same as over unix sockets: the
	# milters' CPU (~3 ms a message each, even for Ed25519) is the limit.
	local milters="inet:127.0.0.1:$dkim_port, inet:127.0.0.1:$dkim_ed_port"
	local -a pf_milter=("smtpd_milters = $milters" "non_smtpd_milters = $milters"
		"milter_default_action = tempfail")
	start_opendkim "$dir/opendkim-rsa" rsa-sha256 "$dkim_port"
	start_opendkim "$dir/opendkim-ed25519" ed25519-sha256 "$dkim_ed_port"
	start_dump_sink "$dir/postfix-check"
	start_postfix "$dir/postfix-check/pf" "${pf_conf[@]}" "${pf_milter[@]}"
	sig_check "postfix+opendkim" "$dir/postfix-check" "${pf_client[@]}"
	stop_postfix
	mkdir -p "$dir/postfix-dkim"
	start_sink "$dir/postfix-dkim/sink.out"
	start_postfix "$dir/postfix-dkim/pf" "${pf_conf[@]}" "${pf_milter[@]}"
	submit_run "postfix+opendkim" "${pf_client[@]}"
	queued=$(pf_queued "$dir/postfix-dkim/pf")
	echo "postfix+opendkim: still queued $queued"
	[ "$queued" -eq 0 ] || mismatch "postfix+opendkim: $queued messages still queued"
	stop_postfix
	stop_sink
	stop_opendkim
	local pfd=$run_rate

	if [ "$pf" != 0 ]; then
		echo "ratio ours/postfix: $(ratio "${rates[on]}" "$pf")x with DKIM (RSA-2048 and Ed25519), $(ratio "${rates[ed25519]}" "$pf")x with Ed25519 only, $(ratio "${rates[off]}" "$pf")x without (goal >= 2x)"
	fi
	if [ "$pfd" != 0 ]; then
		echo "ratio ours/postfix+opendkim, both signing RSA-2048 and Ed25519: $(ratio "${rates[on]}" "$pfd")x (goal >= 2x)"
	fi
	echo "3|submission, DKIM on|${rates[on]}|-|$pf|$(ratio "${rates[on]}" "$pf")|2" >>"$summary"
	echo "3|submission, DKIM Ed25519 only|${rates[ed25519]}|-|$pf|$(ratio "${rates[ed25519]}" "$pf")|2" >>"$summary"
	echo "3|submission, DKIM off|${rates[off]}|-|$pf|$(ratio "${rates[off]}" "$pf")|2" >>"$summary"
	echo "3|submission, DKIM on vs Postfix+OpenDKIM|${rates[on]}|-|$pfd|$(ratio "${rates[on]}" "$pfd")|2" >>"$summary"
}

if ss -Hltn "sport = :25" | grep -q .; then
	echo "something (a system MTA?) listens on port 25: left alone; this benchmark uses its own ports"
fi
echo "machine: $(nproc) cores; $(postconf -d mail_version 2>/dev/null); Postfix: default_process_limit = 200 (default 100), so -s 100 is not capped"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other work on this machine skews every figure)"
echo "both: one fresh instance per case; message body $size bytes; every figure is messages/s from the first connection"
for c in $cases; do
	case $c in
	1) inbound 1 20 ;;
	2) inbound 2 100 ;;
	3) submission ;;
	esac
done

echo
echo "=== summary (messages/s) ==="
{
	echo "case|what|ours|postfix 250s|postfix done|ours/postfix|goal"
	while IFS='|' read -r c what o p250 p r g; do
		mark=below
		awk -v r="$r" -v g="$g" 'BEGIN { exit !(r + 0 >= g) }' && mark=met
		echo "$c|$what|$o|$p250|$p|${r}x|>= ${g}x $mark"
	done <"$summary"
} | column -t -s '|'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "postfix done = all in Maildir (cases 1, 2) or all received by smtp-sink (case 3); ours is the same end point"
[ "$status" -eq 0 ] || echo "MISMATCH: some acknowledged messages were not stored or received (see above)"
exit "$status"
