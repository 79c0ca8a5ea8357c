#!/usr/bin/env bash
# Installs the Debian 12 packages clusterfs needs to build, run and test: the build, the man
# pages (scdoc, man-db), the Debian packages (debhelper, dpkg-dev, fakeroot, lintian), the
# checks of the installed units (systemd-analyze) and of /cluster/metrics (promtool, from
# prometheus), and the re-export tests (nfs-ganesha with its VFS FSAL, libnfs's nfs-cat and
# nfs-ls, Samba with the catia VFS module, smbclient, python3-smbc; their services are not
# enabled: the tests start their own on loopback), and the Slurm cluster the Slurm tests
# start (slurmctld, slurmd, slurmrestd, the JWT plugin, the clients, munge; likewise).
# And the browser test of /cluster/dashboard.html (headless chromium), numpy for the
# federated-averaging recipe (tools/fedavg) and its test, and LAN discovery
# (libavahi-client to build it; avahi-daemon, dbus-daemon and avahi-browse for its test,
# which starts its own avahi-daemons on their own buses: the system's stays off).
set -euo pipefail
pkgs=(meson ninja-build pkg-config gcc libfuse3-dev fuse3 libcurl4-openssl-dev libjansson-dev
	libsqlite3-dev libmicrohttpd-dev python3 python3-pytest curl iproute2 util-linux
	procps clang-format libgnutls28-dev libssl-dev tcpdump scdoc man-db groff-base debhelper dpkg-dev
	fakeroot lintian adduser systemd prometheus iptables nfs-ganesha nfs-ganesha-vfs libnfs-utils
	samba samba-vfs-modules smbclient python3-smbc slurmctld slurmd slurmrestd slurm-client
	slurm-wlm-jwt-plugin munge chromium python3-numpy libavahi-client-dev avahi-daemon avahi-utils
	dbus-daemon)
# installed without recommends: not rpcbind, winbind, the NFS kernel tools, the node exporter,
# libnss-mdns
norec=(prometheus iptables nfs-ganesha nfs-ganesha-vfs samba samba-vfs-modules slurmctld slurmd
	slurmrestd slurm-client slurm-wlm-jwt-plugin munge chromium avahi-daemon avahi-utils)
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
	rest=() bare=()
	for p in "${missing[@]}"; do
		if [[ " ${norec[*]} " == *" $p "* ]]; then bare+=("$p"); else rest+=("$p"); fi
	done
	[ ${#rest[@]} -eq 0 ] || apt-get install -y -qq "${rest[@]}" >/dev/null
	if [ ${#bare[@]} -gt 0 ]; then
		apt-get install -y -qq --no-install-recommends "${bare[@]}" >/dev/null
		if [ -d /run/systemd/system ]; then
			# only promtool is used from prometheus, and the tests run their own ganesha,
			# smbd, munge and Slurm daemons: the packages' servers stay off
			for u in prometheus nfs-ganesha smbd nmbd samba-ad-dc munge slurmctld slurmd \
				slurmrestd avahi-daemon; do
				systemctl disable --now "$u.service" >/dev/null 2>&1 || true
			done
			systemctl disable --now avahi-daemon.socket >/dev/null 2>&1 || true
			echo "install-deps: disabled the servers of ${bare[*]}" >&2
		fi
	fi
fi
