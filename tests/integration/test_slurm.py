"""A Slurm cluster under nodes/ and tasks/: a real slurmctld, slurmd and slurmrestd (auth/jwt)
started by the test (tests/integration/slurm.py), one mount shared by the module."""
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import Mount, make_config, wait_until, write_token
from slurm import PARTITION, Slurm


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


def jobs_named(slurm, m, task):
    did = m.json("tasks", task, "info").get("dispatch_id")
    return did, [j for j in slurm.jobs() if j[0] == did]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slurm")
    slurm = Slurm()
    state = {"slurm": slurm, "m": None}
    try:
        token = write_token(tmp / "token", "agent-token-unused")
        jwt = slurm.write_token_file(tmp / "slurm.jwt")
        cfg_path = make_config(
            tmp / "hosts.json", [], token, probe={"interval_s": 1},
            slurm={"rest": f"http://127.0.0.1:{slurm.rest_port}", "token_file": str(jwt),
                   "user": "nobody", "partition": PARTITION, "output_dir": str(slurm.out),
                   "interval_s": 1},
            routing={"hpc": {"hosts": ["slurm"]}})
        d = tmp / "m"
        d.mkdir()
        state.update(tmp=tmp, jwt=jwt, cfg=cfg_path, dir=d)
        state["m"] = m = Mount(d, cfg_path)
        # Slurm's time limits are whole minutes, checked every half minute or so: this
        # task is started first and looked at last (test_time_limit_gives_timed_out)
        submit(m, "tlimit", {"cmd": "echo begun; sleep 600", "node": "slurm", "timeout_s": 1})
        yield state
    finally:
        if state["m"]:
            state["m"].stop()
        slurm.stop()


def test_nodes_appear_with_status_from_slurm(env):
    m = env["m"]
    wait_until(lambda: m.read("nodes", "slurm-c1", "status") == "healthy\n", 15,
               what="slurm-c1 healthy")
    assert sorted(os.listdir(m.path("nodes"))) == ["slurm", "slurm-c1", "slurm-c2"]
    # c2 is configured DOWN with a reason: offline, and Slurm's reason is shown
    assert m.read("nodes", "slurm-c2", "status") == "offline\n"
    h2 = m.json("nodes", "slurm-c2", "health")
    assert "never_started" in json.dumps(h2)
    h = m.json("nodes", "slurm-c1", "health")
    assert h["cores"] == 16 and h["mem_total_mb"] == 4000
    assert h["slurm"]["state"] in ("idle", "mixed", "allocated")
    info = m.json("nodes", "slurm-c1", "info")
    assert "22.05" in json.dumps(info)
    assert m.read("nodes", "slurm-c1", "tier").strip() in ("light", "standard", "powerhouse")
    assert m.read("nodes", "slurm", "status") == "healthy\n"
    topo = m.json("topology.json")
    assert {"slurm", "slurm-c1", "slurm-c2"} <= {n["name"] for n in topo["nodes"]}
    assert m.json("stats")["nodes"]["total"] == 3
    assert 'slurm-c1' in m.read("metrics") and "slurm-c1" in m.read("topology.dot")
    # the JWT is not in the tree
    jwt = env["jwt"].read_text().strip()
    assert jwt not in m.read("config")
    assert "slurm.jwt" in m.read("config")


def test_task_runs_as_a_job_and_output_grows(env):
    m, slurm = env["m"], env["slurm"]
    marker = env["slurm"].out / "go-grow"
    submit(m, "grow", {"cmd": f"echo first; while [ ! -e {marker} ]; do sleep 0.1; done; "
                              "echo second; echo err >&2", "node": "slurm"})
    wait_until(lambda: m.read("tasks", "grow", "stdout") == "first\n", 20,
               what="first line while it runs")
    assert m.read("tasks", "grow", "status") == "running\n"
    did, named = jobs_named(slurm, m, "grow")
    assert len(named) == 1 and named[0][2] == "RUNNING"
    marker.touch()
    assert wait_task(m, "grow") == "succeeded 0\n"
    assert m.read("tasks", "grow", "stdout") == "first\nsecond\n"
    assert m.read("tasks", "grow", "stderr") == "err\n"
    assert m.read("tasks", "grow", "exit_code") == "0\n"
    assert m.read("tasks", "grow", "node") == "slurm\n"
    sl = m.json("tasks", "grow", "info")["slurm"]
    assert sl["state"] == "COMPLETED" and sl["node"] == "c1" and sl["job_id"] > 0
    t = sl["times"]
    assert t["submit_time"] <= t["start_time"] <= t["end_time"]


