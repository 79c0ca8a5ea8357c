"""Snapshots by generation (DESIGN §2): a file is rendered once per change of its data, so
stats and reads of unchanged data agree on bytes, size and mtime; a change shows at the
next open, even for files read through the page cache; nodes/ lists with attributes."""
import os
import time

from conftest import make_config, wait_until


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
