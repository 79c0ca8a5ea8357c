"""Artifacts: a task's outputs collected on its node and kept by the control plane, and
inputs staged from other tasks' outputs (agent to agent, checked by digest) or from the
control plane's disk."""
import errno
import hashlib
import json
import os

import pytest

from conftest import make_config
from test_tasks import submit, wait_task


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cluster(tmp_path, token, agents, mount):
    ags = agents(3)
    shared = tmp_path / "shared"
    shared.mkdir()
    cfg = make_config(tmp_path / "hosts.json", ags, token, probe={"interval_s": 1},
                      artifacts={"max_files": 5, "max_mb": 1, "cache_max_mb": 1,
                                 "inputs_root": str(shared)})
    m = mount(cfg)
    for a in ags:
        assert m.json("nodes", a.name, "health")["reachable"]
    return m, ags, shared


def test_outputs_with_globs_are_files_of_the_task(cluster):
    m, _, _ = cluster
    submit(m, "make", {"node": "n1", "outputs": ["model.bin", "metrics/*.json"],
                       "cmd": "mkdir metrics; printf 'abc' > model.bin; "
                              "echo '{\"loss\": 1}' > metrics/a.json; "
                              "echo '{\"loss\": 2}' > metrics/b.json; echo x > other.txt"})
    assert wait_task(m, "make") == "succeeded 0\n"
    assert sorted(os.listdir(m.path("tasks", "make", "files"))) == ["metrics", "model.bin"]
    assert sorted(os.listdir(m.path("tasks", "make", "files", "metrics"))) == \
        ["a.json", "b.json"]
    assert m.read("tasks", "make", "files", "model.bin") == "abc"
    assert json.loads(m.read("tasks", "make", "files", "metrics", "b.json")) == {"loss": 2}
    st = os.stat(m.path("tasks", "make", "files", "model.bin"))
    assert st.st_size == 3
    # owner and mode as for stdout: the submitter's, private
    out = os.stat(m.path("tasks", "make", "stdout"))
    assert (st.st_uid, st.st_mode & 0o777) == (out.st_uid, out.st_mode & 0o777)
    assert not os.path.exists(m.path("tasks", "make", "files", "other.txt"))
    with pytest.raises(OSError):
        open(m.path("tasks", "make", "files", "model.bin"), "w")


def test_output_limits_and_escapes_are_refused_with_the_reason(cluster):
    m, _, _ = cluster
    # placed by name: failures lower a node's reliability, which placement by choice heeds
    submit(m, "many", {"node": "n1", "outputs": ["*.txt"],
                       "cmd": "for i in 1 2 3 4 5 6; do touch $i.txt; done"})
    submit(m, "big", {"node": "n2", "outputs": ["big"],
                      "cmd": "head -c 2000000 /dev/zero > big"})
    submit(m, "link", {"node": "n3", "outputs": ["p"], "cmd": "ln -s /etc/passwd p"})
    submit(m, "missing", {"node": "n1", "outputs": ["nothing.bin"], "cmd": "true"})
    for name in ("many", "big", "link", "missing"):
        assert wait_task(m, name) == "failed 0\n", name
    assert "6 files, more than the limit of 5" in m.json("tasks", "many", "info")["reason"]
    assert "more than the limit of 1048576" in m.json("tasks", "big", "info")["reason"]
    assert "symbolic link that leads out of the task's directory" in \
        m.json("tasks", "link", "info")["reason"]
    assert "nothing.bin: no such file" in m.json("tasks", "missing", "info")["reason"]
    assert "leads out" in m.read("tasks", "link", "stderr")
    # ".." and absolute paths do not get that far
    for bad in (["../x"], ["/etc/passwd"], ["a/../../b"]):
        with pytest.raises(OSError) as e:
            submit(m, "bad", {"cmd": "true", "outputs": bad})
        assert e.value.errno == errno.EINVAL
        assert "outputs[0]\" must be a path relative to the task's directory" in \
            m.read("tasks", "new", "bad.error")
    with pytest.raises(OSError):
        submit(m, "bad", {"cmd": "true", "inputs": {"../x": "p/a"}})
    assert "is not a name relative" in m.read("tasks", "new", "bad.error")


def test_an_output_is_readable_after_its_agent_stopped(cluster):
    m, ags, _ = cluster
    submit(m, "keep", {"node": "n2", "outputs": ["w.bin"],
                       "cmd": "head -c 100000 /dev/urandom > w.bin; sha256sum w.bin"})
    assert wait_task(m, "keep") == "succeeded 0\n"
    digest = m.read("tasks", "keep", "stdout").split()[0]
    ags[1].stop()
    data = open(m.path("tasks", "keep", "files", "w.bin"), "rb").read()
    assert len(data) == 100000 and sha(data) == digest