def test_routing_type_names_slurm_and_any_never_lands_on_slurm(env):
    m = env["m"]
    submit(m, "routed", {"cmd": "echo routed", "type": "hpc"})
    assert wait_task(m, "routed") == "succeeded 0\n"
    assert m.read("tasks", "routed", "node") == "slurm\n"
    assert m.read("tasks", "routed", "stdout") == "routed\n"
    # "any" is for the agents' nodes: Slurm's nodes and the cluster take only what names them
    submit(m, "anywhere", {"cmd": "true"})
    wait_until(lambda: "takes only tasks that name it" in
               (m.json("tasks", "anywhere", "info")["reason"] or ""), 10, what="the reason")
    assert m.read("tasks", "anywhere", "status") == "queued\n"
    with open(m.path("tasks", "anywhere", "ctl"), "w") as f:
        f.write("cancel\n")


def test_failing_job_exit_code(env):
    m = env["m"]
    submit(m, "fails", {"cmd": "echo bad >&2; exit 7", "node": "slurm"})
    assert wait_task(m, "fails") == "failed 7\n"
    assert m.read("tasks", "fails", "stderr") == "bad\n"


def test_cancel(env):
    m, slurm = env["m"], env["slurm"]
    submit(m, "long", {"cmd": "echo started; sleep 300", "node": "slurm"})
    wait_until(lambda: m.read("tasks", "long", "stdout") == "started\n", 20, what="started")
    with open(m.path("tasks", "long", "ctl"), "w") as f:
        f.write("cancel\n")
    assert wait_task(m, "long").startswith("cancelled")
    did, named = jobs_named(slurm, m, "long")
    assert named and named[0][2] == "CANCELLED"


def test_kill9_between_submission_and_end_submits_once(env):
    m, slurm, d = env["m"], env["slurm"], env["dir"]
    marker = slurm.out / "go-once"
    submit(m, "once", {"cmd": f"echo on; while [ ! -e {marker} ]; do sleep 0.1; done; echo off",
                       "node": "slurm"})
    wait_until(lambda: m.read("tasks", "once", "stdout") == "on\n", 20, what="running")
    did, named = jobs_named(slurm, m, "once")
    assert len(named) == 1
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait()
    m.stop()
    marker.touch()  # the job ends while no control plane runs
    m2 = Mount(d, env["cfg"], state=d / "state")
    env["m"] = m2
    assert wait_task(m2, "once") == "succeeded 0\n"
    assert m2.read("tasks", "once", "stdout") == "on\noff\n"
    assert [j for j in slurm.jobs() if j[0] == did] == [(did, named[0][1], "COMPLETED")]


def test_after_between_slurm_tasks(env):
    """Both in Slurm: the second is submitted while the first runs, as afterok: on its job."""
    m, slurm = env["m"], env["slurm"]
    marker = slurm.out / "first-done"
    gate = slurm.out / "first-go"
    submit(m, "a1", {"cmd": f"while [ ! -e {gate} ]; do sleep 0.1; done; touch {marker}",
                     "node": "slurm"})
    submit(m, "a2", {"cmd": f"test -e {marker}", "node": "slurm", "after": ["a1"]})
    wait_until(lambda: m.json("tasks", "a2", "info").get("slurm"), 20,
               what="a2 submitted while a1 runs")
    assert m.read("tasks", "a1", "status") == "running\n"
    did2, jobs2 = jobs_named(slurm, m, "a2")
    assert [j[2] for j in jobs2] == ["PENDING"]
    r = slurm.scontrol("show", "job", jobs2[0][1])
    job_id1 = m.json("tasks", "a1", "info")["slurm"]["job_id"]
    assert f"Dependency=afterok:{job_id1}" in r.stdout
    gate.touch()
    assert wait_task(m, "a2") == "succeeded 0\n"
    assert m.read("tasks", "a1", "status") == "succeeded\n"
    # a dependency that fails: Slurm never starts the job, and the task fails saying why
    submit(m, "b1", {"cmd": "sleep 1; exit 3", "node": "slurm"})
    wait_until(lambda: m.json("tasks", "b1", "info").get("slurm"), 20, what="b1 in Slurm")
    submit(m, "b2", {"cmd": "echo never", "node": "slurm", "after": ["b1"]})
    assert wait_task(m, "b1") == "failed 3\n"
    assert wait_task(m, "b2").startswith("failed ")
    assert m.read("tasks", "b2", "stdout") == ""
    assert "did not succeed" in m.json("tasks", "b2", "info")["reason"]


