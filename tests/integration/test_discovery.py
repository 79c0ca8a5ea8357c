"""LAN discovery (DNS-SD through avahi): a control plane with "join": {"announce": true}
publishes _clusterfs-join._tcp, `clusterfs-agent --join auto` finds it and joins, and
`--announce` publishes the agent as _clusterfs._tcp.

Real avahi, on a LAN this module makes: a veth pair on 10.252.X.0/30 between the root
namespace (the control plane) and a network namespace (the agents). Each side has its own
avahi-daemon (--no-drop-root --no-chroot, only the veth in allow-interfaces, its runtime
directory on a private tmpfs so that it meets no other avahi) on its own system bus (a
dbus-daemon with a config file of ours; DBUS_SYSTEM_BUS_ADDRESS points the daemons and the
clients at it). mDNS crosses the veth as multicast; nothing else is reached. Everything is
stopped by PID."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import AGENT_BIN, Mount, make_config, wait_until, write_token

PROBE = {"interval_s": 1, "timeout_ms": 800, "stale_after_s": 5, "offline_after_s": 10,
         "unhealthy_after": 2, "heartbeat_s": 1}

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""

AVAHI_CONF = """[server]
host-name={host}
use-ipv4=yes
use-ipv6=no
allow-interfaces={iface}
enable-dbus=yes
ratelimit-interval-usec=0
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
"""


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def init_dir(d, name, listen):
    r = subprocess.run([str(AGENT_BIN), "--init", str(d), "--name", name, "--listen", listen],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads("{" + r.stdout.splitlines()[0] + "}")[name]["tls"]["fingerprint"]


class Side:
    """One side of the LAN: its system bus and its avahi-daemon (in netns `ns`, or the root
    namespace when None)."""

    def __init__(self, tmp, label, iface, ns=None):
        self.tmp, self.ns, self.procs = Path(tmp), ns, []
        self.sock = self.tmp / f"bus-{label}"
        self.bus = f"unix:path={self.sock}"
        conf = self.tmp / f"bus-{label}.conf"
        conf.write_text(BUS_CONF.format(sock=self.sock))
        self.dbus = self.spawn(f"dbus-{label}", ["dbus-daemon", "--nofork", "--config-file",
                                                 str(conf)])
        wait_until(self.sock.exists, 10, what=f"the {label} bus")
        aconf = self.tmp / f"avahi-{label}.conf"
        aconf.write_text(AVAHI_CONF.format(host=f"cfs-{label}-{os.getpid()}", iface=iface))
        # a private /run: avahi-daemon keeps its pid file and socket there, and would meet
        # another avahi-daemon's (the host's, or the other side's)
        inner = ["sh", "-c", 'mount -t tmpfs tmpfs /run && exec "$@"', "sh", "avahi-daemon",
                 "-f", str(aconf), "--no-drop-root", "--no-chroot", "--no-rlimits"]
        cmd = (["ip", "netns", "exec", ns, *inner] if ns
               else ["unshare", "-m", "--propagation", "private", *inner])
        self.avahi_log = self.tmp / f"avahi-{label}.log"
        self.avahi = self.spawn(f"avahi-{label}", cmd)
        wait_until(lambda: b"Server startup complete" in self.avahi_log.read_bytes(), 15,
                   what=f"the {label} avahi-daemon")

    def spawn(self, label, args, env=None):
        log = open(self.tmp / f"{label}.log", "ab")
        p = subprocess.Popen(args, stdout=log, stderr=log,
                             env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus,
                                  **(env or {})})
        self.procs.append(p)
        return p

    def run(self, args, timeout):
        """A client of this side's avahi (in its namespace), to its end."""
        cmd = ["ip", "netns", "exec", self.ns, *args] if self.ns else args
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus})

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@pytest.fixture(scope="module")
def lan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lan")
    tag = f"{os.getpid() % 10000}"
    ns, a, b = f"cfs-lan-{tag}", f"cfl{tag}a", f"cfl{tag}b"
    net = f"10.252.{os.getpid() % 250}"
    sides, m = [], None
    ip("netns", "add", ns)
    try:
        ip("link", "add", a, "type", "veth", "peer", "name", b)
        ip("link", "set", b, "netns", ns)
        ip("addr", "add", f"{net}.1/30", "dev", a)
        ip("link", "set", a, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", b)
        ip("netns", "exec", ns, "ip", "link", "set", b, "up")
        cp_side = Side(tmp, "cp", a)
        sides.append(cp_side)
        agent_side = Side(tmp, "agents", b, ns=ns)
        sides.append(agent_side)
        port = 8779
        cp_fp = init_dir(tmp / "cp", "control", f"{net}.1:{port}")
        join_token = write_token(tmp / "join.token", "join-" + os.urandom(16).hex())
        agents_token = write_token(tmp / "token", "unused-" + os.urandom(8).hex())
        cfg = make_config(tmp / "hosts.json", [], agents_token, hosts={}, probe=PROBE,
                          cluster="lan-test",
                          join={"listen": f"{net}.1:{port}", "token_file": "join.token",
                                "announce": True,
                                "tls": {"cert_file": "cp/agent.crt",
                                        "key_file": "cp/agent.key"}})
        (tmp / "m").mkdir()
        m = Mount(tmp / "m", cfg, env={"DBUS_SYSTEM_BUS_ADDRESS": cp_side.bus})
        wait_until(lambda: b"publishing _clusterfs-join._tcp" in m.log_path.read_bytes(), 15,
                   what="the join listener announced")
        yield {"tmp": tmp, "ns": ns, "net": net, "port": port, "cp_fp": cp_fp,
               "join_token": join_token, "mount": m, "cp": cp_side, "agents": agent_side,
               "dropins": tmp / "hosts.d"}
    finally:
        if m:
            m.stop()
        for s in reversed(sides):
            s.stop()
        ip("link", "del", a, check=False)
        ip("netns", "del", ns, check=False)


class AutoAgent:
    """clusterfs-agent in the namespace with --join auto (and more), stopped by PID."""

    def __init__(self, lan, name, port, extra=(), join_token=None):
        tmp = lan["tmp"]
        self.dir = tmp / f"keys-{name}"
        self.fp = init_dir(self.dir, name, f"{lan['net']}.2:{port}")
        self.log_path = tmp / f"agent-{name}.log"
        self.base = ["--token-file", str(self.dir / "agent.token"), "--name", name,
                     "--join-token-file", str(join_token or lan["join_token"])]
        args = [str(AGENT_BIN), "-v", "--listen", f"{lan['net']}.2:{port}",
                "--tls-cert", str(self.dir / "agent.crt"), "--tls-key",
                str(self.dir / "agent.key"), "--state-dir", str(tmp / f"state-{name}"),
                "--join", "auto", *self.base, *extra]
        self.proc = lan["agents"].spawn(f"agent-{name}", ["ip", "netns", "exec", lan["ns"],
                                                           *args])

    def text(self):
        return self.log_path.read_bytes()


def test_join_auto_finds_the_announced_control_plane(lan):
    m = lan["mount"]
    a = AutoAgent(lan, "lan1", 9301)
    wait_until(lambda: m.path("nodes", "lan1").is_dir(), 30, what="lan1 in nodes/")
    log = a.text()
    want = f"found the control plane of lan-test at {lan['net']}.1:{lan['port']}"
    assert want.encode() in log, log
    assert lan["cp_fp"].encode() in log
    entry = json.loads((lan["dropins"] / "lan1.json").read_text())
    assert entry["host"] == f"{lan['net']}.2" and entry["port"] == 9301
    assert entry["tls"] == {"fingerprint": a.fp}
    wait_until(lambda: m.read("nodes", "lan1", "status").strip() == "healthy", 15,
               what="lan1 healthy")
    assert m.json("nodes", "lan1", "info")["joined"] is True
    # --leave finds the control plane the same way
    r = lan["agents"].run([str(AGENT_BIN), "--leave", "--join", "auto", *a.base], timeout=30)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: not m.path("nodes", "lan1").exists(), 10, what="lan1 gone")
    assert not (lan["dropins"] / "lan1.json").exists()


