#!/usr/bin/env bash
# Installs the Debian 12 packages clusterfs needs to build, run and test: the build, the man
# pages (scdoc, man-db), the Debian packages (debhelper, dpkg-dev, fakeroot, lintian), the
# checks of the installed units (systemd-analyze) and of /cluster/metrics (promtool, from
# prometheus), and the browser test of /cluster/dashboard.html (headless chromium).
set -euo pipefail
pkgs=(meson ninja-build pkg-config gcc libfuse3-dev fuse3 libcurl4-openssl-dev libjansson-dev
	libsqlite3-dev libmicrohttpd-dev python3 python3-pytest curl iproute2 util-linux
	procps clang-format libgnutls28-dev tcpdump scdoc man-db groff-base debhelper dpkg-dev
	fakeroot lintian adduser systemd prometheus chromium)
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
	rest=()
	for p in "${missing[@]}"; do
		[ "$p" = prometheus ] || [ "$p" = chromium ] || rest+=("$p")
	done
	[ ${#rest[@]} -eq 0 ] || apt-get install -y -qq "${rest[@]}" >/dev/null
	if printf '%s\n' "${missing[@]}" | grep -qx chromium; then
		# headless only: not the desktop integration it recommends
		apt-get install -y -qq --no-install-recommends chromium >/dev/null
	fi
	if printf '%s\n' "${missing[@]}" | grep -qx prometheus; then
		# only its promtool is used: not the recommended node exporter, not the server
		apt-get install -y -qq --no-install-recommends prometheus >/dev/null
		if [ -d /run/systemd/system ]; then
			systemctl disable --now prometheus.service >/dev/null 2>&1 || true
			echo "install-deps: installed prometheus for promtool; disabled its server" >&2
		fi
	fi
fi
