"""Backup by cp: backup/state.db is a consistent copy of the store made at open (sqlite's
online backup API) while submitters go on, and clusterfs --restore brings it back into a
new state directory that a real mount serves. Real daemon, real agent, real sqlite."""
import json
import os
import re
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import DAEMON_BIN, Agent, Mount, make_config, wait_until, write_token

SUBMITTERS = 8


def restore(*args):
    return subprocess.run([str(DAEMON_BIN), "--restore", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """One mount; 8 submitters write while backup/state.db is copied. Yields what each
    submission's close() timing was relative to the open of the copy."""
    tmp = tmp_path_factory.mktemp("backup")
    token = write_token(tmp / "token", "s3cret-" + os.urandom(8).hex())
    agent = Agent(tmp, "n1", token)
    cfg = make_config(tmp / "hosts.json", [agent], token)
    m = Mount(tmp, cfg, state=tmp / "state")
    done = []  # (name, close started, close returned), monotonic
    lock = threading.Lock()
    stop = threading.Event()
    copy_open = {}

    def submitter(i):
        k = 0
        while not stop.is_set():
            name = f"b{i}-{k}"
            k += 1
            t0 = time.monotonic()
            with open(m.path("tasks", "new", f"{name}.json"), "w") as f:
                f.write(json.dumps({"cmd": "true", "env": {"SECRET": "x" * 64}}))
            t1 = time.monotonic()
            with lock:
                done.append((name, t0, t1))

    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(SUBMITTERS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(done) >= 80, 60, what="80 submissions")
        copy = tmp / "state-copy.db"
        copy_open["before"] = time.monotonic()
        subprocess.run(["cp", str(m.path("backup", "state.db")), str(copy)], check=True,
                       timeout=60)
        copy_open["after"] = copy_open["copied"] = time.monotonic()
        n_at_copy = len(done)
        wait_until(lambda: len(done) >= n_at_copy + 40, 60, what="40 more submissions")
    finally:
        stop.set()
        for t in threads:
            t.join()
    st = os.stat(m.path("backup", "state.db"))
    listing = os.listdir(m.path("backup"))
    state_files = sorted(os.listdir(tmp / "state"))
    yield {"tmp": tmp, "copy": copy, "done": done, "times": copy_open, "cfg": cfg,
           "mode": st.st_mode & 0o7777, "uid": st.st_uid, "listing": listing,
           "state_files": state_files, "mount": m}
    m.stop()
    agent.stop()


def test_copy_is_consistent(copied):
    t = copied["times"]
    before = {n for n, _, t1 in copied["done"] if t1 < t["before"]}
    after = {n for n, t0, _ in copied["done"] if t0 > t["after"]}
    assert len(before) >= 80 and after
    db = sqlite3.connect(copied["copy"])
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("PRAGMA user_version").fetchone() == (5,)
    rows = dict(db.execute("SELECT id, spec FROM tasks"))
    db.close()
    # every task whose close() returned before the open is in the copy; none whose close()
    # began after the open returned is; every row is whole
    assert before <= set(rows)
    assert not after & set(rows)
    for spec in rows.values():
        assert json.loads(spec)["env"]["SECRET"] == "x" * 64
    closes = sorted(t1 - t0 for _, t0, t1 in copied["done"])
    during = sorted(t1 - t0 for _, t0, t1 in copied["done"]
                    if t0 < t["copied"] and t1 > t["before"])
    size = copied["copy"].stat().st_size
    print(f"\nbackup: {size} bytes, {len(rows)} tasks, "
          f" cp {1000 * (t['copied'] - t['before']):.1f} ms; close() p50 over the run"
          f" {1000 * statistics.median(closes):.1f} ms, p50 during the copy"
          f" {1000 * statistics.median(during or [0]):.1f} ms ({len(during)} closes)")


def test_file_is_private_and_leaves_nothing_behind(copied):
    assert copied["listing"] == ["state.db"]
    assert copied["mode"] == 0o400
    assert copied["uid"] == os.geteuid()
    # the copy is an unlinked file: the state directory holds the store alone
    assert all(not f.startswith(".backup") for f in copied["state_files"])
    p = subprocess.run(["runuser", "-u", "nobody", "--", "cat",
                        str(copied["mount"].path("backup", "state.db"))],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "Permission denied" in p.stderr


def test_restore_into_a_new_state_dir_and_mount_it(copied):
    tmp = copied["tmp"]
    new = tmp / "restored"
    r = restore(copied["copy"], "-s", new)
    assert r.returncode == 0, r.stderr
    assert f"into {new}/clusterfs.db (schema version 5)" in r.stdout
    assert oct(os.stat(new / "clusterfs.db").st_mode & 0o777) == "0o600"
    before = {n for n, _, t1 in copied["done"] if t1 < copied["times"]["before"]}
    (tmp / "m-restored").mkdir()
    m = Mount(tmp / "m-restored", copied["cfg"], state=new)
    try:
        names = set(os.listdir(m.path("tasks")))
        assert before <= names
        some = sorted(before)[0]
        assert json.loads(m.read("tasks", some, "spec"))["cmd"] == "true"
        # not even --force replaces a store a running daemon has open
        r = restore(copied["copy"], "-s", new, "--force")
        assert r.returncode == 6
        assert f"is open in process {m.proc.pid}" in r.stderr and "stop it first" in r.stderr
    finally:
        m.stop()

    # a state directory with a store in it is refused without --force, and replaced with it
    r = restore(copied["copy"], "-s", new)
    assert r.returncode == 6
    assert f"state directory {new} is not empty" in r.stderr and "--force" in r.stderr
    r = restore(copied["copy"], "-s", new, "--force")
    assert r.returncode == 0, r.stderr
    db = sqlite3.connect(new / "clusterfs.db")
    assert before <= {row[0] for row in db.execute("SELECT id FROM tasks")}
    db.close()


def test_restore_refuses_what_is_not_a_store(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all, just text\n" * 100)
    r = restore(junk, "-s", tmp_path / "s1")
    assert r.returncode == 7 and "is not an sqlite database" in r.stderr

    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t(x)")
    db.commit()
    db.close()
    r = restore(other, "-s", tmp_path / "s2")
    assert r.returncode == 7 and "is not a clusterfs store" in r.stderr

    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.executescript("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO meta VALUES('instance_id', 'abc');"
                     "CREATE TABLE tasks(id TEXT); PRAGMA user_version=99;")
    db.close()
    r = restore(newer, "-s", tmp_path / "s3")
    assert r.returncode == 7
    assert "has schema version 99, newer than this clusterfs knows (5)" in r.stderr
    # nothing was left in the state directories it refused
    for d in ("s1", "s2", "s3"):
        assert os.listdir(tmp_path / d) == []

    r = restore(tmp_path / "missing.db", "-s", tmp_path / "s4")
    assert r.returncode == 7 and "cannot open" in r.stderr
    r = subprocess.run([str(DAEMON_BIN), "--force", "-s", str(tmp_path / "s5")],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "--force goes with --restore FILE" in r.stderr


def test_restore_refuses_the_store_of_a_detached_daemon(copied, tmp_path):
    """A daemon that detached at mount (no -f) made its store connections after the fork,
    so it holds sqlite's locks and --restore sees it."""
    mnt = Path(tempfile.mkdtemp(prefix="clusterfs-mnt-"))
    state = tmp_path / "state"
    env = {**os.environ, "CLUSTERFS_DEFAULT_AGENT": "127.0.0.1:9",
           "CLUSTERFS_TOKEN_FILE": str(copied["tmp"] / "token")}
    pid = None
    try:
        r = subprocess.run([str(DAEMON_BIN), "-s", str(state), str(mnt)], env=env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: os.path.ismount(mnt), what="detached mount")
        assert "events" in os.listdir(mnt)
        r = restore(copied["copy"], "-s", state, "--force")
        assert r.returncode == 6, r.stderr
        m = re.search(r"is open in process (\d+)", r.stderr)
        assert m, r.stderr
        pid = int(m.group(1))
        assert Path(f"/proc/{pid}/exe").resolve() == DAEMON_BIN.resolve()
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        if pid:
            def gone():
                try:
                    os.kill(pid, 0)
                    return False
                except ProcessLookupError:
                    return True
            wait_until(gone, 30, what="the detached daemon to exit")
        if not os.path.ismount(mnt):
            mnt.rmdir()
    # stopped: now it may be replaced
    r = restore(copied["copy"], "-s", state, "--force")
    assert r.returncode == 0, r.stderr
