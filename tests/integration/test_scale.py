"""Many finished tasks: a store pre-filled with 20,000 of them by clusterfs-store-fill
(the daemon's own store module and schema) lists completely and exactly once through
every task directory, also while tasks are added and finish; a finished task that is not
in memory any more reads the same before and after a restart; the retention removes
output and records as configured and says so; the counts in stats are right after a
restart. Real daemon, real agents, real sqlite."""
import json
import os
import sqlite3
import subprocess
import threading

from conftest import BUILD, DAEMON_BIN, make_config, wait_until

FILL_BIN = BUILD / "tools" / "clusterfs-store-fill"
N_OLD = 20000
PRUNED = "[clusterfs: output removed by the retention policy (tasks.retention) at "


def fill(state, n=N_OLD, nodes=2, age_s=60, prefix="old"):
    """old-0..old-(n-1), ended age_s ago and before; every 10th (k % 10 == 9) failed."""
    state.mkdir(exist_ok=True)
    subprocess.run([str(FILL_BIN), "-s", str(state), "-n", str(n), "-N", str(nodes), "-t",
                    str(age_s), "-p", prefix], check=True, timeout=300)


def submit(m, name, spec):
    with open(m.path("tasks", "new", f"{name}.json"), "w") as f:
        f.write(json.dumps(spec))


def wait_task(m, name, timeout=60):
    out = {}

    def reader():
        out["v"] = m.read("tasks", name, "wait")

    t = threading.Thread(target=reader)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"wait for {name} did not return within {timeout}s"
    return out["v"]


def old_ids(pred=lambda k: True, n=N_OLD):
    return {f"old-{k}" for k in range(n) if pred(k)}


def listing(m, *parts):
    names = os.listdir(m.path(*parts))
    assert len(names) == len(set(names)), f"{'/'.join(parts)} lists a name twice"
    return set(names)


def test_listings_are_complete_and_exact_while_tasks_change(tmp_path, token, agents, mount):
    ags = agents(2)
    state = tmp_path / "state"
    fill(state)
    cfg = make_config(tmp_path / "hosts.json", ags, token, probe={"interval_s": 1},
                      tasks={"allow_root": True, "finished_cached": 100})
    m = mount(cfg, state=state)
    wait_until(lambda: m.json("stats")["nodes"]["reachable"] == 2, what="both nodes probed")

    ok, bad = old_ids(lambda k: k % 10 != 9), old_ids(lambda k: k % 10 == 9)
    on_n1 = old_ids(lambda k: k % 2 == 0)
    stop = threading.Event()
    submitted = []

    def churn():
        i = 0
        while not stop.is_set() and i < 60:
            name = f"new-{i}"
            submit(m, name, {"cmd": "sleep 0.05; echo %d" % i if i % 3 else "exit 3"})
            submitted.append(name)
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(3):
            done = listing(m, "tasks", "done")
            assert ok <= done and not (done & bad)
            failed = listing(m, "tasks", "failed")
            assert bad <= failed and not (failed & ok)
            every = listing(m, "tasks")
            assert old_ids() | {"new", "done", "failed", "queued", "running"} <= every
            n1 = listing(m, "nodes", "n1", "tasks")
            assert on_n1 <= n1 and not (n1 & (old_ids() - on_n1))
            listing(m, "tasks", "queued")
            listing(m, "tasks", "running")
    finally:
        stop.set()
        t.join()
    for name in submitted:
        wait_task(m, name)

    # at rest: exactly what is there, no more
    new_ok = {n for n in submitted if int(n.split("-")[1]) % 3}
    new_bad = set(submitted) - new_ok
    assert listing(m, "tasks", "done") == ok | new_ok
    assert listing(m, "tasks", "failed") == bad | new_bad
    assert listing(m, "tasks") == old_ids() | set(submitted) | {
        "new", "done", "failed", "queued", "running"}
    assert listing(m, "tasks", "running") == set() and listing(m, "tasks", "queued") == set()
    # a name looked up in a group is there only when the task is in it
    assert os.readlink(m.path("tasks", "done", "old-0")) == "../old-0"
    assert not os.path.lexists(m.path("tasks", "failed", "old-0"))
    assert os.path.lexists(m.path("tasks", "failed", "old-9"))
    assert m.read("tasks", "done", "old-0", "status") == "succeeded\n"


