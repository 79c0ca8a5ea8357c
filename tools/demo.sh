#!/usr/bin/env bash
# The one-node demo: builds clusterfs, starts an agent for this machine, mounts the built-in
# default cluster and shows the tree. Runs as root: started by root directly, or by a user
# through sudo (a user without sudo rights gets sudo's prompt or refusal).
#   sudo tools/demo.sh [MOUNTPOINT]   build, start, mount, show (default /tmp/cluster); as root
#                                     without sudo the same: tools/demo.sh [MOUNTPOINT]
#   sudo tools/demo.sh stop           unmount, stop the daemon and the agent it started
# CLUSTERFS_DEMO_PORT picks the agent's port (default 8768), CLUSTERFS_DEMO_DIR where its pids
# and logs go (default /run/clusterfs-demo), CLUSTERFS_BUILD the build directory (build). The
# demo task runs as the user who ran sudo, or as nobody when root ran the demo directly.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null || {
		echo "demo.sh: run it as root (sudo is not installed)" >&2
		exit 1
	}
	exec sudo -- "$0" "$@"
fi
# one place for the demo's pids and logs however root got here (sudo resets the environment)
run_dir=/run/clusterfs-demo
[ -d /run ] && [ -w /run ] || run_dir=/tmp/clusterfs-demo
run_dir=${CLUSTERFS_DEMO_DIR:-$run_dir}
port=${CLUSTERFS_DEMO_PORT:-8768}
build=${CLUSTERFS_BUILD:-build}

# Stops pid (if it is still the program named) and waits for it to end.
stop_pid() {
	local pidfile=$1 name=$2 pid
	[ -f "$pidfile" ] || return 0
	pid=$(cat "$pidfile")
	if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 50); do
			[ -d "/proc/$pid" ] || break
			sleep 0.1
		done
		if [ -d "/proc/$pid" ]; then
			kill -KILL "$pid" 2>/dev/null || true
		fi
		echo "stopped $name (pid $pid)"
	fi
	rm -f "$pidfile"
}

if [ "${1:-}" = "stop" ]; then
	if [ -f "$run_dir/mountpoint" ]; then
		m=$(cat "$run_dir/mountpoint")
		if mountpoint -q "$m"; then
			# lazily when busy (a shell inside it): it goes once they leave
			fusermount3 -u "$m" 2>/dev/null || fusermount3 -u -z "$m"
			echo "unmounted $m"
		fi
	fi
	stop_pid "$run_dir/daemon.pid" clusterfs
	stop_pid "$run_dir/agent.pid" clusterfs-agent
	rm -rf "$run_dir"
	exit 0
fi

mnt=${1:-/tmp/cluster}
tools/install-deps.sh
[ -d "$build" ] || meson setup "$build" >/dev/null
ninja -C "$build" >/dev/null
mkdir -p "$run_dir" "$mnt"
chmod 0700 "$run_dir"

# The token the default config reads: ~/.config/clusterfs/token (mode 0600), root's.
token=${CLUSTERFS_TOKEN_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/clusterfs/token}
if [ ! -s "$token" ]; then
	mkdir -p "$(dirname "$token")"
	(umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$token")
	echo "created a fresh token in $token"
fi

if [ -f "$run_dir/agent.pid" ] && [ "$(cat "/proc/$(cat "$run_dir/agent.pid")/comm" 2>/dev/null)" = clusterfs-agent ]; then
	echo "agent already running (pid $(cat "$run_dir/agent.pid"))"
else
	"$build/tools/agent/clusterfs-agent" --listen "127.0.0.1:$port" --token-file "$token" \
		--state-dir "$run_dir/agent-state" >"$run_dir/agent.log" 2>&1 &
	echo $! >"$run_dir/agent.pid"
	for _ in $(seq 100); do
		grep -q "listening on " "$run_dir/agent.log" && break
		kill -0 "$(cat "$run_dir/agent.pid")" 2>/dev/null || {
			cat "$run_dir/agent.log" >&2
			echo "demo.sh: the agent did not start (port $port taken? set CLUSTERFS_DEMO_PORT)" >&2
			rm -f "$run_dir/agent.pid"
			exit 1
		}
		sleep 0.1
	done
	echo "agent listening on 127.0.0.1:$port (pid $(cat "$run_dir/agent.pid"), log $run_dir/agent.log)"
fi

if ! mountpoint -q "$mnt"; then
	# in the foreground, in the background: its pid is known and its log is a file
	CLUSTERFS_DEFAULT_AGENT="127.0.0.1:$port" CLUSTERFS_TOKEN_FILE="$token" \
		"$build/daemon/clusterfs" -f -s "$run_dir/state" "$mnt" >"$run_dir/clusterfs.log" 2>&1 &
	echo $! >"$run_dir/daemon.pid"
	echo "$mnt" >"$run_dir/mountpoint"
	for _ in $(seq 100); do
		mountpoint -q "$mnt" && break
		kill -0 "$(cat "$run_dir/daemon.pid")" 2>/dev/null || {
			cat "$run_dir/clusterfs.log" >&2
			exit 1
		}
		sleep 0.1
	done
fi
echo "mounted the cluster on $mnt (log $run_dir/clusterfs.log)"
node=$(ls "$mnt/nodes" | head -n 1)
set -x
ls -l "$mnt"
ls "$mnt/nodes/$node"
cat "$mnt/nodes/$node/status"
cat "$mnt/nodes/$node/health"
cat "$mnt/stats"
{ set +x; } 2>/dev/null
# A task, submitted as the user who ran sudo (or nobody): it runs as that user, not as root.
user=${SUDO_USER:-}
[ -n "$user" ] && [ "$user" != root ] || user=nobody
task=demo-$(date +%s)-$$
echo "+ (as $user) echo '{\"cmd\": \"id -un; uname -n\", \"cwd\": \"/\"}' > $mnt/tasks/new/$task.json"
runuser -u "$user" -- sh -c "echo '{\"cmd\": \"id -un; uname -n\", \"cwd\": \"/\"}' >'$mnt/tasks/new/$task.json' &&
	cat '$mnt/tasks/$task/wait' '$mnt/tasks/$task/stdout'"
echo
echo "The demo's pids and logs: $run_dir"
if [ -n "${SUDO_USER:-}" ]; then
	echo "Explore $mnt (start with: cat $mnt/README). Stop with: sudo tools/demo.sh stop"
else
	echo "Explore $mnt (start with: cat $mnt/README). Stop with: tools/demo.sh stop"
fi