def test_the_announcement_says_where_and_which_key(lan):
    """What the control plane publishes: its address, port and key, vouched for with the
    join token (an HMAC an agent checks before it sends the token anywhere)."""
    r = lan["agents"].run(["avahi-browse", "-r", "-p", "-t", "_clusterfs-join._tcp"],
                          timeout=30)
    lines = [ln.split(";") for ln in r.stdout.splitlines() if ln.startswith("=")]
    assert lines, r.stdout + r.stderr
    f = lines[0]
    assert f[3] == "lan-test" and f[7] == f"{lan['net']}.1" and f[8] == str(lan["port"])
    txt = dict(t.strip('"').split("=", 1) for t in f[9].split(" "))
    assert txt["fp"] == lan["cp_fp"] and txt["cluster"] == "lan-test" and txt["mac"]
    assert lan["join_token"].read_text().strip() not in r.stdout


def test_another_join_token_trusts_no_announcement(lan, tmp_path):
    """An agent whose join token is not the one the announcement is vouched for with (as
    with another cluster's, or an impostor's announcement) never joins: it ignores what it
    finds, says why, and keeps looking."""
    other = write_token(tmp_path / "other.token", "join-other-" + os.urandom(16).hex())
    a = AutoAgent(lan, "lan2", 9302, join_token=other)
    wait_until(lambda: b"not vouched for with our join token" in a.text(), 30,
               what="the announcement ignored")
    assert b"joined " not in a.text()
    assert a.proc.poll() is None  # still looking
    assert not (lan["dropins"] / "lan2.json").exists()
    assert not lan["mount"].path("nodes", "lan2").exists()


