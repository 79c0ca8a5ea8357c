# shellcheck shell=bash
# The shell benchmarks' plumbing (cached.sh, reexport.sh), as harness.py is the Python
# ones': a temporary directory, what is started recorded in pids and mounts and stopped by
# PID at exit (newest first, then what is left mounted is unmounted), the token, the
# simulator, the config and the clusterfs mount. Sourced, with BENCH set to the bench's
# name and ROOT and BUILD to the checkout and the build directory.

die() {
	echo "$BENCH: $*" >&2
	if [ -n "${tmp:-}" ]; then
		for log in "$tmp"/*.log; do
			[ -s "$log" ] && { echo "--- $log" && tail -5 "$log"; } >&2
		done
	fi
	exit 1
}

# Makes $tmp and arms the cleanup; KEEP=1 keeps $tmp.
bench_start() {
	tmp=$(mktemp -d "/tmp/clusterfs-bench-$BENCH-XXXXXX")
	pids=()
	mounts=()
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
}

# Stops what this script started, by PID, newest first; then unmounts what is left (a
# tmp/tmpfs mount with umount, the FUSE ones with fusermount3).
bench_cleanup() {
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
		echo "$BENCH: kept $tmp" >&2
	else
		rm -rf "$tmp"
	fi
}

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

# $tmp/token: a new bearer token, mode 0600.
bench_token() {
	printf 'bench-%s\n' "$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" >"$tmp/token"
	chmod 600 "$tmp/token"
}

# One simulator for NODES nodes on consecutive ports from $base, below the ephemeral
# range; another base when that one is taken. Sets base and sim.
bench_start_sim() { # NODES
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		base=$((10000 + RANDOM % 20000))
		"$BUILD/tools/clusterfs-agent-sim" --base-port "$base" --count "$1" \
			--token-file "$tmp/token" 2>>"$tmp/sim.log" &
		sim=$!
		sleep 0.1
		if kill -0 "$sim" 2>/dev/null; then
			pids+=("$sim")
			return
		fi
		wait "$sim" || true
		sim=
	done
	die "no free ports for the simulator; see $tmp/sim.log"
}

# $tmp/hosts.json for the simulator's NODES nodes (n001...) with the probe section PROBE.
bench_write_config() { # NODES PROBE
	{
		printf '{"cluster": "bench-%s", "auth": {"token_file": "%s"},\n' "$BENCH" \
			"$tmp/token"
		printf ' "probe": %s,\n' "$2"
		printf ' "hosts": {'
		local sep='' i
		for ((i = 0; i < $1; i++)); do
			printf '%s"n%03d": {"host": "127.0.0.1", "role": "worker", ' "$sep" $((i + 1))
			printf '"services": {"agent": {"port": %d}}}' $((base + i))
			sep=', '
		done
		printf '}}\n'
	} >"$tmp/hosts.json"
}

# Mounts clusterfs on $tmp/mnt with $tmp/hosts.json and waits for the first probe round
# of NODES nodes. Sets cfs.
bench_mount() { # NODES
	mkdir "$tmp/mnt"
	mounts+=("$tmp/mnt")
	"$BUILD/daemon/clusterfs" -f -s "$tmp/state" -c "$tmp/hosts.json" "$tmp/mnt" \
		2>>"$tmp/clusterfs.log" &
	cfs=$!
	pids+=("$cfs")
	wait_for 10 "the clusterfs mount" alive_and "$cfs" mountpoint -q "$tmp/mnt"
	wait_for 10 "the first probe round" alive_and "$cfs" \
		grep -q "\"reachable\": $1" "$tmp/mnt/stats"
}
