"""Membership: agents join on their own (`clusterfs-agent --join`), registration is a file
(hosts.d/NAME.json beside hosts.json, loaded and live-reloaded with it), heartbeats count as
probes, and `rm` or `--leave` removes a node.

The agents run in a network namespace this module makes (a veth pair on 10.251.X.0/30): the
control plane listens for joins on the root side (X.1), the agents serve on the namespace
side (X.2), both over TLS with keys from `clusterfs-agent --init`. Probes are blocked with
an iptables rule inside the namespace where a test needs a node only heartbeats can keep
alive. Traffic stays between the two namespaces."""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import AGENT_BIN, Mount, make_config, wait_until, write_token

PROBE = {"interval_s": 1, "timeout_ms": 800, "stale_after_s": 3, "offline_after_s": 6,
         "unhealthy_after": 2, "heartbeat_s": 1}


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def init_dir(d, name, listen):
    r = subprocess.run([str(AGENT_BIN), "--init", str(d), "--name", name, "--listen", listen],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[0]
    return json.loads("{" + line + "}")[name]["tls"]["fingerprint"]


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    """The namespace, and a control plane with a join listener on the root side of it."""
    tmp = tmp_path_factory.mktemp("join")
    tag = f"{os.getpid() % 10000}"
    ns, a, b = f"cfs-join-{tag}", f"cfj{tag}a", f"cfj{tag}b"
    net = f"10.251.{os.getpid() % 250}"
    ip("netns", "add", ns)
    m = None
    state = {}
    try:
        ip("link", "add", a, "type", "veth", "peer", "name", b)
        ip("link", "set", b, "netns", ns)
        ip("addr", "add", f"{net}.1/30", "dev", a)
        ip("link", "set", a, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", b)
        ip("netns", "exec", ns, "ip", "link", "set", b, "up")
        join_port = 8769
        cp_fp = init_dir(tmp / "cp", "control", f"{net}.1:{join_port}")
        join_token = write_token(tmp / "join.token", "join-" + os.urandom(12).hex())
        agents_token = write_token(tmp / "token", "unused-" + os.urandom(8).hex())
        cfg = make_config(tmp / "hosts.json", [], agents_token, hosts={}, probe=PROBE,
                          join={"listen": f"{net}.1:{join_port}", "token_file": "join.token",
                                "tls": {"cert_file": "cp/agent.crt",
                                        "key_file": "cp/agent.key"}})
        (tmp / "m").mkdir()
        m = Mount(tmp / "m", cfg)
        wait_until(lambda: b"join listener on" in m.log_path.read_bytes(), 10,
                   what="join listener")
        state = {"tmp": tmp, "ns": ns, "local": f"{net}.1", "addr": f"{net}.2", "mount": m,
                 "url": f"https://{net}.1:{join_port}", "fp": cp_fp, "join_token": join_token,
                 "config": cfg, "dropins": tmp / "hosts.d"}
        yield state
    finally:
        # the reverse test restarts the daemon: stop whichever mount is current
        if m:
            m.stop()
        if m and state.get("mount") is not m:
            state["mount"].stop()
        ip("link", "del", a, check=False)
        ip("netns", "del", ns, check=False)


class JoinAgent:
    """A clusterfs-agent in the namespace that joins the control plane; stopped by PID."""

    def __init__(self, cp, name, port, keydir=None, join_token=None, extra=(), wait=True):
        tmp = cp["tmp"]
        self.name, self.port = name, port
        self.dir = keydir or tmp / f"keys-{name}"
        self.fp = init_dir(self.dir, name, f"{cp['addr']}:{port}")
        self.log_path = tmp / f"agent-{name}-{port}.log"
        self.log = open(self.log_path, "ab")
        self.start_at = self.log.tell()
        args = ["ip", "netns", "exec", cp["ns"], str(AGENT_BIN), "-v",
                "--listen", f"{cp['addr']}:{port}", "--token-file", str(self.dir / "agent.token"),
                "--tls-cert", str(self.dir / "agent.crt"), "--tls-key", str(self.dir / "agent.key"),
                "--state-dir", str(tmp / f"state-{name}-{port}"), "--name", name,
                "--join", cp["url"], "--join-fingerprint", cp["fp"],
                "--join-token-file", str(join_token or cp["join_token"]), *extra]
        # `ip netns exec` execs the agent, so this PID is the agent's
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        if wait:
            wait_until(lambda: b"joined " in self.text(), 15, what=f"{name} joined")

    def text(self):
        with open(self.log_path, "rb") as f:
            f.seek(self.start_at)
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(18)  # SIGCONT, in case a test stopped it
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def join_agents(cp):
    started = []

    def start(*args, **kw):
        a = JoinAgent(cp, *args, **kw)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def node_status(m, name):
    try:
        return m.read("nodes", name, "status").strip()
    except OSError:
        return None


def test_agent_joins_and_its_file_is_written(cp, join_agents):
    m = cp["mount"]
    t0 = time.monotonic()
    a = join_agents("edge1", 9101, extra=["--role", "worker", "--capabilities", "gpu,cuda"])
    wait_until(lambda: (m.path("nodes", "edge1").is_dir()), 10, step=0.01,
               what="edge1 in nodes/")
    print(f"\nedge1 in nodes/ {1000 * (time.monotonic() - t0):.0f} ms after the agent started")
    f = cp["dropins"] / "edge1.json"
    entry = json.loads(f.read_text())
    assert entry["host"] == cp["addr"] and entry["port"] == 9101
    assert entry["tls"] == {"fingerprint": a.fp}
    assert entry["role"] == "worker" and entry["capabilities"] == ["gpu", "cuda"]
    # the agent's token is in a file of its own, private; the drop-in names it only
    assert entry["token_file"] == "edge1.token"
    tok = cp["dropins"] / "edge1.token"
    assert tok.stat().st_mode & 0o777 == 0o600
    assert tok.read_text().strip() == (a.dir / "agent.token").read_text().strip()
    assert "token" not in entry
    wait_until(lambda: node_status(m, "edge1") == "healthy", 10, what="edge1 healthy")
    info = m.json("nodes", "edge1", "info")
    assert info["joined"] is True and info["role"] == "worker"
    assert info["reached"] in ("push", "pull") and info["last_heard_at"]
    # no secret in the tree's view of the config
    assert tok.read_text().strip() not in m.read("config")
    # the same agent joining again updates its file, never a clash
    a.stop()
    b = join_agents("edge1", 9102, keydir=a.dir)
    assert b"joined again" in b.text() or b"entry updated" in b.text()
    wait_until(lambda: json.loads(f.read_text())["port"] == 9102, 10, what="port updated")
    wait_until(lambda: m.read("nodes", "edge1", "address").strip() == f"{cp['addr']}:9102",
               10, what="new address live")


def test_wrong_join_token_gets_401_and_writes_nothing(cp, join_agents, tmp_path):
    bad = write_token(tmp_path / "bad.token", "join-wrong-" + os.urandom(8).hex())
    a = join_agents("intruder", 9111, join_token=bad, wait=False)
    assert a.proc.wait(20) == 3, a.text()
    assert b"HTTP 401" in a.text()
    assert not (cp["dropins"] / "intruder.json").exists()
    assert not (cp["dropins"] / "intruder.token").exists()
    assert not cp["mount"].path("nodes", "intruder").exists()


def test_name_clash_gets_409_and_the_file_stays(cp, join_agents):
    m = cp["mount"]
    first = join_agents("clash", 9121)
    wait_until(lambda: m.path("nodes", "clash").is_dir(), 10, what="clash in nodes/")
    before = (cp["dropins"] / "clash.json").read_bytes()
    # another host (another key) under the same name
    other = join_agents("clash", 9122, keydir=cp["tmp"] / "keys-clash-other", wait=False)
    assert other.proc.wait(20) == 3, other.text()
    assert b"HTTP 409" in other.text() and b"taken by another host" in other.text()
    assert (cp["dropins"] / "clash.json").read_bytes() == before
    assert json.loads(before)["tls"]["fingerprint"] == first.fp
    # the fingerprint is public: claiming it with another agent token is refused too
    body = json.dumps({"name": "clash", "port": 9123, "fingerprint": first.fp,
                       "token": "taken-over-" + os.urandom(8).hex()})
    r = subprocess.run(["ip", "netns", "exec", cp["ns"], "curl", "-sk", "--max-time", "5",
                        "-w", "\n%{http_code}", "-H",
                        f"Authorization: Bearer {cp['join_token'].read_text().strip()}",
                        "-H", "Content-Type: application/json", "--data", body,
                        f"{cp['url']}/api/join"], capture_output=True, text=True)
    assert r.stdout.endswith("409") and "another token" in r.stdout, r.stdout
    assert (cp["dropins"] / "clash.json").read_bytes() == before
    assert (cp["dropins"] / "clash.token").read_text().strip() == \
        (first.dir / "agent.token").read_text().strip()


def test_typed_entry_wins_over_a_dropin_with_an_alert(cp, join_agents):
    m = cp["mount"]
    cfg = json.loads(cp["config"].read_text())
    cfg["hosts"]["typed"] = {"host": "127.0.0.1", "port": 9, "role": "typed-role"}
    tmp = cp["config"].with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg))
    tmp.rename(cp["config"])
    cp["dropins"].mkdir(exist_ok=True)
    (cp["dropins"] / "typed.json").write_text(json.dumps({"host": "127.0.0.2", "port": 10,
                                                          "role": "dropin-role"}))
    try:
        wait_until(lambda: "hosts.json has a host named \"typed\"" in m.read("alerts"),
                   10, what="shadowing alert")
        assert m.json("nodes", "typed", "info")["role"] == "typed-role"
        assert m.json("nodes", "typed", "info")["joined"] is False
        # and an agent cannot join under a name typed into hosts.json
        a = join_agents("typed", 9161, wait=False)
        assert a.proc.wait(20) == 3, a.text()
        assert b"HTTP 409" in a.text() and b"hosts.json has a host of that name" in a.text()
        assert json.loads((cp["dropins"] / "typed.json").read_text())["role"] == "dropin-role"
    finally:
        (cp["dropins"] / "typed.json").unlink()
        del cfg["hosts"]["typed"]
        tmp.write_text(json.dumps(cfg))
        tmp.rename(cp["config"])
    wait_until(lambda: not m.path("nodes", "typed").exists(), 10, what="typed gone")
    wait_until(lambda: "typed" not in m.read("alerts"), 10, what="alert cleared")