def test_evicted_tasks_read_the_same_after_a_restart(tmp_path, token, agents, mount):
    ags = agents(2)
    state = tmp_path / "state"
    fill(state)
    # no finished task stays in memory: every read below comes from the store
    cfg = make_config(tmp_path / "hosts.json", ags, token, probe={"interval_s": 1},
                      tasks={"allow_root": True, "finished_cached": 0})
    m = mount(cfg, state=state)
    wait_until(lambda: m.json("stats")["nodes"]["reachable"] == 2, what="both nodes probed")
    submit(m, "fresh", {"cmd": "echo out-of-fresh; echo err-of-fresh >&2; exit 4"})
    assert wait_task(m, "fresh") == "failed 4\n"
    submit(m, "fine", {"cmd": ["echo", "fine"]})
    assert wait_task(m, "fine") == "succeeded 0\n"

    def snapshot(mm):
        got = {}
        for tid in ("fresh", "fine", "old-0", "old-9", f"old-{N_OLD - 1}"):
            info = mm.json("tasks", tid, "info")
            got[tid] = (mm.read("tasks", tid, "status"), mm.read("tasks", tid, "exit_code"),
                        mm.read("tasks", tid, "node"), mm.json("tasks", tid, "spec"),
                        mm.read("tasks", tid, "stdout"), mm.read("tasks", tid, "stderr"),
                        mm.read("tasks", tid, "wait"),
                        {k: info[k] for k in ("id", "state", "exit_code", "node",
                                              "stdout_bytes", "stderr_bytes", "submitter",
                                              "finished_at", "attempts")})
        stats = mm.json("stats")["tasks"]
        per_node = {a.name: mm.read("nodes", a.name, "reliability") for a in ags}
        return got, stats, per_node

    before, stats, rel = snapshot(m)
    f = before["fresh"]
    assert f[0] == "failed\n" and f[1] == "4\n" and f[4] == "out-of-fresh\n"
    assert f[5] == "err-of-fresh\n" and f[7]["stdout_bytes"] == len("out-of-fresh\n")
    assert f[3]["cmd"] == "echo out-of-fresh; echo err-of-fresh >&2; exit 4"
    assert before["old-0"][4] == "hello from old-0\n" and before["old-0"][0] == "succeeded\n"
    assert before["old-9"][0] == "failed\n" and before["old-9"][1] == "1\n"
    assert before["old-0"][3]["cmd"] == ["echo", "hello"]
    # the counts: 18,000 + 1 succeeded, 2,000 + 1 failed
    assert stats["total"] == N_OLD + 2
    assert stats["done"] == N_OLD * 9 // 10 + 1 and stats["failed"] == N_OLD // 10 + 1
    assert stats["running"] == 0 and stats["queued"] == 0
    m.stop()

    m2 = mount(cfg, state=state)
    wait_until(lambda: m2.json("stats")["nodes"]["reachable"] == 2, what="both nodes probed")
    after, stats2, rel2 = snapshot(m2)
    assert after == before
    assert stats2 == stats
    assert rel2 == rel
    # the history behind reliability is the store's: every task ended on n1 or n2
    db = sqlite3.connect(state / "clusterfs.db")
    done, total = db.execute("SELECT sum(state='succeeded'), count(*) FROM tasks WHERE node"
                             " IN ('n1', 'n2')").fetchone()
    db.close()
    assert (done, total) == (stats["done"], stats["total"])


