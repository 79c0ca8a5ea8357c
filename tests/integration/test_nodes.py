"""The nodes/ tree against real agents on loopback and a real mount."""
import errno
import json
import os
import threading
import time

import pytest

from conftest import make_config, wait_until, write_token


def health(m, name):
    return m.json("nodes", name, "health")


def test_three_agents_health(tmp_path, token, agents, mount):
    ags = agents(3)
    m = mount(make_config(tmp_path / "hosts.json", ags, token))
    assert sorted(os.listdir(m.path("nodes"))) == ["n1", "n2", "n3"]
    for a in ags:
        h = health(m, a.name)
        assert h["node"] == a.name
        assert h["reachable"] is True, h
        assert h["status"] == "healthy", h
        assert h["reasons"] == []
        assert h["cores"] >= 1
        assert 0 <= h["mem_percent"] <= 100
        assert 0 <= h["cpu_percent"] <= 100
        assert len(h["load"]) == 3
        assert h["checked_at"].endswith("Z")
        assert h["age_s"] < 2
        assert h["latency_ms"] > 0
        assert m.read("nodes", a.name, "status") == "healthy\n"
        assert m.read("nodes", a.name, "address") == f"127.0.0.1:{a.port}\n"
        assert m.read("nodes", a.name, "role") == "worker\n"
    # info comes from /api/node/system
    info = wait_until(lambda: (i := m.json("nodes", "n1", "info")).get("kernel") and i,
                      what="system info")
    assert info["cores"] >= 1 and info["ram_mb"] > 0
    assert m.read("nodes", "n1", "tier").strip() in ("light", "standard", "powerhouse")
    stats = m.json("stats")
    assert stats["nodes"]["total"] == 3
    assert stats["nodes"]["healthy"] == 3
    assert stats["capacity"]["cores"] >= 3


def test_levels_from_thresholds(tmp_path, token, agents, mount):
    # Real memory use is above 0.1% and below 99.9%: warning. Nothing is faked.
    ags = agents(2)
    cfg = make_config(tmp_path / "hosts.json", ags, token,
                      thresholds={"memory": [0.1, 99.9]})
    m = mount(cfg)
    h = health(m, "n1")
    assert h["status"] == "warning", h
    assert any(r.startswith("memory ") and "warning" in r for r in h["reasons"]), h
    assert m.read("nodes", "n1", "status") == "warning\n"
    # critical: both limits below the real figure; a live edit applies it
    make_config(cfg, ags, token, thresholds={"memory": [0.1, 0.2]})
    wait_until(lambda: health(m, "n2")["status"] == "critical", what="critical")
    h = health(m, "n2")
    assert any("critical 0.2%" in r for r in h["reasons"]), h
    alerts = m.read("alerts")
    assert "node n2 critical: memory" in alerts


def test_wrong_token_shows_unauthorized(tmp_path, token, agents, mount):
    ags = agents(1)
    wrong = write_token(tmp_path / "wrong", "not-the-token")
    m = mount(make_config(tmp_path / "hosts.json", ags, wrong))
    h = health(m, "n1")
    assert h["reachable"] is False
    assert h["failures"] >= 1
    assert any(r.startswith("unauthorized") for r in h["reasons"]), h
    assert "HTTP 401" in h["last_error"]
    # the token itself never shows in the tree
    for f in ("config", "nodes/n1/health", "nodes/n1/info", "events", "alerts"):
        assert "not-the-token" not in m.read(*f.split("/"))


