#!/bin/bash
# Cached-path benchmark: stat + open + read + close of small files, single thread, on a
# clusterfs mount whose data is always fresh (no probe is ever waited for), beside the
# same loop on the /hello file of libfuse's hello_ll example. Goal: clusterfs >= 0.8x
# hello_ll. Not part of the test suite; see tests/bench/README.md.
#
# Usage: tests/bench/cached.sh [SECONDS_PER_RUN [PAIRS]]   (default 2 s, 5 pairs)
# Each pair runs hello_ll then clusterfs back to back; the ratio reported is the median of
# the pairs' ratios, which is steadier than a ratio of medians on a busy machine.
# Environment: CLUSTERFS_BUILD (default: ./build), KEEP=1 keeps the temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${CLUSTERFS_BUILD:-$ROOT/build}
RUN_S=${1:-2}
REPEAT=${2:-5}
HELLO_SRC=/usr/share/doc/libfuse3-dev/examples/hello_ll.c
NODES=4

die() {
	echo "cached: $*" >&2
	if [ -n "${tmp:-}" ]; then
		for log in "$tmp"/*.log; do
			[ -s "$log" ] && { echo "--- $log" && tail -5 "$log"; } >&2
		done
	fi
	exit 1
}

for f in "$BUILD/daemon/clusterfs" "$BUILD/tools/clusterfs-agent-sim"; do
	[ -x "$f" ] || die "$f is missing; run: ninja -C $BUILD"
done
[ -r "$HELLO_SRC" ] || die "$HELLO_SRC is missing; install libfuse3-dev"
command -v fusermount3 >/dev/null || die "fusermount3 is not installed"
[ -r /dev/fuse ] && [ -w /dev/fuse ] || die "cannot use /dev/fuse"

tmp=$(mktemp -d /tmp/clusterfs-bench-cached-XXXXXX)
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
			fusermount3 -u -z "$m" || true
		fi
	done
	if [ "${KEEP:-0}" = 1 ]; then
		echo "cached: kept $tmp" >&2
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

echo "cached: building statread and hello_ll in $tmp" >&2
cc -O2 -Wall -o "$tmp/statread" "$ROOT/tests/bench/statread.c"
cp "$HELLO_SRC" "$tmp/hello_ll.c"
# shellcheck disable=SC2046
cc -O2 -o "$tmp/hello_ll" "$tmp/hello_ll.c" $(pkg-config --cflags --libs fuse3)

umask 077
printf 'bench-%s\n' "$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" >"$tmp/token"

# A few simulated nodes, no delay: they are probed once at mount and never again.
for attempt in 1 2 3 4 5 6 7 8 9 10; do
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

# interval_s and max_age_ms of an hour: status never waits for a probe, every file is
# answered from memory. This is the cached path.
{
	printf '{"cluster": "bench-cached", "auth": {"token_file": "%s"},\n' "$tmp/token"
	printf ' "probe": {"interval_s": 3600, "max_age_ms": 3600000, "timeout_ms": 2000,\n'
	printf '           "stale_after_s": 7200, "offline_after_s": 7200},\n'
	printf ' "hosts": {'
	sep=
	for ((i = 0; i < NODES; i++)); do
		printf '%s"n%03d": {"host": "127.0.0.1", "role": "worker", ' "$sep" $((i + 1))
		printf '"services": {"agent": {"port": %d}}}' $((base + i))
		sep=', '
	done
	printf '}}\n'
} >"$tmp/hosts.json"

mkdir "$tmp/mnt" "$tmp/hello"
mounts+=("$tmp/mnt" "$tmp/hello")
"$BUILD/daemon/clusterfs" -f -s "$tmp/state" -c "$tmp/hosts.json" "$tmp/mnt" \
	2>>"$tmp/clusterfs.log" &
cfs=$!
pids+=("$cfs")
wait_for 10 "the clusterfs mount" alive_and "$cfs" mountpoint -q "$tmp/mnt"
wait_for 10 "the first probe round" alive_and "$cfs" \
	grep -q "\"reachable\": $NODES" "$tmp/mnt/stats"

"$tmp/hello_ll" -f "$tmp/hello" 2>>"$tmp/hello_ll.log" &
hello=$!
pids+=("$hello")
wait_for 10 "the hello_ll mount" alive_and "$hello" mountpoint -q "$tmp/hello"

files=()
for ((i = 1; i <= NODES; i++)); do
	for f in status address role; do
		files+=("$tmp/mnt/nodes/$(printf 'n%03d' "$i")/$f")
	done
done
cat "${files[@]}" >/dev/null || die "cannot read the clusterfs files"

median() { sort -n | sed -n "$(((REPEAT + 1) / 2))p"; }

declare -A res
ratios=()
for ((r = 1; r <= REPEAT; r++)); do
	res[hello.$r]=$("$tmp/statread" "$RUN_S" "$tmp/hello/hello")
	res[cfs.$r]=$("$tmp/statread" "$RUN_S" "${files[@]}")
	echo "cached: pair $r: hello_ll: ${res[hello.$r]}" >&2
	echo "cached: pair $r: clusterfs: ${res[cfs.$r]}" >&2
	ratios+=("$(awk '{print $2}' <<<"${res[cfs.$r]}") $(awk '{print $2}' <<<"${res[hello.$r]}")")
done

field() { # SIDE FIELD: the median of one field over the runs
	local r
	for ((r = 1; r <= REPEAT; r++)); do
		awk -v k="$2" '{for (i = 1; i < NF; i++) if ($i == k) print $(i + 1)}' \
			<<<"${res[$1.$r]}"
	done | median
}

pair_ratios=$(for p in "${ratios[@]}"; do awk '{printf "%.2f\n", $1 / $2}' <<<"$p"; done)
ratio=$(median <<<"$pair_ratios")
met=$(awk -v r="$ratio" 'BEGIN {print (r >= 0.8) ? "met" : "NOT met"}')

echo
echo "cached path: stat + open + read to EOF + close, 1 thread, $REPEAT pairs of ${RUN_S} s;"
echo "medians (each column on its own)"
printf '%-10s %10s %9s %9s %9s %9s %12s\n' "fs" "ops/s" "stat us" "open us" "read us" \
	"close us" "reads/op"
for side in hello cfs; do
	name=hello_ll
	[ $side = cfs ] && name=clusterfs
	printf '%-10s %10s %9s %9s %9s %9s %12s\n' "$name" "$(field $side ops_per_s)" \
		"$(field $side stat_us)" "$(field $side open_us)" "$(field $side read_us)" \
		"$(field $side close_us)" "$(field $side reads_per_op)"
done
echo "clusterfs / hello_ll per pair: $(tr '\n' ' ' <<<"$pair_ratios")"
echo "clusterfs / hello_ll = $ratio, median of the pairs (goal >= 0.80: $met)"
[ "$met" = met ]
