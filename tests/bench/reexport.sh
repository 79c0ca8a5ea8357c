#!/bin/bash
# Re-export benchmark: files per second read through nfs-ganesha (VFS FSAL, NFSv4) with
# libnfs's nfs-cat, and through Samba with libsmbclient (one session) and smbclient (one
# process per file), from a clusterfs mount of simulated nodes and, beside it, from a
# tmpfs directory holding the same files' bytes, exported the same way (the
# configurations of tests/integration/reexport.py, as README shows them). Not part of the
# test suite; see tests/bench/README.md.
#
# Usage: tests/bench/reexport.sh [NODES [ROUNDS]]   (default 8 nodes, 5 rounds)
# Exit status 0 when every read through clusterfs came back complete within
# READ_TIMEOUT_S (default 2 s), 1 otherwise (the failed column counts them).
# Environment: CLUSTERFS_BUILD (default: ./build), KEEP=1 keeps the temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${CLUSTERFS_BUILD:-$ROOT/build}
NODES=${1:-8}
export ROUNDS=${2:-5}
PY=/usr/bin/python3
HELPER=$ROOT/tests/integration/reexport.py

die() {
	echo "reexport: $*" >&2
	if [ -n "${tmp:-}" ]; then
		for log in "$tmp"/*.log; do
			[ -s "$log" ] && { echo "--- $log" && tail -5 "$log"; } >&2
		done
	fi
	exit 1
}

[ "$(id -u)" -eq 0 ] || die "needs root (ganesha's VFS FSAL opens by handle; a tmpfs mount)"
for f in "$BUILD/daemon/clusterfs" "$BUILD/tools/clusterfs-agent-sim"; do
	[ -x "$f" ] || die "$f is missing; run: ninja -C $BUILD"
done
for c in ganesha.nfsd smbd smbpasswd smbclient nfs-cat fusermount3; do
	command -v "$c" >/dev/null || die "$c is not installed (tools/install-deps.sh)"
done
$PY -c 'import smbc' 2>/dev/null || die "python3-smbc is not installed (tools/install-deps.sh)"

tmp=$(mktemp -d /tmp/clusterfs-bench-reexport-XXXXXX)
chmod 755 "$tmp"
pids=()
mounts=()

# Stops what this script started, by PID, newest first; then unmounts what is left.
cleanup() {
	local i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null || true
	done
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		wait "${pids[i]}" 2>/dev/null || true
	done
	for m in "${mounts[@]}"; do
		if mountpoint -q "$m"; then
			case "$m" in
			*/tmpfs) umount "$m" || true ;;
			*) fusermount3 -u -z "$m" || true ;;
			esac
		fi
	done
	if [ "${KEEP:-0}" = 1 ]; then
		echo "reexport: kept $tmp" >&2
	else
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # SECONDS WHAT COMMAND...
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@" 2>/dev/null; do
		[ $SECONDS -lt $deadline ] || die "timed out waiting for $what"
		sleep 0.05
	done
}

alive_and() { # PID COMMAND...: fails at once (exit) when PID died
	local pid=$1
	shift
	kill -0 "$pid" 2>/dev/null || die "process $pid exited early; see the logs in $tmp (KEEP=1)"
	"$@"
}

printf 'bench-%s\n' "$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" >"$tmp/token"
chmod 600 "$tmp/token"

for _ in 1 2 3 4 5 6 7 8 9 10; do
	base=$((10000 + RANDOM % 20000))
	"$BUILD/tools/clusterfs-agent-sim" --base-port "$base" --count "$NODES" \
		--token-file "$tmp/token" 2>>"$tmp/sim.log" &
	sim=$!
	sleep 0.1
	if kill -0 "$sim" 2>/dev/null; then
		pids+=("$sim")
		break
	fi
	wait "$sim" || true
	sim=
done
[ -n "${sim:-}" ] || die "no free ports for the simulator; see $tmp/sim.log"

# probes every second, as a re-exported tree sees them in use
{
	printf '{"cluster": "bench-reexport", "auth": {"token_file": "%s"},\n' "$tmp/token"
	printf ' "probe": {"interval_s": 1, "timeout_ms": 1000},\n'
	printf ' "hosts": {'
	sep=
	for ((i = 0; i < NODES; i++)); do
		printf '%s"n%03d": {"host": "127.0.0.1", "role": "worker", ' "$sep" $((i + 1))
		printf '"services": {"agent": {"port": %d}}}' $((base + i))
		sep=', '
	done
	printf '}}\n'
} >"$tmp/hosts.json"

mkdir "$tmp/mnt" "$tmp/tmpfs"
mounts+=("$tmp/mnt" "$tmp/tmpfs")
"$BUILD/daemon/clusterfs" -f -s "$tmp/state" -c "$tmp/hosts.json" "$tmp/mnt" \
	2>>"$tmp/clusterfs.log" &
cfs=$!
pids+=("$cfs")
wait_for 10 "the clusterfs mount" alive_and "$cfs" mountpoint -q "$tmp/mnt"
wait_for 10 "the first probe round" alive_and "$cfs" \
	grep -q "\"reachable\": $NODES" "$tmp/mnt/stats"

files=(README config stats topology.json topology.dot metrics alerts)
for ((i = 1; i <= NODES; i++)); do
	for f in status health info address role tier capabilities reliability; do
		files+=("nodes/$(printf 'n%03d' "$i")/$f")
	done
done

# the same bytes on tmpfs
mount -t tmpfs -o size=64m,mode=755 tmpfs "$tmp/tmpfs"
for f in "${files[@]}"; do
	mkdir -p "$tmp/tmpfs/$(dirname "$f")"
	cat "$tmp/mnt/$f" >"$tmp/tmpfs/$f"
done

export WORK=$tmp
echo "reexport: ${#files[@]} files, $ROUNDS rounds (smbclient: 1), $NODES simulated nodes" >&2
$PY "$HELPER" bench "$tmp/tmpfs" tmpfs "${files[@]}" >"$tmp/tmpfs.out" 2>>"$tmp/helper.log" ||
	die "the tmpfs run failed; see $tmp/helper.log"
$PY "$HELPER" bench "$tmp/mnt" clusterfs "${files[@]}" >"$tmp/clusterfs.out" 2>>"$tmp/helper.log" ||
	die "the clusterfs run failed; see $tmp/helper.log"

printf '%-13s %13s %13s %6s %7s %13s %6s\n' client "tmpfs files/s" "clusterfs" ratio failed \
	"clusterfs ok" ratio
status=0
while read -r _ client t_rate _; do
	read -r _ _ c_rate c_failed c_ok < <(grep " $client " "$tmp/clusterfs.out")
	ratio=$(awk -v c="$c_rate" -v t="$t_rate" 'BEGIN { printf "%.2f", c / t }')
	ok_ratio=$(awk -v c="$c_ok" -v t="$t_rate" 'BEGIN { printf "%.2f", c / t }')
	printf '%-13s %13s %13s %6s %7s %13s %6s\n' "$client" "$t_rate" "$c_rate" "$ratio" \
		"$c_failed" "$c_ok" "$ok_ratio"
	[ "$c_failed" -eq 0 ] || status=1
done <"$tmp/tmpfs.out"
if [ $status -ne 0 ]; then
	echo "reexport: some reads through clusterfs hung or came back short (issue 10 item 1)" >&2
fi
exit $status