def test_job_purged_by_slurm_is_not_submitted_again(env):
    """A dispatch whose output exists but whose job slurmctld no longer knows (ended and
    purged after MinJobAge while no control plane ran) is not run a second time."""
    m, slurm = env["m"], env["slurm"]
    instance = m.json("tasks", "fails", "info")["dispatch_id"].rsplit(".", 2)[0]
    did = f"{instance}.purged.1"
    (slurm.out / f"{did}.out").write_text("ran before\n")
    submit(m, "purged", {"cmd": "echo again", "node": "slurm"})
    assert wait_task(m, "purged") == "lost -1\n"
    assert m.json("tasks", "purged", "info")["dispatch_id"] == did
    assert m.read("tasks", "purged", "stdout") == "ran before\n"
    assert "purged" in m.json("tasks", "purged", "info")["reason"]
    assert [j for j in slurm.jobs() if j[0] == did] == []


def test_wrong_jwt_raises_an_alert(env):
    m, jwt = env["m"], env["jwt"]
    good = jwt.read_text()
    write_token(jwt, "eyJhbGciOiJIUzI1NiJ9.eyJzdW4iOiJub2JvZHkifQ.bm90LXRoZS1rZXk")
    try:
        wait_until(lambda: "refused the JWT" in m.read("alerts"), 15, what="alert")
        alert = m.read("alerts")
        assert "scontrol token" in alert and "bm90LXRoZS1rZXk" not in alert
        assert "bm90LXRoZS1rZXk" not in m.read("events")
        # an expired one is told apart before it is sent: {"exp": 1, "sun": "nobody"}
        write_token(jwt, "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjEsInN1biI6Im5vYm9keSJ9.c2ln")
        wait_until(lambda: "expired at 1970-01-01T00:00:01Z" in m.read("alerts"), 15,
                   what="expired alert")
        assert "c2ln" not in m.read("alerts")
    finally:
        write_token(jwt, good.strip())
    wait_until(lambda: "refused the JWT" not in m.read("alerts") and
               "expired" not in m.read("alerts"), 15, what=f"alert cleared: {m.read('alerts')}")


def test_slurmrestd_stopped_keeps_last_state_and_says_why(env):
    m, slurm = env["m"], env["slurm"]
    assert m.read("nodes", "slurm-c1", "status") == "healthy\n"
    slurm.stop_rest()
    try:
        wait_until(lambda: "did not answer" in m.read("nodes", "slurm-c1", "health"), 15,
                   what="the reason")
        # the last state stays, and the mount answers from memory
        assert m.read("nodes", "slurm-c1", "status") == "healthy\n"
        assert m.json("nodes", "slurm-c1", "health")["cores"] == 16
        for n in os.listdir(m.path("nodes")):
            m.read("nodes", n, "health")
        wait_until(lambda: m.read("nodes", "slurm", "status") == "unhealthy\n", 15,
                   what="the cluster's node unhealthy")
    finally:
        slurm.start_rest()
    wait_until(lambda: m.read("nodes", "slurm", "status") == "healthy\n", 15,
               what="healthy again")


def test_drain_in_slurm_and_through_ctl(env):
    m, slurm = env["m"], env["slurm"]
    r = slurm.scontrol("update", "nodename=c1", "state=drain", "reason=disk swap")
    assert r.returncode == 0, r.stderr
    try:
        wait_until(lambda: m.read("nodes", "slurm-c1", "status") == "draining\n", 15,
                   what="draining from Slurm")
        assert "disk swap" in m.read("nodes", "slurm-c1", "health")
    finally:
        slurm.scontrol("update", "nodename=c1", "state=resume")
    wait_until(lambda: m.read("nodes", "slurm-c1", "status") == "healthy\n", 15,
               what="resumed")
    # slurmrestd 22.05 (v0.0.38) cannot update nodes: ctl drains on the control plane
    with open(m.path("nodes", "slurm", "ctl"), "w") as f:
        f.write("drain\n")
    assert m.read("nodes", "slurm", "status") == "draining\n"
    submit(m, "held", {"cmd": "true", "node": "slurm"})
    time.sleep(1)
    assert m.read("tasks", "held", "status") == "queued\n"
    with open(m.path("nodes", "slurm", "ctl"), "w") as f:
        f.write("resume\n")
    assert wait_task(m, "held") == "succeeded 0\n"


def test_time_limit_gives_timed_out(env):
    """timeout_s 1 is a time limit of one minute (Slurm counts minutes)."""
    m, slurm = env["m"], env["slurm"]
    assert m.json("tasks", "tlimit", "spec")["timeout_s"] == 1
    assert wait_task(m, "tlimit", timeout=180).startswith("timed_out ")
    assert m.read("tasks", "tlimit", "stdout") == "begun\n"
    did, named = jobs_named(slurm, m, "tlimit")
    assert [j[2] for j in named] == ["TIMEOUT"]
    assert "time limit" in m.json("tasks", "tlimit", "info")["reason"]


def test_secrets_stay_out_of_logs(env):
    jwt = env["jwt"].read_text().strip()
    assert jwt and jwt not in (env["dir"] / "clusterfs.log").read_text()
    assert jwt not in env["m"].read("events")
