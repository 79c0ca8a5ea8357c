"""tools/demo.sh as the README runs it (as root), on a port, mountpoint, home and run
directory of its own so that a demo the user runs is left alone: it mounts, runs its task,
and `demo.sh stop` leaves nothing running and nothing mounted."""
import os
import subprocess
import tempfile
from pathlib import Path

from conftest import BUILD, ROOT, free_port, mounted, wait_until


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_demo_and_stop(tmp_path):
    assert os.geteuid() == 0, "the demo runs as root"
    run_dir = tmp_path / "run"
    mnt = Path(tempfile.mkdtemp(prefix="clusterfs-demo-mnt-"))
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "CLUSTERFS_DEMO_DIR": str(run_dir),
           "CLUSTERFS_DEMO_PORT": str(free_port()), "CLUSTERFS_BUILD": str(BUILD)}
    env.pop("SUDO_USER", None)
    env.pop("CLUSTERFS_TOKEN_FILE", None)
    env.pop("XDG_CONFIG_HOME", None)
    demo = [str(ROOT / "tools" / "demo.sh")]
    pids = []
    try:
        r = subprocess.run(demo + [str(mnt)], capture_output=True, text=True, timeout=300,
                           env=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        pids = [int((run_dir / f).read_text()) for f in ("agent.pid", "daemon.pid")]
        assert all(alive(p) for p in pids)
        assert os.path.ismount(mnt)
        assert "succeeded 0\nnobody\n" in r.stdout, r.stdout
        token = home / ".config" / "clusterfs" / "token"
        assert (token.stat().st_mode & 0o777) == 0o600
        # a second run finds what runs and starts nothing new
        r = subprocess.run(demo + [str(mnt)], capture_output=True, text=True, timeout=300,
                           env=env)
        assert r.returncode == 0 and "agent already running" in r.stdout, r.stdout + r.stderr
        r = subprocess.run(demo + ["stop"], capture_output=True, text=True, timeout=60,
                           env=env)
        assert r.returncode == 0, r.stderr
        assert not os.path.ismount(mnt)
        wait_until(lambda: not any(alive(p) for p in pids), 10, what="the demo's processes")
        assert not run_dir.exists()
    finally:
        if mounted(mnt):  # a dead mount too, which os.path.ismount() misses
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        for p in pids:
            if alive(p):
                os.kill(p, 9)
        mnt.rmdir()
