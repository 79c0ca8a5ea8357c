"""Agents speak TLS: `clusterfs-agent --init`, pinned and CA-verified https, and plain HTTP
refused to remote addresses before anything (a token) is sent.

The agents run in a network namespace this test makes (a veth pair on 10.250.X.0/30), on
its non-loopback address, so that the loopback exemption does not apply; traffic goes only
between the root namespace and that namespace. A tcpdump on the veth shows what the
control plane sent."""
import errno
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import AGENT_BIN, DAEMON_BIN, ROOT, make_config, wait_until


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@pytest.fixture
def netns():
    """A namespace with a veth to the root namespace: root side X.1, namespace side X.2."""
    tag = f"{os.getpid() % 10000}"
    ns, a, b = f"cfs-tls-{tag}", f"cft{tag}a", f"cft{tag}b"
    net = f"10.250.{os.getpid() % 250}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", a, "type", "veth", "peer", "name", b)
        ip("link", "set", b, "netns", ns)
        ip("addr", "add", f"{net}.1/30", "dev", a)
        ip("link", "set", a, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", b)
        ip("netns", "exec", ns, "ip", "link", "set", b, "up")
        yield {"ns": ns, "veth": a, "local": f"{net}.1", "addr": f"{net}.2"}
    finally:
        ip("link", "del", a, check=False)
        ip("netns", "del", ns, check=False)


def agent_init(dirpath, name, listen, *extra):
    r = subprocess.run([str(AGENT_BIN), "--init", str(dirpath), "--name", name,
                        "--listen", listen, *extra], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


def entry_of(init_result):
    """The hosts.json entry --init printed: its first stdout line, `"NAME": {...}`."""
    line = init_result.stdout.splitlines()[0]
    return json.loads("{" + line + "}")


class NsAgent:
    """A clusterfs-agent in the test's namespace, with -v (it logs every connection and
    request), stopped by its PID."""

    def __init__(self, tmp, netns, name, port, token_file, tls_dir=None, extra=()):
        self.name, self.port = name, port
        self.log_path = Path(tmp) / f"agent-{name}.log"
        self.log = open(self.log_path, "ab")
        args = ["ip", "netns", "exec", netns["ns"], str(AGENT_BIN), "-v",
                "--listen", f"{netns['addr']}:{port}", "--token-file", str(token_file),
                "--state-dir", str(Path(tmp) / f"agent-{name}-state"), "--name", name]
        args += list(extra)
        if tls_dir:
            args += ["--tls-cert", str(tls_dir / "agent.crt"),
                     "--tls-key", str(tls_dir / "agent.key")]
        # `ip netns exec` execs the agent, so this PID is the agent's
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        wait_until(lambda: self.proc.poll() is None and b"listening on " in self.text(),
                   10, what=f"agent {name} listening")

    def text(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"agent {self.name} exited: {self.log_path.read_text()}")
        return self.log_path.read_bytes()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def ns_agents(tmp_path, netns):
    started = []

    def start(name, port, token_file, tls_dir=None, extra=()):
        a = NsAgent(tmp_path, netns, name, port, token_file, tls_dir, extra)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


class Capture:
    """tcpdump on the root side of the veth, written to a file."""

    def __init__(self, tmp, iface):
        self.path = Path(tmp) / f"capture-{iface}.pcap"
        self.err_path = Path(tmp) / f"capture-{iface}.err"
        self.err = open(self.err_path, "wb")
        # --immediate-mode: each packet is handed over as it comes (no ring-buffer blocks
        # that a stop could leave unread); -U: and written at once
        self.proc = subprocess.Popen(["tcpdump", "-i", iface, "--immediate-mode", "-U", "-s", "0", "-n", "-w",
                                      str(self.path), "tcp"],
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        wait_until(lambda: b"listening on" in self.err_path.read_bytes(), 10,
                   what="tcpdump listening")

    def stop(self):
        if self.proc.poll() is None:
            time.sleep(0.3)  # the last packets reach the file (-U writes per packet)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()
        return self.path.read_bytes()


@pytest.fixture
def capture(tmp_path, netns):
    caps = []

    def start():
        c = Capture(tmp_path, netns["veth"])
        caps.append(c)
        return c

    yield start
    for c in caps:
        c.stop()


def tcp_segments(pcap):
    """(src, sport, dst, dport, flags, payload) of every IPv4 TCP segment in a pcap file
    with Ethernet framing."""
    magic = struct.unpack("<I", pcap[:4])[0]
    endian = "<" if magic in (0xa1b2c3d4, 0xa1b23c4d) else ">"
    link = struct.unpack(endian + "I", pcap[20:24])[0]
    assert link == 1, f"unexpected link type {link}"
    off, out = 24, []
    while off + 16 <= len(pcap):
        _, _, incl, _ = struct.unpack(endian + "IIII", pcap[off:off + 16])
        frame = pcap[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        iph = frame[14:]
        ihl = (iph[0] & 0x0f) * 4
        if iph[9] != 6:
            continue
        total = struct.unpack(">H", iph[2:4])[0]
        src, dst = socket.inet_ntoa(iph[12:16]), socket.inet_ntoa(iph[16:20])
        tcp = iph[ihl:total]
        sport, dport = struct.unpack(">HH", tcp[:4])
        doff = (tcp[12] >> 4) * 4
        out.append((src, sport, dst, dport, tcp[13], tcp[doff:]))
    return out


def client_tls_records(pcap, server, port):
    """The TLS records the client sent to server:port, per connection: lists of
    (content type, length), from the reassembled client-to-server byte streams."""
    streams = {}
    for src, sport, dst, dport, _, payload in tcp_segments(pcap):
        if dst == server and dport == port and payload:
            streams.setdefault(sport, bytearray()).extend(payload)
    conns = []
    for data in streams.values():
        recs, i = [], 0
        while i + 5 <= len(data):
            ctype, length = data[i], struct.unpack(">H", data[i + 3:i + 5])[0]
            recs.append((ctype, length))
            i += 5 + length
        conns.append(recs)
    return conns


def tls_config(tmp_path, hosts, token, **kw):
    return make_config(tmp_path / "hosts.json", [], token, hosts=hosts,
                       probe={"interval_s": 1, "timeout_ms": 1500},
                       **kw)


def health(m, name):
    return m.json("nodes", name, "health")


def test_init_creates_private_files_and_keeps_them(tmp_path):
    d = tmp_path / "new" / "agent-dir"
    r = agent_init(d, "edge1", "10.250.0.2:8790")
    assert (d.stat().st_mode & 0o777) == 0o700
    for f in ("agent.token", "agent.key", "agent.crt"):
        assert (d / f).stat().st_mode & 0o777 == 0o600, f
    token = (d / "agent.token").read_text().strip()
    assert len(token) == 64 and int(token, 16) >= 0
    entry = entry_of(r)["edge1"]
    assert entry["host"] == "10.250.0.2" and entry["port"] == 8790
    assert entry["token_file"] == "edge1.token"
    fp = entry["tls"]["fingerprint"]
    assert fp.startswith("sha256:") and len(fp) == 7 + 44
    # the same fingerprint from --fingerprint, and from OpenSSL's view of the public key
    out = subprocess.run([str(AGENT_BIN), "--fingerprint", str(d / "agent.crt")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == fp
    cmd = r.stdout.splitlines()[1]
    assert "--tls-cert" in cmd and str(d / "agent.key") in cmd and "--token-file" in cmd
    before = {f: (d / f).read_bytes() for f in ("agent.token", "agent.key", "agent.crt")}
    r2 = agent_init(d, "edge1", "10.250.0.2:8790")
    assert "kept" in r2.stderr
    assert {f: (d / f).read_bytes() for f in before} == before
    assert entry_of(r2)["edge1"]["tls"]["fingerprint"] == fp
    # another --init makes another key
    other = entry_of(agent_init(tmp_path / "other", "edge1", "10.250.0.2:8790"))
    assert other["edge1"]["tls"]["fingerprint"] != fp


def test_pinned_agent_serves_health_and_tasks(tmp_path, token, netns, ns_agents, capture, mount):
    d = tmp_path / "pinned"
    entry = entry_of(agent_init(d, "tls1", f"{netns['addr']}:8801"))["tls1"]
    ns_agents("tls1", 8801, d / "agent.token", tls_dir=d)
    cap = capture()
    host = {"host": netns["addr"], "port": 8801, "token_file": str(d / "agent.token"),
            "tls": entry["tls"], "role": "worker"}
    m = mount(tls_config(tmp_path, {"tls1": host}, token))
    wait_until(lambda: m.read("nodes", "tls1", "status") == "healthy\n", 10,
               what="pinned node healthy")
    h = health(m, "tls1")
    assert h["reachable"] is True and h["cores"] >= 1
    assert m.json("config")["hosts"]["tls1"]["tls"]["fingerprint"] == entry["tls"]["fingerprint"]
    with open(m.path("tasks", "new", "hello-tls.json"), "w") as f:
        f.write(json.dumps({"cmd": "echo over tls", "node": "tls1"}))
    out = {}
    t = threading.Thread(target=lambda: out.update(v=m.read("tasks", "hello-tls", "wait")))
    t.start()
    t.join(30)
    assert out.get("v") == "succeeded 0\n"
    assert m.read("tasks", "hello-tls", "stdout") == "over tls\n"
    pcap = cap.stop()
    tok = (d / "agent.token").read_text().strip().encode()
    assert tok not in pcap and b"Bearer" not in pcap and b"/api/node" not in pcap
    # control for the check of the next test: requests are application data records
    # larger than any handshake message
    conns = client_tls_records(pcap, netns["addr"], 8801)
    assert any(ct == 0x17 and n > 100 for recs in conns for ct, n in recs)


def test_wrong_fingerprint_sends_nothing(tmp_path, token, netns, ns_agents, capture, mount):
    d, other = tmp_path / "real", tmp_path / "other"
    agent_init(d, "tls2", f"{netns['addr']}:8802")
    wrong = entry_of(agent_init(other, "tls2", f"{netns['addr']}:8802"))["tls2"]["tls"]
    agent = ns_agents("tls2", 8802, d / "agent.token", tls_dir=d)
    cap = capture()
    host = {"host": netns["addr"], "port": 8802, "token_file": str(d / "agent.token"),
            "tls": wrong}
    m = mount(tls_config(tmp_path, {"tls2": host}, token))
    h = wait_until(lambda: (lambda v: v if v["failures"] >= 2 else None)(health(m, "tls2")),
                   10, what="two failed probes")
    assert h["reachable"] is False
    # not a transient failure: unhealthy at once, not after probe.unhealthy_after (3)
    assert h["status"] == "unhealthy"
    assert "does not match the pinned fingerprint" in h["last_error"]
    assert any("does not match the pinned fingerprint" in r for r in h["reasons"])
    alerts = m.read("alerts")
    assert "tls2" in alerts and "does not match the pinned fingerprint" in alerts
    pcap = cap.stop()
    log = agent.text()
    assert b"connection from" in log  # the handshakes reached it...
    assert b"request " not in log  # ...but no request did
    tok = (d / "agent.token").read_text().strip().encode()
    assert tok not in pcap and b"Bearer" not in pcap
    conns = client_tls_records(pcap, netns["addr"], 8802)
    assert conns, "no TLS connection was captured"
    for recs in conns:
        # after the handshake the client sent at most its Finished and an alert: no
        # record large enough to carry a request with its token
        assert all(not (ct == 0x17 and n > 100) for ct, n in recs), recs


def test_plain_http_refused_unless_insecure(tmp_path, token, netns, ns_agents, capture, mount):
    d = tmp_path / "plain"
    agent_init(d, "plain1", f"{netns['addr']}:8803")
    agent = ns_agents("plain1", 8803, d / "agent.token")  # no TLS
    cap = capture()
    host = {"host": netns["addr"], "port": 8803, "token_file": str(d / "agent.token")}
    svc = {"oracle": {"host": "plain1", "port": 8803,
                      "files": {"status": {"get": "/api/node/health"}}}}
    cfg = tls_config(tmp_path, {"plain1": host}, token, services=svc)
    m = mount(cfg)
    why = f"plain HTTP to {netns['addr']} is refused: set tls or insecure_http for this host"
    h = wait_until(lambda: (lambda v: v if v["failures"] >= 2 else None)(health(m, "plain1")),
                   10, what="two refused probes")
    assert h["reachable"] is False and why in h["last_error"] and h["status"] == "unhealthy"
    assert any(why in r for r in h["reasons"])
    with pytest.raises(OSError) as e:
        m.read("services", "oracle", "status")
    assert e.value.errno == errno.EPROTO
    alerts = m.read("alerts")
    assert why in alerts
    assert f"plain HTTP to {netns['addr']} is refused: set tls or insecure_http for service oracle" in alerts
    time.sleep(1.5)  # more probe rounds: still nothing goes out
    pcap = cap.stop()
    assert not [s for s in tcp_segments(pcap) if s[3] == 8803], "a connection was attempted"
    assert b"connection from" not in agent.text()

    # allowed explicitly: the same agent answers (live reload of the config)
    doc = json.loads(cfg.read_text())
    doc["hosts"]["plain1"]["insecure_http"] = True
    tmp = cfg.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.rename(cfg)
    wait_until(lambda: health(m, "plain1")["reachable"], 10, what="insecure_http node reachable")
    assert m.json("config")["hosts"]["plain1"]["insecure_http"] is True
    assert b"request GET /api/node/health" in agent.text()


def test_services_have_their_own_tls(tmp_path, token, netns, ns_agents, mount):
    """A host's ledger service and a top-level REST service, each pinned on its own: the
    ledger (the agent's, with its token) works over TLS; the REST service reaches the
    agent over TLS too (which answers 401 to a request without a token); the same service
    without tls of its own inherits nothing from its host and is refused."""
    d = tmp_path / "svc"
    entry = entry_of(agent_init(d, "led1", f"{netns['addr']}:8808"))["led1"]
    ns_agents("led1", 8808, d / "agent.token", tls_dir=d,
              extra=("--ledger", str(tmp_path / "ledger.db")))
    host = {"host": netns["addr"], "port": 8808, "token_file": str(d / "agent.token"),
            "tls": entry["tls"],
            "services": {"ledger": {"port": 8808, "path": "/api/ledger", "tls": entry["tls"]}}}
    files = {"health": {"get": "/api/node/health"}}
    svcs = {"pinned": {"host": "led1", "port": 8808, "tls": entry["tls"], "files": files},
            "bare": {"host": "led1", "port": 8808, "files": files}}
    m = mount(tls_config(tmp_path, {"led1": host}, token, services=svcs))
    with open(m.path("ledger", "record"), "w") as f:
        f.write(json.dumps({"step": 7, "metrics": {"loss": 0.5}, "path": "/ckpt/7"}))
    wait_until(lambda: m.json("ledger", "summary")["pending"] == 0 and
               m.json("ledger", "source")["state"] == "live", 10, what="ledger delivery")
    src = m.json("ledger", "source")
    assert src["url"] == f"https://{netns['addr']}:8808/api/ledger" and not src["error"]
    assert m.json("ledger", "entries", "7")["path"] == "/ckpt/7"
    with pytest.raises(OSError) as e:
        m.read("services", "pinned", "health")
    assert e.value.errno == errno.EACCES  # an HTTP 401 from the agent, over TLS
    with pytest.raises(OSError) as e:
        m.read("services", "bare", "health")
    assert e.value.errno == errno.EPROTO
    cfg = m.json("config")
    assert cfg["services"]["pinned"]["tls"]["fingerprint"] == entry["tls"]["fingerprint"]
    assert cfg["services"]["bare"]["tls"] is False
    assert cfg["hosts"]["led1"]["services"]["ledger"]["tls"]["fingerprint"] == \
        entry["tls"]["fingerprint"]


def test_ca_file_verifies_the_name(tmp_path, token, netns, ns_agents, mount):
    good, bad = tmp_path / "good", tmp_path / "bad"
    agent_init(good, "ca1", f"{netns['addr']}:8804")  # its SAN holds the address
    agent_init(bad, "ca2", "127.0.0.1:8805")  # its SAN does not
    ns_agents("ca1", 8804, good / "agent.token", tls_dir=good)
    ns_agents("ca2", 8805, bad / "agent.token", tls_dir=bad)
    hosts = {
        # "tls": true verifies against the top-level tls.ca_file
        "ca1": {"host": netns["addr"], "port": 8804, "token_file": str(good / "agent.token"),
                "tls": True},
        "ca2": {"host": netns["addr"], "port": 8805, "token_file": str(bad / "agent.token"),
                "tls": {"ca_file": str(bad / "agent.crt")}},
    }
    m = mount(tls_config(tmp_path, hosts, token, tls={"ca_file": str(good / "agent.crt")}))
    wait_until(lambda: health(m, "ca1")["reachable"], 10, what="CA-verified node reachable")
    h = wait_until(lambda: (lambda v: v if v["failures"] >= 1 else None)(health(m, "ca2")),
                   10, what="a failed probe")
    assert h["reachable"] is False
    assert "certificate verification failed" in h["last_error"], h
    assert "certificate verification failed" in m.read("alerts")


def test_agent_refuses_readable_key_and_half_a_pair(tmp_path):
    d = tmp_path / "k"
    agent_init(d, "k1", "127.0.0.1:8806")
    os.chmod(d / "agent.key", 0o644)
    r = subprocess.run([str(AGENT_BIN), "--listen", "127.0.0.1:0", "--token-file",
                        str(d / "agent.token"), "--state-dir", str(tmp_path / "s"),
                        "--tls-cert", str(d / "agent.crt"), "--tls-key", str(d / "agent.key")],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2
    assert "accessible by group or others" in r.stderr and "chmod 600" in r.stderr
    r = subprocess.run([str(AGENT_BIN), "--token-file", str(d / "agent.token"),
                        "--tls-cert", str(d / "agent.crt")],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "--tls-cert and --tls-key go together" in r.stderr
    # --init with a pair of one's own checks it before creating anything...
    mine = ["--tls-cert", str(d / "agent.crt"), "--tls-key", str(d / "agent.key")]
    r = subprocess.run([str(AGENT_BIN), "--init", str(tmp_path / "own"), "--name", "k2",
                        "--listen", "127.0.0.1:8807", *mine], capture_output=True, text=True)
    assert r.returncode == 2 and "chmod 600" in r.stderr
    assert not (tmp_path / "own").exists()
    # ...and, once the key is private, uses it as it is
    os.chmod(d / "agent.key", 0o600)
    r = agent_init(tmp_path / "own", "k2", "127.0.0.1:8807", *mine)
    fp = subprocess.run([str(AGENT_BIN), "--fingerprint", str(d / "agent.crt")],
                        capture_output=True, text=True, check=True).stdout.strip()
    assert entry_of(r)["k2"]["tls"]["fingerprint"] == fp
    assert sorted(os.listdir(tmp_path / "own")) == ["agent.token"]


def test_bad_fingerprint_is_a_located_config_error(tmp_path):
    (tmp_path / "mnt").mkdir()
    bad = tmp_path / "hosts.json"
    bad.write_text('{"hosts": {"a": {"host": "10.0.0.1",\n'
                   '  "tls": {"fingerprint": "sha256:tooshort"}}}}\n')
    r = subprocess.run([str(DAEMON_BIN), "-f", "-c", str(bad), "-s", str(tmp_path / "s"),
                        str(tmp_path / "mnt")], capture_output=True, text=True, timeout=20)
    assert r.returncode == 5
    assert f"{bad}:2:26: hosts.a.tls.fingerprint must be \"sha256:\"" in r.stderr, r.stderr


def test_seed_hosts_are_refused_plain_http(tmp_path, mount):
    """The seed config loads as it is; its remote hosts without tls are refused per request."""
    cfg = ROOT / "tests" / "config" / "seed-architecture-plan.json"
    m = mount(cfg, env={"CLUSTERFS_TOKEN_FILE": str(tmp_path / "no-token")})
    h = wait_until(lambda: (lambda v: v if v["failures"] >= 1 else None)(health(m, "3090")),
                   10, what="a refused probe")
    assert "plain HTTP to 192.168.x.x is refused: set tls or insecure_http for this host" \
        in h["last_error"]