def test_inputs_from_another_nodes_task_are_staged_and_checked(cluster):
    m, _, shared = cluster
    (shared / "data.csv").write_text("1,2\n3,4\n")
    submit(m, "prod", {"node": "n1", "outputs": ["model.npy", "sub/extra.txt"],
                       "cmd": "mkdir sub; head -c 50000 /dev/urandom > model.npy; "
                              "echo hi > sub/extra.txt; sha256sum model.npy"})
    submit(m, "cons", {"node": "n3",
                       "inputs": {"base.npy": "prod/model.npy", "more/": "prod/sub/*.txt",
                                  "data.csv": str(shared / "data.csv")},
                       "cmd": "sha256sum base.npy; cat more/sub/extra.txt data.csv; pwd"})
    assert wait_task(m, "cons") == "succeeded 0\n"
    digest = m.read("tasks", "prod", "stdout").split()[0]
    out = m.read("tasks", "cons", "stdout").splitlines()
    assert out[0].split()[0] == digest
    assert out[1:4] == ["hi", "1,2", "3,4"]
    assert m.read("tasks", "cons", "node") == "n3\n"
    # the consumer waited for its producer: "after" holds it
    assert "prod" in m.json("tasks", "cons", "spec")["after"]


def test_a_missing_input_fails_with_the_reason(cluster):
    m, _, shared = cluster
    submit(m, "p0", {"node": "n1", "outputs": ["a.txt"], "cmd": "echo a > a.txt"})
    submit(m, "c0", {"node": "n2", "inputs": {"b.txt": "p0/b.txt"}, "cmd": "cat b.txt"})
    submit(m, "c1", {"node": "n3", "inputs": {"x": str(shared / "nope")}, "cmd": "cat x"})
    submit(m, "c2", {"node": "n1", "inputs": {"x": "/etc/passwd"}, "cmd": "cat x"})
    submit(m, "pf", {"node": "n2", "outputs": ["a.txt"], "cmd": "echo a > a.txt; exit 3"})
    submit(m, "c3", {"node": "n3", "inputs": {"a.txt": "pf/a.txt"}, "cmd": "cat a.txt"})
    for name in ("c0", "c1", "c2", "c3"):
        assert wait_task(m, name).startswith("failed"), name
    assert m.json("tasks", "c0", "info")["reason"] == "input b.txt: task p0 has no output b.txt"
    assert "No such file" in m.json("tasks", "c1", "info")["reason"]
    assert "not beneath artifacts.inputs_root" in m.json("tasks", "c2", "info")["reason"]
    assert m.json("tasks", "c3", "info")["reason"] == "dependency pf did not succeed"


def test_an_input_whose_producer_stopped_comes_from_the_kept_copy(cluster):
    m, ags, _ = cluster
    submit(m, "early", {"node": "n1", "outputs": ["w.bin"],
                        "cmd": "head -c 70000 /dev/urandom > w.bin; sha256sum w.bin"})
    assert wait_task(m, "early") == "succeeded 0\n"
    digest = m.read("tasks", "early", "stdout").split()[0]
    ags[0].stop()
    submit(m, "late", {"node": "n2", "inputs": {"w.bin": "early/w.bin"},
                       "cmd": "sha256sum w.bin"})
    assert wait_task(m, "late") == "succeeded 0\n"
    assert m.read("tasks", "late", "stdout").split()[0] == digest


def test_an_output_larger_than_the_cache_is_fetched_when_opened(tmp_path, token, agents, mount):
    ags = agents(2)
    cfg = make_config(tmp_path / "hosts.json", ags, token, probe={"interval_s": 1},
                      artifacts={"cache_max_mb": 0})
    m = mount(cfg)
    assert m.json("nodes", "n1", "health")["reachable"]
    submit(m, "large", {"node": "n1", "outputs": ["a.bin", "b.bin"],
                        "cmd": "head -c 300000 /dev/urandom > a.bin; cp a.bin b.bin; "
                               "sha256sum a.bin"})
    assert wait_task(m, "large") == "succeeded 0\n"
    digest = m.read("tasks", "large", "stdout").split()[0]
    kept = m.state / "artifacts" / "large" / "files"
    assert not (kept / "a.bin").exists()
    assert os.stat(m.path("tasks", "large", "files", "a.bin")).st_size == 300000
    assert sha(m.path("tasks", "large", "files", "a.bin").read_bytes()) == digest
    assert (kept / "a.bin").exists()  # kept from then on
    ags[0].stop()
    assert sha(m.path("tasks", "large", "files", "a.bin").read_bytes()) == digest
    # never opened while its node was up: not readable now, and the reason is the node
    with pytest.raises(OSError) as e:
        m.path("tasks", "large", "files", "b.bin").read_bytes()
    assert e.value.errno in (errno.ECONNREFUSED, errno.EHOSTDOWN, errno.EHOSTUNREACH)
