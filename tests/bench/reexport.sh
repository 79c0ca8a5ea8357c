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

BENCH=reexport
# shellcheck source=tests/bench/harness.sh
. "$ROOT/tests/bench/harness.sh"

[ "$(id -u)" -eq 0 ] || die "needs root (ganesha's VFS FSAL opens by handle; a tmpfs mount)"
for f in "$BUILD/daemon/clusterfs" "$BUILD/tools/clusterfs-agent-sim"; do
	[ -x "$f" ] || die "$f is missing; run: ninja -C $BUILD"
done
for c in ganesha.nfsd smbd smbpasswd smbclient nfs-cat fusermount3; do
	command -v "$c" >/dev/null || die "$c is not installed (tools/install-deps.sh)"
done
$PY -c 'import smbc' 2>/dev/null || die "python3-smbc is not installed (tools/install-deps.sh)"

bench_start
chmod 755 "$tmp"
bench_token
bench_start_sim "$NODES"
# probes every second, as a re-exported tree sees them in use
bench_write_config "$NODES" '{"interval_s": 1, "timeout_ms": 1000}'
bench_mount "$NODES"

files=(README config stats topology.json topology.dot metrics alerts)
for ((i = 1; i <= NODES; i++)); do
	for f in status health info address role tier capabilities reliability; do
		files+=("nodes/$(printf 'n%03d' "$i")/$f")
	done
done

# the same bytes on tmpfs
mkdir "$tmp/tmpfs"
mounts+=("$tmp/tmpfs")
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
