"""Stopping under load: SIGTERM while submitters write into tasks/new/ ends the daemon
within 2 s and leaves no mount behind; kill -9 leaves nothing hung either; after a
restart every submission whose close() succeeded exists exactly once."""
import os
import signal
import subprocess
import sys
import time

from conftest import Mount, make_config, mounted, wait_until

# A submitter: writes specs into tasks/new/ until it fails, prints each name whose
# close() succeeded (flushed, so a parent sees it even if the child is killed).
SUBMITTER = r"""
import os, sys
new, prefix = sys.argv[1], sys.argv[2]
k = 0
while True:
    name = f"{prefix}-{k}"
    try:
        fd = os.open(os.path.join(new, name + ".json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, b'{"cmd": "true"}')
        os.close(fd)
    except OSError:
        break
    print(name, flush=True)
    k += 1
"""

N_SUBMITTERS = 4


def start_submitters(m, round_no):
    procs = []
    for i in range(N_SUBMITTERS):
        procs.append(subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(m.path("tasks", "new")), f"r{round_no}s{i}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    return procs


def collect(procs):
    """Names the submitters reported; kills any that is still running after 5 s."""
    names = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        names += out.split()
    return names


def wait_submissions(procs, m, n, timeout=10):
    """Waits until the daemon has accepted at least n submissions (tasks/ lists them)."""
    wait_until(lambda: sum(1 for e in os.listdir(m.path("tasks")) if e.startswith("r")) >= n,
               timeout, what=f"{n} submissions")


def check_exactly_once(m, accepted):
    present = [e for e in os.listdir(m.path("tasks")) if e.startswith("r")]
    assert len(present) == len(set(present))
    missing = set(accepted) - set(present)
    assert not missing, f"{len(missing)} accepted submissions lost: {sorted(missing)[:5]}"


def test_sigterm_under_load_exits_promptly(tmp_path, token, agents):
    ag = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ag, token)
    state = tmp_path / "state"
    accepted = []
    times = []
    for rnd in range(20):
        d = tmp_path / f"m{rnd}"
        d.mkdir()
        m = Mount(d, cfg, state=state)
        try:
            check_exactly_once(m, accepted)
            procs = start_submitters(m, rnd)
            wait_submissions(m=m, procs=procs, n=len(accepted) + 20)
            t0 = time.monotonic()
            m.proc.send_signal(signal.SIGTERM)
            try:
                m.proc.wait(2)
            except subprocess.TimeoutExpired:
                m.stop(timeout=1)
                raise AssertionError(f"round {rnd}: clusterfs did not exit within 2 s of SIGTERM")
            times.append(time.monotonic() - t0)
            assert m.proc.returncode == 0
            assert not mounted(m.mnt), f"round {rnd}: the mount is still listed"
            accepted += collect(procs)
        finally:
            m.stop()
            assert not mounted(m.mnt)
    print(f"SIGTERM under load: max {max(times):.3f} s, mean {sum(times) / len(times):.3f} s")
    d = tmp_path / "final"
    d.mkdir()
    m = Mount(d, cfg, state=state)
    try:
        check_exactly_once(m, accepted)
    finally:
        m.stop()


def test_kill9_under_load_leaves_no_hung_mount(tmp_path, token, agents):
    ag = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ag, token)
    state = tmp_path / "state"
    accepted = []
    for rnd in range(5):
        d = tmp_path / f"m{rnd}"
        d.mkdir()
        m = Mount(d, cfg, state=state)
        try:
            check_exactly_once(m, accepted)
            procs = start_submitters(m, rnd)
            wait_submissions(m=m, procs=procs, n=len(accepted) + 20)
            m.proc.kill()
            m.proc.wait(5)
            accepted += collect(procs)
        finally:
            m.stop()
        assert not mounted(m.mnt), f"round {rnd}: a dead mount was left behind"
    d = tmp_path / "final"
    d.mkdir()
    m = Mount(d, cfg, state=state)
    try:
        check_exactly_once(m, accepted)
    finally:
        m.stop()