def test_invalid_dropin_is_rejected_with_its_position_and_loses_nothing(cp, join_agents):
    m = cp["mount"]
    join_agents("keeper", 9131)
    wait_until(lambda: m.path("nodes", "keeper").is_dir(), 10, what="keeper in nodes/")
    bad = cp["dropins"] / "broken.json"
    bad.write_text('{\n  "host": "10.0.0.9",\n  "port": "eighty"\n}\n')
    try:
        wait_until(lambda: f"{bad}:3:" in m.read("alerts"), 10,
                   what="rejection with file:line")
        assert m.path("nodes", "keeper").is_dir()
        assert not m.path("nodes", "broken").exists()
    finally:
        bad.unlink()
    wait_until(lambda: str(bad) not in m.read("alerts"), 10, what="resolved")


def test_rm_of_the_dropin_removes_the_node_live(cp, join_agents):
    m = cp["mount"]
    a = join_agents("gone1", 9141)
    wait_until(lambda: m.path("nodes", "gone1").is_dir(), 10, what="gone1 in nodes/")
    (cp["dropins"] / "gone1.json").unlink()
    wait_until(lambda: not m.path("nodes", "gone1").exists(), 10, what="gone1 removed")
    # its heartbeats are refused from now on, and it does not re-register on its own
    wait_until(lambda: b"no longer knows gone1" in a.text(), 10, what="agent told")
    assert not (cp["dropins"] / "gone1.json").exists()