def test_dead_host_does_not_block(tmp_path, token, agents, mount):
    ags = agents(3)
    m = mount(make_config(tmp_path / "hosts.json", ags, token,
                          probe={"timeout_ms": 1000, "interval_s": 2}))
    for a in ags:
        assert health(m, a.name)["reachable"]
    ags[1].pause()
    time.sleep(1.1)  # let the cached data age past max_age, so opens probe again

    # While n2's open waits for its probe, the others answer without waiting for it.
    done = {}

    def slow():
        t = time.monotonic()
        done["h"] = health(m, "n2")
        done["t"] = time.monotonic() - t
        done["at"] = time.monotonic()

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.05)
    others_at = []
    for name in ("n1", "n3"):
        os.listdir(m.path("nodes", name))
        os.stat(m.path("nodes", name, "health"))
        assert health(m, name)["reachable"]
        others_at.append(time.monotonic())
    th.join(10)
    assert not th.is_alive()
    assert max(others_at) < done["at"], "reads of healthy nodes waited for the dead one"
    h = done["h"]
    assert h["reachable"] is False
    assert h["age_s"] >= 1.0
    assert h["checked_at"] is not None  # the last known state, with its age
    assert "cpu_percent" in h
    assert any(r.startswith("unreachable") for r in h["reasons"]), h
    # the bound the design promises: the probe timeout plus one second
    assert done["t"] < 1.0 + 1.0, done["t"]

    t = time.monotonic()
    out = [health(m, a.name) for a in ags]  # cat nodes/*/health
    assert time.monotonic() - t < 1.0 + 1.0
    assert [o["reachable"] for o in out] == [True, False, True]

    # three failures in a row: unhealthy, and answered at once from the last state
    wait_until(lambda: m.read("nodes", "n2", "status") == "unhealthy\n", 15, what="unhealthy")
    t = time.monotonic()
    health(m, "n2")
    assert time.monotonic() - t < 1.0 + 1.0

    ags[1].resume()
    wait_until(lambda: health(m, "n2")["reachable"], 10, what="recovery")
    assert m.read("nodes", "n2", "status") == "healthy\n"
    ev = m.read("events")
    assert "node n2 " in ev and "unhealthy" in ev and "reachable again" in ev


def test_config_edit_in_place_and_rename(tmp_path, token, agents, mount):
    ags = agents(3)
    cfg = tmp_path / "hosts.json"
    make_config(cfg, ags[:1], token)
    m = mount(cfg)
    assert os.listdir(m.path("nodes")) == ["n1"]

    # in place: open, truncate, write
    with open(cfg, "r+") as f:
        text = f.read()
        f.seek(0)
        f.truncate()
        d = json.loads(text)
        d["hosts"]["n2"] = {"host": "127.0.0.1", "services": {"agent": {"port": ags[1].port}}}
        f.write(json.dumps(d))
    wait_until(lambda: sorted(os.listdir(m.path("nodes"))) == ["n1", "n2"], what="n2 added")
    assert health(m, "n2")["reachable"]

    # rename over, as editors save: add n3, drop n1
    tmp = tmp_path / ".hosts.json.swp"
    make_config(tmp, ags[1:], token)
    os.rename(tmp, cfg)
    wait_until(lambda: sorted(os.listdir(m.path("nodes"))) == ["n2", "n3"], what="rename-over")
    with pytest.raises(FileNotFoundError):
        os.stat(m.path("nodes", "n1", "health"))
    assert health(m, "n3")["reachable"]
    ev = m.read("events")
    assert "added n2" in ev and "added n3" in ev and "removed n1" in ev


def test_invalid_edit_keeps_last_good_config(tmp_path, token, agents, mount):
    ags = agents(2)
    cfg = make_config(tmp_path / "hosts.json", ags, token)
    m = mount(cfg)
    cfg.write_text('{\n  "hosts": {\n    "n1": {"host": "127.0.0.1",,}\n  }\n}\n')
    alert = wait_until(lambda: [l for l in m.read("alerts").splitlines()
                                if l.startswith("config error")], what="config alert")
    assert f"{cfg}:3:" in alert[0], alert
    assert sorted(os.listdir(m.path("nodes"))) == ["n1", "n2"]
    assert health(m, "n2")["reachable"]
    # a semantic error is located too
    make_config(cfg, ags, token, probe={"timeout_ms": "soon"})
    wait_until(lambda: "timeout_ms" in m.read("alerts"), what="semantic alert")
    # fixing it clears the alert
    make_config(cfg, ags[:1], token)
    wait_until(lambda: os.listdir(m.path("nodes")) == ["n1"], what="fixed config")
    assert "config error" not in m.read("alerts")


