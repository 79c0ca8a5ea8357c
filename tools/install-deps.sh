#!/usr/bin/env bash
# Installs the Debian 12 packages clusterfs needs to build, run and test.
set -euo pipefail
pkgs=(meson ninja-build pkg-config gcc libfuse3-dev fuse3 libcurl4-openssl-dev libjansson-dev
	libsqlite3-dev libmicrohttpd-dev python3 python3-pytest curl iproute2 util-linux
	procps clang-format libgnutls28-dev tcpdump)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-deps: need root to install: ${missing[*]} (run with sudo)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${missing[@]}" >/dev/null
fi