def test_leave_removes_the_node(cp, join_agents):
    m = cp["mount"]
    a = join_agents("leaver", 9151)
    wait_until(lambda: m.path("nodes", "leaver").is_dir(), 10, what="leaver in nodes/")
    r = subprocess.run(["ip", "netns", "exec", cp["ns"], str(AGENT_BIN), "--leave",
                        "--join", cp["url"], "--join-fingerprint", cp["fp"],
                        "--join-token-file", str(cp["join_token"]),
                        "--token-file", str(a.dir / "agent.token"), "--name", "leaver"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert not (cp["dropins"] / "leaver.json").exists()
    assert not (cp["dropins"] / "leaver.token").exists()
    wait_until(lambda: not m.path("nodes", "leaver").exists(), 10, what="leaver removed")
    # another agent's token does not make a node leave
    b = join_agents("stayer", 9152)
    wait_until(lambda: m.path("nodes", "stayer").is_dir(), 10, what="stayer in nodes/")
    r = subprocess.run(["ip", "netns", "exec", cp["ns"], str(AGENT_BIN), "--leave",
                        "--join", cp["url"], "--join-fingerprint", cp["fp"],
                        "--join-token-file", str(cp["join_token"]),
                        "--token-file", str(a.dir / "agent.token"), "--name", "stayer"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "no joined node stayer holds this token" in r.stderr
    assert (cp["dropins"] / "stayer.json").exists()
    assert b.proc.poll() is None


def events_of(m, name):
    return [l for l in m.read("events").splitlines() if f" {name} " in l or f" {name}:" in l]


def test_heartbeats_keep_a_node_healthy_with_probes_blocked(cp, join_agents):
    """Probes to this agent are dropped in its namespace (iptables), so only its pushed
    heartbeats can keep it healthy; when they stop it goes stale, then offline, as a
    pulled node would; when they resume it is healthy again."""
    m = cp["mount"]
    port = 9201
    subprocess.run(["ip", "netns", "exec", cp["ns"], "iptables", "-A", "INPUT", "-p", "tcp",
                    "--dport", str(port), "-j", "DROP"], check=True)
    try:
        a = join_agents("pushed1", port)
        wait_until(lambda: node_status(m, "pushed1") == "healthy", 10, what="pushed1 healthy")
        # a probe cannot get through: the control plane's connection times out
        r = subprocess.run(["curl", "-sk", "--max-time", "1", f"https://{cp['addr']}:{port}/"],
                           capture_output=True)
        assert r.returncode == 28  # timed out
        # heartbeats go on for longer than stale_after_s: seen as distinct last_heard_at
        seen = set()

        def beats():
            seen.add(m.json("nodes", "pushed1", "info")["last_heard_at"])
            return len(seen) >= PROBE["stale_after_s"] + 2

        wait_until(beats, 20, step=0.2, what="heartbeats")
        info = m.json("nodes", "pushed1", "info")
        assert info["reached"] == "push"
        assert node_status(m, "pushed1") == "healthy"
        assert not [e for e in events_of(m, "pushed1") if "stale" in e or "offline" in e]
        health = m.json("nodes", "pushed1", "health")
        assert health["reachable"] is True and health["cores"] >= 1
        # the heartbeat stops: stale, then offline, by the seed's protocol
        a.proc.send_signal(19)  # SIGSTOP
        wait_until(lambda: node_status(m, "pushed1") == "stale", 20, what="stale")
        wait_until(lambda: node_status(m, "pushed1") == "offline", 20, what="offline")
        reasons = m.json("nodes", "pushed1", "health")["reasons"]
        assert any("offline after" in r for r in reasons), reasons
        a.proc.send_signal(18)  # SIGCONT
        wait_until(lambda: node_status(m, "pushed1") == "healthy", 20, what="healthy again")
        assert any("heard from again" in e for e in events_of(m, "pushed1"))
    finally:
        subprocess.run(["ip", "netns", "exec", cp["ns"], "iptables", "-D", "INPUT", "-p", "tcp",
                        "--dport", str(port), "-j", "DROP"], check=False)


def test_heartbeats_come_back_on_one_connection(cp, join_agents):
    """The agent keeps its connection to the join listener between heartbeats, and the
    listener keeps it open past the heartbeat period: one TLS handshake, not one per
    heartbeat (what costs the control plane most). Counted by an iptables rule in the
    agent's namespace that matches the SYNs sent to the join listener."""
    m = cp["mount"]
    join_port = cp["url"].rsplit(":", 1)[1]
    rule = ["OUTPUT", "-p", "tcp", "--syn", "-d", cp["local"], "--dport", join_port,
            "-j", "ACCEPT"]
    ns = ["ip", "netns", "exec", cp["ns"], "iptables"]
    subprocess.run([*ns, "-I", *rule], check=True)
    try:
        def syns():
            r = subprocess.run([*ns, "-L", "OUTPUT", "-v", "-x", "-n"], capture_output=True,
                               text=True, check=True)
            return sum(int(ln.split()[0]) for ln in r.stdout.splitlines()
                       if f"dpt:{join_port}" in ln and "flags:" in ln)

        join_agents("kept1", 9205)
        wait_until(lambda: node_status(m, "kept1") == "healthy", 10, what="kept1 healthy")
        seen = set()

        def beats():
            seen.add(m.json("nodes", "kept1", "info")["last_heard_at"])
            return len(seen) >= 5

        wait_until(beats, 20, step=0.2, what="five heartbeats")
        # the registration and every heartbeat: one connection
        assert syns() == 1, (syns(), seen)
    finally:
        subprocess.run([*ns, "-D", *rule], check=False)


def test_heartbeat_with_another_nodes_token_is_refused(cp, join_agents):
    """A heartbeat must carry the token of the node it speaks for."""
    m = cp["mount"]
    a = join_agents("hb1", 9211)
    join_agents("hb2", 9212)
    wait_until(lambda: m.path("nodes", "hb2").is_dir(), 10, what="hb2 in nodes/")
    body = json.dumps({"name": "hb2", "token": (a.dir / "agent.token").read_text().strip(),
                       "health": {"cores": 1}})
    r = subprocess.run(["ip", "netns", "exec", cp["ns"], "curl", "-sk", "--max-time", "5",
                        "-o", "/dev/null", "-w", "%{http_code}",
                        "-H", f"Authorization: Bearer {cp['join_token'].read_text().strip()}",
                        "-H", "Content-Type: application/json", "--data", body,
                        f"{cp['url']}/api/join/heartbeat"], capture_output=True, text=True)
    assert r.stdout == "403"
    # and without the join token nothing is even read
    r = subprocess.run(["ip", "netns", "exec", cp["ns"], "curl", "-sk", "--max-time", "5",
                        "-o", "/dev/null", "-w", "%{http_code}", "--data", body,
                        f"{cp['url']}/api/join/heartbeat"], capture_output=True, text=True)
    assert r.stdout == "401"


def test_remove_by_ctl_forgets_a_joined_node_only(cp, join_agents):
    m = cp["mount"]
    join_agents("ctl1", 9221)
    wait_until(lambda: m.path("nodes", "ctl1").is_dir(), 10, what="ctl1 in nodes/")
    m.path("nodes", "ctl1", "ctl").write_text("remove\n")
    assert not (cp["dropins"] / "ctl1.json").exists()
    assert not (cp["dropins"] / "ctl1.token").exists()
    wait_until(lambda: not m.path("nodes", "ctl1").exists(), 10, what="ctl1 removed")
    assert any("removed: echo remove > ctl" in e for e in events_of(m, "ctl1"))
    # a node typed into hosts.json is not the tree's to delete
    cfg = json.loads(cp["config"].read_text())
    cfg["hosts"]["typed2"] = {"host": "127.0.0.1", "port": 9}
    tmp = cp["config"].with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg))
    tmp.rename(cp["config"])
    try:
        wait_until(lambda: m.path("nodes", "typed2").is_dir(), 10, what="typed2")
        with pytest.raises(PermissionError):
            m.path("nodes", "typed2", "ctl").write_text("remove\n")
        assert "typed2" in json.loads(cp["config"].read_text())["hosts"]
    finally:
        del cfg["hosts"]["typed2"]
        tmp.write_text(json.dumps(cfg))
        tmp.rename(cp["config"])
    wait_until(lambda: not m.path("nodes", "typed2").exists(), 10, what="typed2 gone")


def test_offline_joined_node_is_forgotten_after_forget_after_s(cp, join_agents):
    m = cp["mount"]
    a = join_agents("forget1", 9231)
    wait_until(lambda: node_status(m, "forget1") == "healthy", 10, what="forget1 healthy")
    cfg = json.loads(cp["config"].read_text())
    cfg["join"]["forget_after_s"] = PROBE["offline_after_s"] + 1
    tmp = cp["config"].with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg))
    tmp.rename(cp["config"])
    try:
        wait_until(lambda: json.loads(m.read("config"))["join"]["forget_after_s"] > 0, 10,
                   what="forget_after_s in force")
        a.proc.send_signal(19)  # SIGSTOP: no heartbeat, no answer to probes
        wait_until(lambda: node_status(m, "forget1") == "offline", 20, what="offline")
        wait_until(lambda: not m.path("nodes", "forget1").exists(), 20, what="forgotten")
        assert not (cp["dropins"] / "forget1.json").exists()
        assert any("removed: offline for 7 s (join.forget_after_s)" in e
                   for e in events_of(m, "forget1"))
    finally:
        del cfg["join"]["forget_after_s"]
        tmp.write_text(json.dumps(cfg))
        tmp.rename(cp["config"])


