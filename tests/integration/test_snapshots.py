"""Snapshots by generation (DESIGN §2): a file is rendered once per change of its data, so
stats and reads of unchanged data agree on bytes, size and mtime; a change shows at the
next open, even for files read through the page cache; nodes/ lists with attributes."""
import json
import os
import time

from conftest import Agent, make_config, wait_until


def quiet_config(tmp_path, ags, token):
    """Probes an hour apart and data that never goes stale: nothing changes by itself."""
    return make_config(tmp_path / "hosts.json", ags, token,
                       probe={"interval_s": 3600, "max_age_ms": 3600000,
                              "stale_after_s": 7200, "offline_after_s": 7200})


def wait_probed(m, n):
    wait_until(lambda: m.json("stats")["nodes"]["reachable"] == n, what="first probes")
    wait_until(lambda: m.json("nodes", "n1", "info").get("kernel"), what="system info")


def test_unchanged_data_holds_still(tmp_path, token, agents, mount):
    ags = agents(2)
    m = mount(quiet_config(tmp_path, ags, token))
    wait_probed(m, 2)
    for parts in (("stats",), ("metrics",), ("topology.json",), ("config",), ("README",),
                  ("nodes", "n1", "info"), ("nodes", "n1", "status"),
                  ("nodes", "n1", "address"), ("nodes", "n2", "capabilities")):
        path = m.path(*parts)
        first = os.stat(path)
        data = path.read_bytes()
        time.sleep(0.05)
        again = os.stat(path)
        name = "/".join(parts)
        assert len(data) == first.st_size, name
        assert (again.st_size, again.st_mtime_ns) == (first.st_size, first.st_mtime_ns), name
        assert path.read_bytes() == data, name
        # a stat that bypasses the kernel's cache reaches the daemon: the same answer
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.fstat(fd).st_size == len(data), name
            assert os.read(fd, len(data) + 4096) == data, name
            assert os.read(fd, 4096) == b"", name  # past the end: 0 at once
        finally:
            os.close(fd)


def test_a_change_shows_at_the_next_open(tmp_path, token, agents, mount):
    ags = agents(2)
    m = mount(quiet_config(tmp_path, ags, token))
    wait_probed(m, 2)
    status = m.path("nodes", "n1", "status")
    # read twice: the second open may keep the page cache of the first
    assert status.read_text() == "healthy\n"
    assert status.read_text() == "healthy\n"
    before = m.json("stats")["nodes"]
    m.path("nodes", "n1", "ctl").write_text("drain\n")
    try:
        # no wait: the drain is a change of the data, seen by the very next open
        assert status.read_text() == "draining\n"
        assert os.stat(status).st_size == len("draining\n")
        after = m.json("stats")["nodes"]
        assert after["draining"] == before["draining"] + 1
        assert m.json("nodes", "n1", "health")["status"] == "draining"
    finally:
        m.path("nodes", "n1", "ctl").write_text("resume\n")
    assert status.read_text() == "healthy\n"
    assert m.json("stats")["nodes"]["draining"] == before["draining"]


def test_nodes_listed_with_attributes(tmp_path, token, agents, mount):
    ags = agents(3)
    m = mount(quiet_config(tmp_path, ags, token))
    wait_probed(m, 3)
    with os.scandir(m.path("nodes")) as it:
        entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
    assert entries == [("n1", True), ("n2", True), ("n3", True)]
    for name in ("n1", "n2", "n3"):
        st = os.stat(m.path("nodes", name))
        assert oct(st.st_mode & 0o777) == "0o555"
        assert m.read("nodes", name, "status") == "healthy\n"
    with os.scandir(m.path("tasks")) as it:
        names = sorted(e.name for e in it)
    assert names == ["done", "failed", "new", "queued", "running"]
    assert oct(os.stat(m.path("tasks", "new")).st_mode & 0o7777) == "0o1777"


def agree(path):
    """Two stats and a read of unchanged data: the same size, mtime and bytes (the stat
    through an open descriptor too). Returns (stat, bytes)."""
    first = os.stat(path)
    data = path.read_bytes()
    again = os.stat(path)
    assert len(data) == first.st_size, path
    assert (again.st_size, again.st_mtime_ns) == (first.st_size, first.st_mtime_ns), path
    assert path.read_bytes() == data, path
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == len(data), path
        assert os.read(fd, len(data) + 4096) == data, path
        assert os.read(fd, 4096) == b"", path
    finally:
        os.close(fd)
    return first, data


