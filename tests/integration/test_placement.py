"""Placement you can ask about: /cluster/placement ranks the nodes (each score's parts,
why a node is not eligible); a spec written to it is ranked on the same handle without
being submitted; stats shows how work is spread per node. Real agents, real mount."""
import errno
import json
import os

import pytest

from conftest import Agent, Mount, make_config, wait_until, write_token
from test_tasks import submit, wait_task


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("placement")
    token = write_token(tmp / "token", "s3cret-" + os.urandom(8).hex())
    ags = [Agent(tmp, f"n{i}", token) for i in (1, 2, 3)]
    cfg = make_config(tmp / "hosts.json", ags, token,
                      routing={"deep_reasoning": {"hosts": ["n2"]}})
    d = json.loads(cfg.read_text())
    d["hosts"]["n3"]["capabilities"] = ["gpu"]
    cfg.write_text(json.dumps(d))
    m = Mount(tmp, cfg, state=tmp / "state")
    for a in ags:
        m.json("nodes", a.name, "health")
    c = {"m": m, "cfg": cfg, "tmp": tmp}
    yield c
    c["m"].stop()
    for a in ags:
        a.stop()


def ask(m, spec):
    """Writes a spec and reads the answer back on the same handle."""
    with open(m.path("placement"), "r+") as f:
        f.write(spec if isinstance(spec, str) else json.dumps(spec))
        f.seek(0)
        return json.loads(f.read())


def check_scores(doc):
    for e in doc["nodes"]:
        assert abs(sum(e["parts"].values()) - e["score"]) < 0.002
        assert set(e["parts"]) == {"cpu", "mem", "slots", "health", "tier"}


def test_default_ranking(cluster):
    m = cluster["m"]
    assert oct(os.stat(m.path("placement")).st_mode & 0o777) == "0o666"
    doc = m.json("placement")
    check_scores(doc)
    names = [e["node"] for e in doc["nodes"]]
    assert sorted(names) == ["n1", "n2", "n3"]
    assert all(e["eligible"] for e in doc["nodes"])
    assert [e["rank"] for e in doc["nodes"]] == [1, 2, 3]
    scores = [e["score"] for e in doc["nodes"]]
    assert scores == sorted(scores, reverse=True)
    assert doc["placed"] == [names[0]]
    assert doc["why"].startswith(f"placed on {names[0]}: score ")
    assert "cmd" not in doc["spec"] and doc["spec"]["node"] == "any"


def test_drained_node_says_why(cluster):
    m = cluster["m"]
    m.path("nodes", "n1", "ctl").write_text("drain\n")
    try:
        doc = m.json("placement")
        n1 = next(e for e in doc["nodes"] if e["node"] == "n1")
        assert n1 == {**n1, "eligible": False, "rank": None, "reason": "draining"}
        assert doc["nodes"][-1]["node"] == "n1"  # the ineligible come last
        assert "n1" not in doc["placed"]
    finally:
        m.path("nodes", "n1", "ctl").write_text("resume\n")


def test_ranks_a_written_spec_without_submitting(cluster):
    m = cluster["m"]
    before = set(os.listdir(m.path("tasks")))
    doc = ask(m, {"requires": ["gpu"], "resources": {"cpus": 1}})
    check_scores(doc)
    assert doc["placed"] == ["n3"]
    by = {e["node"]: e for e in doc["nodes"]}
    assert by["n3"]["eligible"] and by["n3"]["rank"] == 1
    assert by["n1"]["reason"] == "lacks capability gpu"
    assert doc["spec"]["requires"] == ["gpu"]

    doc = ask(m, {"type": "deep_reasoning"})
    by = {e["node"]: e for e in doc["nodes"]}
    assert doc["placed"] == ["n2"]
    assert by["n1"]["reason"] == "not in routing hosts for deep_reasoning"

    doc = ask(m, {"node": "n1"})
    assert doc["placed"] == ["n1"] and doc["why"].startswith("placed on n1 as asked")
    by = {e["node"]: e for e in doc["nodes"]}
    assert by["n2"]["reason"] == "not the node asked for (n1)"

    doc = ask(m, {"node": "all", "requires": ["gpu"]})
    assert doc["placed"] == ["n3"]

    # nothing was submitted
    assert set(os.listdir(m.path("tasks"))) == before

    # one handle, several questions: write after reading starts a new spec
    with open(m.path("placement"), "r+") as f:
        f.write('{"requires": ["gpu"]}')
        f.seek(0)
        assert json.loads(f.read())["placed"] == ["n3"]
        f.seek(0)
        f.write('{"type": "deep_reasoning"}')
        f.seek(0)
        assert json.loads(f.read())["placed"] == ["n2"]


def test_bad_spec_is_explained(cluster):
    m = cluster["m"]
    doc = ask(m, {"requires": "gpu"})
    assert "requires" in doc["error"]
    doc = ask(m, "{not json")
    assert doc["error"].startswith("line 1, column")
    doc = ask(m, {"reqires": ["gpu"]})
    assert "did you mean \"requires\"" in doc["error"]
    # written and closed without reading: close() says it was bad
    with pytest.raises(OSError) as e:
        with open(m.path("placement"), "w") as f:
            f.write('{"priority": "P9"}')
    assert e.value.errno == errno.EINVAL
    # a good one closes fine
    with open(m.path("placement"), "w") as f:
        f.write('{"priority": "P1"}')


def test_stats_tasks_per_node(cluster):
    m = cluster["m"]
    for i in range(2):
        submit(m, f"ok{i}", {"cmd": "true", "node": "n2"})
    submit(m, "bad", {"cmd": "exit 3", "node": "n2"})
    submit(m, "long", {"cmd": "sleep 30", "node": "n3"})
    for name in ("ok0", "ok1", "bad"):
        wait_task(m, name)
    wait_until(lambda: m.read("tasks", "long", "status") == "running\n", what="long runs")
    per = m.json("stats")["tasks_per_node"]
    assert per["n2"] == {"running": 0, "succeeded_last_hour": 2, "failed_last_hour": 1}
    assert per["n3"]["running"] == 1
    assert per["n1"]["running"] == 0
    doc = m.json("placement")
    n3 = next(e for e in doc["nodes"] if e["node"] == "n3")
    assert n3["active"] == 1
    m.path("tasks", "long", "ctl").write_text("cancel\n")
    assert wait_task(m, "long").startswith("cancelled")
    per = m.json("stats")["tasks_per_node"]
    assert per["n3"] == {"running": 0, "succeeded_last_hour": 0, "failed_last_hour": 1}


def test_counts_are_rebuilt_after_a_restart(cluster):
    """The counters come back from the tasks' end times in the store."""
    m = cluster["m"]
    before = m.json("stats")["tasks_per_node"]
    m.stop()
    d = cluster["tmp"] / "again"
    d.mkdir()
    cluster["m"] = m = Mount(d, cluster["cfg"], state=cluster["tmp"] / "state")
    assert m.json("stats")["tasks_per_node"]["n2"] == before["n2"]
