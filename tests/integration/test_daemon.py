"""The clusterfs command line: help, version, plain errors and distinct exit codes."""
import os
import shutil
import subprocess

import pytest

from conftest import DAEMON_BIN, Mount, wait_until, write_token


def run(*args, **kw):
    return subprocess.run([str(DAEMON_BIN), *args], capture_output=True, text=True,
                          timeout=20, **kw)


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0
    for opt in ("--config", "--state-dir", "--foreground", "-o", "MOUNTPOINT", "Exit status"):
        assert opt in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("clusterfs ")
    r = run("--bogus")
    assert r.returncode == 2
    r = run()
    assert r.returncode == 2 and "missing MOUNTPOINT" in r.stderr


def test_mountpoint_missing(tmp_path):
    r = run("-f", str(tmp_path / "nope"))
    assert r.returncode == 3
    assert "No such file or directory" in r.stderr


def test_mountpoint_busy(tmp_path, token, agents):
    ags = agents(1)
    m = Mount(tmp_path, None, env={"CLUSTERFS_TOKEN_FILE": str(token)})
    try:
        r = run("-f", "-s", str(tmp_path / "s2"), str(m.mnt))
        assert r.returncode == 3
        assert "busy" in r.stderr
    finally:
        m.stop()


def test_invalid_config(tmp_path):
    (tmp_path / "mnt").mkdir()
    bad = tmp_path / "hosts.json"
    bad.write_text('{"hosts": {"a": {"host": "x", "port": 99999}}}')
    r = run("-f", "-c", str(bad), "-s", str(tmp_path / "s"), str(tmp_path / "mnt"))
    assert r.returncode == 5
    assert f"{bad}:1:" in r.stderr and "port" in r.stderr


def test_state_dir_unwritable(tmp_path):
    (tmp_path / "mnt").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run("-f", "-s", str(blocker / "state"), str(tmp_path / "mnt"),
            env={**os.environ, "CLUSTERFS_TOKEN_FILE": str(tmp_path / "none")})
    assert r.returncode == 6
    assert "state directory" in r.stderr


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_no_dev_fuse(tmp_path):
    (tmp_path / "mnt").mkdir()
    # a private mount namespace whose /dev has no fuse node
    script = f"mount -t tmpfs none /dev && exec {DAEMON_BIN} -f -s {tmp_path}/s {tmp_path}/mnt"
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 4, r.stderr
    assert "/dev/fuse" in r.stderr


def test_default_one_node_cluster(tmp_path):
    """No config: this machine, through an agent on 127.0.0.1 (at the port
    $CLUSTERFS_DEFAULT_AGENT names, so that a demo agent on 8768 does not get in the way)."""
    from conftest import Agent, free_port
    token = write_token(tmp_path / "tok", "default-" + os.urandom(6).hex())
    a = Agent(tmp_path, "self", token, port=free_port())
    try:
        m = Mount(tmp_path, None, env={"CLUSTERFS_TOKEN_FILE": str(token),
                                       "CLUSTERFS_DEFAULT_AGENT": f"127.0.0.1:{a.port}"})
        try:
            names = os.listdir(m.path("nodes"))
            assert len(names) == 1
            h = m.json("nodes", names[0], "health")
            assert h["reachable"] is True, h
            assert m.read("nodes", names[0], "address") == f"127.0.0.1:{a.port}\n"
        finally:
            m.stop()
    finally:
        a.stop()


def test_default_agent_env_invalid(tmp_path):
    (tmp_path / "mnt").mkdir()
    r = run("-f", "-s", str(tmp_path / "s"), str(tmp_path / "mnt"),
            env={**os.environ, "CLUSTERFS_TOKEN_FILE": str(tmp_path / "none"),
                 "CLUSTERFS_DEFAULT_AGENT": "127.0.0.1"})
    assert r.returncode == 5
    assert "CLUSTERFS_DEFAULT_AGENT" in r.stderr and "HOST:PORT" in r.stderr


def test_sigterm_unmounts(tmp_path, token):
    m = Mount(tmp_path, None, env={"CLUSTERFS_TOKEN_FILE": str(token)})
    m.proc.terminate()
    assert m.proc.wait(10) == 0
    assert not os.path.ismount(m.mnt)
    m.stop()