def test_a_pin_picks_the_announcement_by_its_key(lan, tmp_path):
    """--join-fingerprint: only the announcement of that key counts (no vouch needed)."""
    wrong = init_dir(tmp_path / "other-key", "other", "127.0.0.1:1")
    a = AutoAgent(lan, "lan3", 9303, extra=["--join-fingerprint", wrong])
    wait_until(lambda: b"another key than --join-fingerprint" in a.text(), 30,
               what="the announcement ignored")
    assert not lan["mount"].path("nodes", "lan3").exists()
    b = AutoAgent(lan, "lan4", 9304, extra=["--join-fingerprint", lan["cp_fp"]])
    wait_until(lambda: lan["mount"].path("nodes", "lan4").is_dir(), 30, what="lan4 joined")
    assert b"found the control plane" in b.text()


def test_announce_publishes_the_agent(lan):
    a = AutoAgent(lan, "lan5", 9305, extra=["--announce"])
    wait_until(lambda: lan["mount"].path("nodes", "lan5").is_dir(), 30, what="lan5 joined")

    def found():
        r = lan["cp"].run(["avahi-browse", "-r", "-p", "-t", "_clusterfs._tcp"], timeout=30)
        return [ln.split(";") for ln in r.stdout.splitlines()
                if ln.startswith("=") and ln.split(";")[3] == "lan5"]

    f = wait_until(found, 30, what="lan5 announced")[0]
    assert f[7] == f"{lan['net']}.2" and f[8] == "9305"
    txt = dict(t.strip('"').split("=", 1) for t in f[9].split(" "))
    assert txt["fp"] == a.fp and txt["name"] == "lan5" and txt["tls"] == "1"
    # withdrawn when the agent stops
    a.proc.terminate()
    a.proc.wait(15)
    wait_until(lambda: not found(), 30, what="lan5 withdrawn")


def test_announce_refuses_a_loopback_listener(lan, tmp_path):
    d = tmp_path / "lo"
    init_dir(d, "lo1", "127.0.0.1:9306")
    r = lan["agents"].run([str(AGENT_BIN), "--listen", "127.0.0.1:9306", "--token-file",
                           str(d / "agent.token"), "--state-dir", str(tmp_path / "st"),
                           "--name", "lo1", "--announce"], timeout=30)
    assert r.returncode != 0
    assert "127.0.0.1 is a loopback address" in r.stderr