def settled(path):
    """True when two stats and reads agree across more than the kernel's attribute
    timeout (1 s): the data behind path holds still, not just the attributes the kernel
    keeps."""
    first = os.stat(path)
    data = path.read_bytes()
    time.sleep(1.2)
    again = os.stat(path)
    return ((len(data), first.st_mtime_ns) == (again.st_size, again.st_mtime_ns) and
            path.read_bytes() == data)


def shows(path, old):
    """Waits until a stat of path reports other bytes than old (the kernel may keep the
    attributes for their timeout) and they hold still (a ledger's delivery is followed by
    a fetch), then checks that the stat and a read agree."""
    wait_until(lambda: (os.stat(path).st_size != len(old) or path.read_bytes() != old) and
               settled(path), what=f"{path} changed")
    st, data = agree(path)
    assert data != old
    return st, data


def test_task_files_hold_still_and_change_with_the_task(tmp_path, token, agents, mount):
    ags = agents(1)
    m = mount(quiet_config(tmp_path, ags, token))
    wait_probed(m, 1)
    with open(m.path("tasks", "new", "snap.json"), "w") as f:
        f.write('{"cmd": "sleep 30"}')
    status = m.path("tasks", "snap", "status")
    wait_until(lambda: status.read_text() == "running\n", what="running")
    files = {n: agree(m.path("tasks", "snap", n)) for n in
             ("status", "info", "spec", "node", "exit_code", "ctl")}
    assert files["status"][1] == b"running\n"
    assert files["node"][1] == b"n1\n"
    m.path("tasks", "snap", "ctl").write_text("cancel\n")
    assert m.read("tasks", "snap", "wait").startswith("cancelled")
    # status has no attribute timeout: the very next stat shows the new state
    assert os.stat(status).st_size == len("cancelled\n")
    st, data = agree(status)
    assert data == b"cancelled\n"
    assert st.st_mtime_ns >= files["status"][0].st_mtime_ns
    _, info = shows(m.path("tasks", "snap", "info"), files["info"][1])
    assert json.loads(info)["state"] == "cancelled"
    # unchanged: spec
    assert agree(m.path("tasks", "snap", "spec"))[1] == files["spec"][1]


def test_ledger_file_holds_still_and_shows_a_new_entry(tmp_path, token, mount):
    trainer = Agent(tmp_path, "trainer", token, extra=("--ledger", str(tmp_path / "l.db")))
    try:
        cfg = quiet_config(tmp_path, [trainer], token)
        d = json.loads(cfg.read_text())
        d["hosts"]["trainer"]["services"]["ledger"] = {"port": trainer.port,
                                                       "path": "/api/ledger"}
        cfg.write_text(json.dumps(d))
        m = mount(cfg)

        def record(step, loss):
            with open(m.path("ledger", "record"), "w") as f:
                f.write(json.dumps({"step": step, "metrics": {"val_loss": loss},
                                    "path": f"/ckpt/{step}"}))

        record(100, 0.9)
        summary = m.path("ledger", "summary")
        wait_until(lambda: json.loads(summary.read_text())["count"] == 1 and
                   json.loads(summary.read_text())["pending"] == 0, what="delivery")
        # the delivery's own fetch may still land: wait for the ledger to settle
        wait_until(lambda: settled(summary), what="ledger settled")
        _, old = agree(summary)
        agree(m.path("ledger", "entries", "100"))
        record(200, 0.5)
        _, new = shows(summary, old)
        n = json.loads(new)
        assert n["count"] == 2 and n["last_step"] == 200  # queued records count too
    finally:
        trainer.stop()


def test_model_file_holds_still_and_shows_a_pull(tmp_path, token, agents, mount):
    from test_models import Ollama, config_with_models
    ags = agents(2)
    o1 = Ollama(tmp_path, ["qwen3:8b", "llama3.2:1b"], steps=2, delay_ms=50)
    o2 = Ollama(tmp_path, ["qwen3:8b"], steps=2, delay_ms=50)
    try:
        m = mount(config_with_models(tmp_path, ags, token, {
            "n1": {"ollama": {"port": o1.port}}, "n2": {"ollama": {"port": o2.port}}}))
        nodes = m.path("models", "llama3.2:1b", "nodes")
        _, old = agree(nodes)
        assert old == b"n1\n"
        agree(m.path("models", "llama3.2:1b", "info"))
        with open(m.path("nodes", "n2", "models", "ctl"), "w") as f:
            f.write("pull llama3.2:1b\n")
        _, new = shows(nodes, old)
        assert new == b"n1\nn2\n"
    finally:
        o1.stop()
        o2.stop()