def test_inode_numbers_stable_across_restart(tmp_path, token, agents, mount):
    ags = agents(2)
    cfg = make_config(tmp_path / "hosts.json", ags, token)
    paths = ["", "nodes", "nodes/n1", "nodes/n2/health", "README", "stats", "events"]
    m = mount(cfg)
    before = {p: os.stat(m.path(*p.split("/")) if p else m.mnt).st_ino for p in paths}
    m.stop()
    m2 = mount(cfg)
    after = {p: os.stat(m2.path(*p.split("/")) if p else m2.mnt).st_ino for p in paths}
    assert before == after
    assert len(set(before.values())) == len(paths)


def test_sizes_modes_and_errors(tmp_path, token, agents, mount):
    ags = agents(1)
    m = mount(make_config(tmp_path / "hosts.json", ags, token))
    for f in ["README", "config", "stats", "alerts", "metrics", "topology.json",
              "topology.dot", "nodes/n1/status", "nodes/n1/address", "nodes/n1/role",
              "nodes/n1/tier", "nodes/n1/capabilities", "nodes/n1/info"]:
        p = m.path(*f.split("/"))
        st = os.stat(p)
        assert st.st_mode & 0o777 == 0o444, f
        assert st.st_size == len(p.read_bytes()), f
    assert os.stat(m.path("nodes")).st_mode & 0o777 == 0o555
    assert os.stat(m.path("README")).st_size > 0
    # what a shell user expects
    with pytest.raises(FileNotFoundError):
        open(m.path("nope"))
    with pytest.raises(FileNotFoundError):
        open(m.path("nodes", "ghost", "health"))
    with pytest.raises(PermissionError):
        open(m.path("README"), "w")
    with pytest.raises(PermissionError):
        open(m.path("nodes", "n1", "status"), "a")
    with pytest.raises(PermissionError):
        os.mkdir(m.path("nodes", "x"))
    with pytest.raises(PermissionError):
        open(m.path("newfile"), "w")
    with pytest.raises(NotADirectoryError):
        os.listdir(m.path("README"))
    with pytest.raises(OSError) as e:
        os.unlink(m.path("README"))
    assert e.value.errno in (errno.EACCES, errno.EPERM)


def test_events_grow_for_tail(tmp_path, token, agents, mount):
    ags = agents(2)
    cfg = make_config(tmp_path / "hosts.json", ags, token)
    m = mount(cfg)
    with open(m.path("events"), "rb") as f:
        first = f.read()
        assert b"cluster test started" in first
        make_config(cfg, ags[:1], token)  # an event: n2 removed
        grown = b""

        def more():
            nonlocal grown
            grown += f.read()
            return b"removed n2" in grown

        wait_until(more, what="events to grow on an open file")
        assert os.fstat(f.fileno()).st_size >= len(first) + len(grown)


def test_secrets_never_shown(tmp_path, token, agents, mount):
    ags = agents(1)
    m = mount(make_config(tmp_path / "hosts.json", ags, token))
    secret = token.read_text().strip()
    cfgtext = m.read("config")
    assert secret not in cfgtext
    assert "(redacted)" in cfgtext
    assert secret not in m.log_path.read_text()