def submit(m, name, spec):
    with open(m.path("tasks", "new", f"{name}.json"), "w") as f:
        f.write(json.dumps(spec))


def read_wait(m, name, timeout=60):
    import threading
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", m.read("tasks", name, "wait")))
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"wait for {name} did not return within {timeout}s"
    return out["v"]


def test_reverse_node_behind_nat_runs_tasks_exactly_once(cp, join_agents, tmp_path):
    """The agent's namespace drops every new inbound connection (iptables), as a NAT
    would: the control plane cannot dial it. It joins with --reverse and is reached over
    the long poll it keeps open: probes, a task whose stdout is read while it grows, a
    cancel, and a kill -9 of clusterfs in the middle of 100 submissions after which every
    accepted task ran exactly once on it."""
    rule = ["!", "-i", "lo", "-p", "tcp", "--syn", "-j", "DROP"]
    subprocess.run(["ip", "netns", "exec", cp["ns"], "iptables", "-A", "INPUT", *rule],
                   check=True)
    try:
        a = join_agents("nat1", 9301, extra=["--reverse"])
        m = cp["mount"]
        wait_until(lambda: node_status(m, "nat1") == "healthy", 15, what="nat1 healthy")
        info = m.json("nodes", "nat1", "info")
        assert info["reached"] == "reverse" and info["joined"] is True
        entry = json.loads((cp["dropins"] / "nat1.json").read_text())
        assert entry["reverse"] is True and entry["agent_fingerprint"] == a.fp
        assert entry["services"]["agent"]["path"] == "/api/join/relay/nat1"
        # the agent itself cannot be dialled
        r = subprocess.run(["curl", "-sk", "--max-time", "1", f"https://{cp['addr']}:9301/"],
                           capture_output=True)
        assert r.returncode == 28

        # stdout read while it grows, then a cancel
        submit(m, "grow", {"cmd": "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.3; done; "
                                  "sleep 60", "node": "nat1"})
        wait_until(lambda: "line1" in m.read("tasks", "grow", "stdout"), 20, what="line1")
        first = m.read("tasks", "grow", "stdout")
        wait_until(lambda: "line6" in m.read("tasks", "grow", "stdout"), 20, what="line6")
        assert len(m.read("tasks", "grow", "stdout")) > len(first)
        assert m.read("tasks", "grow", "status").strip() == "running"
        with open(m.path("tasks", "grow", "ctl"), "w") as f:
            f.write("cancel\n")
        assert read_wait(m, "grow", 30).startswith("cancelled"), "cancel over the channel"

        # kill -9 of the daemon in the middle of 100 submissions
        ran = tmp_path / "ran"
        ran.touch()
        os.chmod(tmp_path, 0o755)
        accepted = []
        import threading

        def killer():
            wait_until(lambda: len(accepted) >= 30, 60, step=0.001, what="30 submissions")
            m.proc.send_signal(9)

        threading.Thread(target=killer).start()
        for i in range(100):
            try:
                submit(m, f"r{i}", {"cmd": f"echo r{i} >> {ran}", "node": "nat1"})
                accepted.append(f"r{i}")
            except OSError:
                break
        m.proc.wait(10)
        m.stop()
        assert 0 < len(accepted) < 100, "the kill should land in the middle"
        (cp["tmp"] / "m2").mkdir(exist_ok=True)
        m2 = Mount(cp["tmp"] / "m2", cp["config"], state=m.state)
        cp["mount"] = m2
        wait_until(lambda: b"join listener on" in m2.log_path.read_bytes(), 10,
                   what="join listener again")
        for name in accepted:
            assert read_wait(m2, name, 120) == "succeeded 0\n", name
        lines = ran.read_text().split()
        for name in accepted:
            assert lines.count(name) == 1, (name, lines.count(name))
        assert all(lines.count(x) == 1 for x in set(lines))
        assert m2.json("nodes", "nat1", "info")["reached"] == "reverse"
    finally:
        subprocess.run(["ip", "netns", "exec", cp["ns"], "iptables", "-D", "INPUT", *rule],
                       check=False)


