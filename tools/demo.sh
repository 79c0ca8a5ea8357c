#!/usr/bin/env bash
# The one-node demo: builds clusterfs, starts an agent for this machine with a fresh
# token, mounts the built-in default cluster and shows the tree.
#   sudo tools/demo.sh [MOUNTPOINT]     build, start, mount, show (default /tmp/cluster)
#   sudo tools/demo.sh stop             unmount and stop the agent it started
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=${XDG_RUNTIME_DIR:-/tmp}/clusterfs-demo
mnt=${1:-/tmp/cluster}

if [ "${1:-}" = "stop" ]; then
	if [ -f "$run_dir/mountpoint" ]; then
		m=$(cat "$run_dir/mountpoint")
		fusermount3 -u "$m" 2>/dev/null && echo "unmounted $m" || true
	fi
	if [ -f "$run_dir/agent.pid" ]; then
		kill "$(cat "$run_dir/agent.pid")" 2>/dev/null && echo "stopped the agent" || true
	fi
	rm -rf "$run_dir"
	exit 0
fi

tools/install-deps.sh
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null
mkdir -p "$run_dir" "$mnt"

# The token the default config reads: ~/.config/clusterfs/token (mode 0600).
token=${CLUSTERFS_TOKEN_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/clusterfs/token}
if [ ! -s "$token" ]; then
	mkdir -p "$(dirname "$token")"
	(umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$token")
	echo "created a fresh token in $token"
fi

if [ -f "$run_dir/agent.pid" ] && kill -0 "$(cat "$run_dir/agent.pid")" 2>/dev/null; then
	echo "agent already running (pid $(cat "$run_dir/agent.pid"))"
else
	build/tools/agent/clusterfs-agent --listen 127.0.0.1:8768 --token-file "$token" \
		--state-dir "$run_dir/agent-state" >"$run_dir/agent.log" 2>&1 &
	echo $! >"$run_dir/agent.pid"
	for _ in $(seq 50); do
		curl -s -o /dev/null http://127.0.0.1:8768/ && break
		kill -0 "$(cat "$run_dir/agent.pid")" 2>/dev/null || {
			cat "$run_dir/agent.log" >&2
			exit 1
		}
		sleep 0.1
	done
	echo "agent listening on 127.0.0.1:8768 (pid $(cat "$run_dir/agent.pid"), log $run_dir/agent.log)"
fi

if ! mountpoint -q "$mnt"; then
	build/daemon/clusterfs -s "$run_dir/state" "$mnt"
	echo "$mnt" >"$run_dir/mountpoint"
fi
echo "mounted the cluster on $mnt"
node=$(ls "$mnt/nodes" | head -n 1)
set -x
ls -l "$mnt"
ls "$mnt/nodes/$node"
cat "$mnt/nodes/$node/status"
cat "$mnt/nodes/$node/health"
cat "$mnt/stats"
{ set +x; } 2>/dev/null
# A task, submitted as the user who ran sudo: it runs as that user, not as root.
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
	task=demo-$(date +%s)
	echo "+ (as $SUDO_USER) echo '{\"cmd\": \"id -un; uname -n\"}' > $mnt/tasks/new/$task.json"
	runuser -u "$SUDO_USER" -- sh -c "echo '{\"cmd\": \"id -un; uname -n\"}' >'$mnt/tasks/new/$task.json' &&
		cat '$mnt/tasks/$task/wait' '$mnt/tasks/$task/stdout'"
fi
echo
echo "Explore $mnt (start with: cat $mnt/README). Stop with: sudo tools/demo.sh stop"
