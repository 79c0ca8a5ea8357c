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

BENCH=cached
# shellcheck source=tests/bench/harness.sh
. "$ROOT/tests/bench/harness.sh"

for f in "$BUILD/daemon/clusterfs" "$BUILD/tools/clusterfs-agent-sim"; do
	[ -x "$f" ] || die "$f is missing; run: ninja -C $BUILD"
done
[ -r "$HELLO_SRC" ] || die "$HELLO_SRC is missing; install libfuse3-dev"
command -v fusermount3 >/dev/null || die "fusermount3 is not installed"
[ -r /dev/fuse ] && [ -w /dev/fuse ] || die "cannot use /dev/fuse"

bench_start

echo "cached: building statread and hello_ll in $tmp" >&2
cc -O2 -Wall -o "$tmp/statread" "$ROOT/tests/bench/statread.c"
cp "$HELLO_SRC" "$tmp/hello_ll.c"
# shellcheck disable=SC2046
cc -O2 -o "$tmp/hello_ll" "$tmp/hello_ll.c" $(pkg-config --cflags --libs fuse3)

umask 077
bench_token

# A few simulated nodes, no delay: they are probed once at mount and never again.
bench_start_sim "$NODES"

# interval_s and max_age_ms of an hour: status never waits for a probe, every file is
# answered from memory. This is the cached path.
bench_write_config "$NODES" '{"interval_s": 3600, "max_age_ms": 3600000, "timeout_ms": 2000,
           "stale_after_s": 7200, "offline_after_s": 7200}'
bench_mount "$NODES"

mkdir "$tmp/hello"
mounts+=("$tmp/hello")
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