def test_retention_by_size_keeps_the_newest_output(tmp_path, token, agents, mount):
    ags = agents(1)
    state = tmp_path / "state"
    fill(state, nodes=1)
    # about 100 bytes: only the newest few tasks keep their output
    cfg = make_config(tmp_path / "hosts.json", ags, token,
                      tasks={"allow_root": True, "retention": {"output_mb": 0.0001}})
    m = mount(cfg, state=state)
    wait_until(lambda: m.read("tasks", f"old-{N_OLD - 10}", "stdout").startswith(PRUNED),
               timeout=60, what="the retention to reach the newest tasks")
    out = m.read("tasks", "old-0", "stdout")
    assert out.startswith(PRUNED) and out.endswith("]\n")
    assert m.json("tasks", "old-0", "info")["stdout_bytes"] == len(out)
    assert m.read("tasks", "old-0", "stderr") == ""  # nothing was there: nothing to say
    assert m.read("tasks", f"old-{N_OLD - 1}", "stdout") == f"hello from old-{N_OLD - 1}\n"
    # the records stay
    assert m.read("tasks", "old-0", "status") == "succeeded\n"
    assert m.json("stats")["tasks"]["total"] == N_OLD
    db = sqlite3.connect(state / "clusterfs.db")
    kept = db.execute("SELECT sum(length(data)) FROM output WHERE data NOT LIKE '[clusterfs:%'"
                      ).fetchone()[0]
    total = db.execute("SELECT value FROM totals WHERE key='output_bytes'").fetchone()[0]
    real = db.execute("SELECT sum(length(data)) FROM output").fetchone()[0]
    db.close()
    assert 0 < kept <= 105 and total == real


def test_retention_by_age_of_output_and_records(tmp_path, token, agents, mount):
    ags = agents(1)
    state = tmp_path / "state"
    # 2,000 tasks that ended ten days ago and more, 2,000 that ended a minute ago
    fill(state, n=2000, nodes=1, age_s=10 * 86400, prefix="ancient")
    fill(state, n=2000, nodes=1, age_s=60, prefix="old")
    cfg = make_config(tmp_path / "hosts.json", ags, token, probe={"interval_s": 1}, tasks={
        "allow_root": True, "retention": {"output_days": 2 / 86400, "records_days": 5}})
    m = mount(cfg, state=state)
    wait_until(lambda: not m.path("tasks", "ancient-1999").exists(), timeout=60,
               what="the ancient records to go")
    wait_until(lambda: m.read("tasks", "old-1999", "stdout").startswith(PRUNED), timeout=60,
               what="the output of a minute ago to go")
    assert not m.path("tasks", "ancient-0").exists()
    assert "ancient-5" not in os.listdir(m.path("tasks", "done"))
    assert m.read("tasks", "old-0", "status") == "succeeded\n"
    wait_until(lambda: m.json("stats")["tasks"]["total"] == 2000, what="the counts to drop")
    # a task that ends now keeps its output for two seconds, then loses it
    wait_until(lambda: m.json("stats")["nodes"]["reachable"] == 1, what="n1 probed")
    submit(m, "now", {"cmd": ["echo", "now"]})
    assert wait_task(m, "now") == "succeeded 0\n"
    wait_until(lambda: m.read("tasks", "now", "stdout").startswith(PRUNED), timeout=30,
               what="the new task's output to go")
    assert m.read("tasks", "now", "status") == "succeeded\n"
    m.stop()
    m2 = mount(cfg, state=state)
    assert m2.json("stats")["tasks"]["total"] == 2001
    assert m2.json("stats")["tasks"]["done"] == 2001 - 200
    assert m2.read("tasks", "now", "stdout").startswith(PRUNED)


def test_retention_is_checked(tmp_path, token, agents):
    ags = agents(1)
    for bad, needle in [
        ({"output_days": -1}, "tasks.retention.output_days must be a number from 0 to 36500,"
                              " not -1"),
        ({"keep": 3}, "keep"),
        ({"output_days": 10, "records_days": 5}, "longer than records_days"),
    ]:
        cfg = make_config(tmp_path / "hosts.json", ags, token,
                          tasks={"allow_root": True, "retention": bad})
        r = subprocess.run([str(DAEMON_BIN), "-f", "-c", str(cfg), "-s", str(tmp_path / "s"),
                            str(tmp_path)], capture_output=True, text=True, timeout=20)
        assert r.returncode == 5, r.stderr
        assert needle in r.stderr and "hosts.json:" in r.stderr, r.stderr