def test_file_handles_survive_restart(tmp_path, token, agents):
    """What an NFS re-export relies on: a file handle taken before a restart of the daemon
    opens the same file after it (export support, stable inode numbers, "." lookups)."""
    import ctypes
    from conftest import Mount

    libc = ctypes.CDLL(None, use_errno=True)

    class FileHandle(ctypes.Structure):
        _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                    ("f_handle", ctypes.c_ubyte * 128)]

    ags = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ags, token)
    (tmp_path / "a").mkdir()
    m = Mount(tmp_path / "a", cfg)
    mnt = m.mnt
    handles = {}
    try:
        for rel in ("nodes/n1/address", "README", "nodes/n1"):
            fh = FileHandle(handle_bytes=128)
            mount_id = ctypes.c_int()
            r = libc.name_to_handle_at(-100, str(mnt / rel).encode(), ctypes.byref(fh),
                                       ctypes.byref(mount_id), 0)
            assert r == 0, os.strerror(ctypes.get_errno())
            handles[rel] = fh
        expect = m.read("nodes", "n1", "address")
    finally:
        m.proc.terminate()
        m.proc.wait(10)
    (tmp_path / "b").mkdir()
    m2 = Mount(tmp_path / "b", cfg, mnt=mnt)
    try:
        mfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for rel, fh in handles.items():
                # a fresh daemon has never seen these inode numbers
                flags = os.O_RDONLY | (os.O_DIRECTORY if rel == "nodes/n1" else 0)
                fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), flags)
                assert fd >= 0, (rel, os.strerror(ctypes.get_errno()))
                if rel == "nodes/n1/address":
                    assert os.read(fd, 4096).decode() == expect
                elif rel == "nodes/n1":
                    assert "health" in os.listdir(fd)
                os.close(fd)
        finally:
            os.close(mfd)
    finally:
        m2.stop()


def test_seed_config_mounts_as_it_is(tmp_path, mount):
    """The seed's hosts.json (placeholder addresses, no agents) loads and mounts; its
    hosts are shown unreachable within the probe timeout, and its ledger is found."""
    from conftest import ROOT
    cfg = ROOT / "tests" / "config" / "seed-architecture-plan.json"
    m = mount(cfg, env={"CLUSTERFS_TOKEN_FILE": str(tmp_path / "no-token")})
    assert sorted(os.listdir(m.path("nodes"))) == ["3090", "4090"]
    assert m.read("nodes", "4090", "role") == "trainer\n"
    info = m.json("nodes", "4090", "info")
    assert info["display_name"] == "Training Server"
    t = time.monotonic()
    h = health(m, "3090")
    assert time.monotonic() - t < 2.0 + 1.0
    assert h["reachable"] is False
    assert h["reasons"] and h["last_error"]
    src = m.json("ledger", "source")
    assert src["host"] == "4090" and src["url"].endswith(":8767/api/ledger")


@pytest.fixture
def dark_host():
    """A host that never answers: an address of a network namespace this test makes, on a
    veth whose far end answers no ARP, so connections hang as they do to a powered-off
    machine. Torn down afterwards."""
    import subprocess
    tag = f"{os.getpid() % 10000}"
    ns, a, b = f"cfs-dark-{tag}", f"cfd{tag}a", f"cfd{tag}b"
    net = f"10.213.{os.getpid() % 250}"

    def ip(*args, check=True):
        return subprocess.run(["ip", *args], check=check, capture_output=True)

    ip("netns", "add", ns)
    try:
        ip("link", "add", a, "type", "veth", "peer", "name", b)
        ip("link", "set", b, "netns", ns)
        ip("addr", "add", f"{net}.1/30", "dev", a)
        ip("link", "set", a, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", b)
        ip("netns", "exec", ns, "ip", "link", "set", b, "arp", "off")
        ip("netns", "exec", ns, "ip", "link", "set", b, "up")
        yield f"{net}.2"
    finally:
        ip("link", "del", a, check=False)
        ip("netns", "del", ns, check=False)


def test_blackholed_host_does_not_block(tmp_path, token, agents, mount, dark_host):
    ags = agents(2)
    cfg = make_config(tmp_path / "hosts.json", ags, token, probe={"timeout_ms": 1000})
    d = json.loads(cfg.read_text())
    # plain HTTP to a non-loopback address is refused unless the config allows it
    d["hosts"]["dark"] = {"host": dark_host, "role": "gpu", "insecure_http": True}
    d["services"] = {"oracle": {"host": "dark", "port": 5050, "insecure_http": True,
                                "files": {"status": {"get": "/api/oracle/status"}}}}
    cfg.write_text(json.dumps(d))
    m = mount(cfg)
    done = {}

    def slow():
        t = time.monotonic()
        done["h"] = health(m, "dark")
        done["t"] = time.monotonic() - t
        done["at"] = time.monotonic()

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.05)
    others = []
    for name in ("n1", "n2"):
        assert health(m, name)["reachable"]
        os.stat(m.path("nodes", name, "status"))
        others.append(time.monotonic())
    th.join(10)
    assert max(others) < done["at"], "healthy nodes waited for the dark one"
    assert done["t"] < 1.0 + 1.0
    assert done["h"]["reachable"] is False
    assert any("no answer within 1000 ms" in r for r in done["h"]["reasons"]), done["h"]
    # a service on that host fails at the deadline with ETIMEDOUT
    t = time.monotonic()
    with pytest.raises(OSError) as e:
        m.read("services", "oracle", "status")
    assert e.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - t < 1.0 + 1.0
    assert m.read("nodes", "dark", "status") in ("unknown\n", "unhealthy\n", "stale\n")