def test_reverse_nodes_keep_and_take_artifacts(cp, join_agents):
    """Two nodes behind NAT: an output of a task on one is listed and read through the
    relay (and kept by the control plane), and becomes the input of a task on the other:
    its producer cannot be dialled, so the kept copy is sent down the other's channel."""
    import hashlib
    rule = ["!", "-i", "lo", "-p", "tcp", "--syn", "-j", "DROP"]
    subprocess.run(["ip", "netns", "exec", cp["ns"], "iptables", "-A", "INPUT", *rule],
                   check=True)
    try:
        join_agents("nat2", 9311, extra=["--reverse"])
        join_agents("nat3", 9312, extra=["--reverse"])
        m = cp["mount"]
        for n in ("nat2", "nat3"):
            wait_until(lambda: node_status(m, n) == "healthy", 15, what=f"{n} healthy")
        submit(m, "rprod", {"node": "nat2", "outputs": ["w.bin"],
                            "cmd": "head -c 200000 /dev/urandom > w.bin; sha256sum w.bin"})
        assert read_wait(m, "rprod", 30) == "succeeded 0\n"
        digest = m.read("tasks", "rprod", "stdout").split()[0]
        data = m.path("tasks", "rprod", "files", "w.bin").read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        submit(m, "rcons", {"node": "nat3", "inputs": {"w.bin": "rprod/w.bin"},
                            "cmd": "sha256sum w.bin"})
        assert read_wait(m, "rcons", 30) == "succeeded 0\n", m.json("tasks", "rcons", "info")
        assert m.read("tasks", "rcons", "stdout").split()[0] == digest
    finally:
        subprocess.run(["ip", "netns", "exec", cp["ns"], "iptables", "-D", "INPUT", *rule],
                       check=False)