def test_cluster_health_one_file(tmp_path, token, agents, mount):
    """/health: every node's health document in one object, fresh after one round of
    probes; a stopped agent holds the answer no longer than the probe timeout."""
    ags = agents(3)
    cfg = make_config(tmp_path / "hosts.json", ags, token,
                      probe={"interval_s": 3600, "max_age_ms": 200, "timeout_ms": 1000})
    m = mount(cfg)
    assert "health" in os.listdir(m.mnt)
    doc = m.json("health")
    assert sorted(doc) == ["n1", "n2", "n3"]
    for a in ags:
        assert doc[a.name]["reachable"] is True and doc[a.name]["node"] == a.name
        # the same document as the node's own file, field for field
        own = health(m, a.name)
        assert set(doc[a.name]) == set(own)
    first = {n: d["checked_at"] for n, d in doc.items()}
    time.sleep(1.1)  # older than max_age_ms (and a second later, for checked_at)
    doc = m.json("health")
    assert all(doc[n]["checked_at"] != first[n] for n in doc), "an open refreshes stale nodes"
    ags[1].pause()
    try:
        time.sleep(0.3)
        t = time.monotonic()
        doc = m.json("health")
        took = time.monotonic() - t
        assert doc["n2"]["reachable"] is False, doc["n2"]
        assert doc["n1"]["reachable"] and doc["n3"]["reachable"]
        assert took < 1.0 + 0.5, took
    finally:
        ags[1].resume()
    # while no probe runs, stat and read agree and two reads are the same bytes
    for parts in (("nodes", "n2", "info"), ("stats",), ("topology.json",), ("metrics",)):
        p = m.path(*parts)
        size = os.stat(p).st_size
        data = p.read_bytes()
        assert size == len(data), parts
        assert p.read_bytes() == data, parts


def test_documents_hold_still(tmp_path, token, agents, mount):
    """Nothing in a document moves with the clock alone: between two probes, stat and
    every read of health give the same size and bytes (NFS and SMB clients read up to
    the st_size they saw). age_s is the age as of the last probe attempt."""
    ags = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ags, token,
                      probe={"interval_s": 3600, "max_age_ms": 3600000})
    m = mount(cfg)
    p = m.path("nodes", "n1", "health")
    first = p.read_bytes()
    time.sleep(1.2)
    for path in (p, m.path("health")):
        size = os.stat(path).st_size
        data = path.read_bytes()
        assert size == len(data)
        time.sleep(0.3)
        assert path.read_bytes() == data
    assert p.read_bytes() == first
    assert json.loads(first)["age_s"] < 1.0
