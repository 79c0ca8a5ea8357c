"""Knowledge: small versioned documents in /cluster/knowledge, committed to the store at
close, with their versions under knowledge/.versions, conflicts kept beside, deletions
as versions."""
import errno
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import Agent, make_config, wait_until
from test_tasks import submit, wait_task


@pytest.fixture
def kmount(tmp_path, token, agents, mount):
    ags = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ags, token)
    return mount(cfg)


def versions(m, *name):
    return sorted(os.listdir(m.path("knowledge", ".versions", *name)), key=int)


def test_writes_are_versions_readable_under_versions(kmount):
    m = kmount
    assert os.listdir(m.path("knowledge")) == [".versions"]
    m.path("knowledge", "notes").write_text("first\n")
    assert m.read("knowledge", "notes") == "first\n"
    with open(m.path("knowledge", "notes"), "a") as f:
        f.write("second\n")
    m.path("knowledge", "notes").write_text("third\n")
    assert m.read("knowledge", "notes") == "third\n"
    assert versions(m, "notes") == ["1", "2", "3"]
    assert m.read("knowledge", ".versions", "notes", "1") == "first\n"
    assert m.read("knowledge", ".versions", "notes", "2") == "first\nsecond\n"
    assert m.read("knowledge", ".versions", "notes", "3") == "third\n"
    assert os.stat(m.path("knowledge", "notes")).st_size == 6
    with pytest.raises(OSError):
        open(m.path("knowledge", ".versions", "notes", "1"), "w")
    assert not os.path.exists(m.path("knowledge", ".versions", "notes", "4"))
    # committed before close() returned: the store has it
    db = sqlite3.connect(m.state / "clusterfs.db")
    rows = db.execute("SELECT version, data FROM knowledge WHERE path='notes'"
                      " ORDER BY version").fetchall()
    assert rows == [(1, b"first\n"), (2, b"first\nsecond\n"), (3, b"third\n")]
    db.close()


def test_subdirectories_and_grep(kmount):
    m = kmount
    os.mkdir(m.path("knowledge", "runs"))
    os.mkdir(m.path("knowledge", "runs", "r1"))
    m.path("knowledge", "runs", "r1", "loss").write_text("loss 0.25\n")
    m.path("knowledge", "runs", "summary").write_text("best r1\n")
    assert sorted(os.listdir(m.path("knowledge", "runs"))) == ["r1", "summary"]
    with pytest.raises(FileNotFoundError):
        m.path("knowledge", "nodir", "x").write_text("x")
    with pytest.raises(OSError) as e:
        os.rmdir(m.path("knowledge", "runs"))
    assert e.value.errno == errno.ENOTEMPTY
    out = subprocess.run(["grep", "-r", "loss", str(m.path("knowledge"))],
                         capture_output=True, text=True)
    assert out.returncode == 0
    assert "runs/r1/loss:loss 0.25" in out.stdout
    assert m.read("knowledge", ".versions", "runs", "r1", "loss", "1") == "loss 0.25\n"
    os.mkdir(m.path("knowledge", "empty"))
    os.rmdir(m.path("knowledge", "empty"))
    assert not os.path.exists(m.path("knowledge", "empty"))


def test_a_writer_behind_the_latest_gets_ebusy_and_a_conflict_file(kmount):
    m = kmount
    doc = m.path("knowledge", "plan")
    doc.write_text("v1\n")
    slow = open(doc, "r+")  # opened at version 1
    doc.write_text("v2 by someone else\n")  # version 2
    slow.seek(0)
    slow.write("v2 by the slow writer\n")
    with pytest.raises(OSError) as e:
        slow.close()
    assert e.value.errno == errno.EBUSY
    assert m.read("knowledge", "plan") == "v2 by someone else\n"
    assert m.read("knowledge", "plan.conflict") == "v2 by the slow writer\n"
    assert versions(m, "plan") == ["1", "2"]
    # two creators of one new name: the second close finds the first one's version
    a = open(m.path("knowledge", "fresh"), "w")
    b = open(m.path("knowledge", "fresh"), "w")
    a.write("a\n")
    b.write("b\n")
    a.close()
    with pytest.raises(OSError) as e:
        b.close()
    assert e.value.errno == errno.EBUSY
    assert m.read("knowledge", "fresh") == "a\n"
    assert m.read("knowledge", "fresh.conflict") == "b\n"


def test_deletion_is_a_version(kmount):
    m = kmount
    doc = m.path("knowledge", "gone")
    doc.write_text("here\n")
    os.unlink(doc)
    assert not doc.exists()
    assert "gone" not in os.listdir(m.path("knowledge"))
    assert versions(m, "gone") == ["1", "2"]
    assert m.read("knowledge", ".versions", "gone", "1") == "here\n"
    assert m.read("knowledge", ".versions", "gone", "2") == ""
    assert "gone" in os.listdir(m.path("knowledge", ".versions"))
    with pytest.raises(FileNotFoundError):
        os.unlink(doc)
    doc.write_text("back\n")
    assert versions(m, "gone") == ["1", "2", "3"]
    assert m.read("knowledge", "gone") == "back\n"


def test_oversize_is_refused_and_nothing_is_lost(kmount):
    m = kmount
    doc = m.path("knowledge", "big")
    doc.write_text("small\n")
    fd = os.open(doc, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"x" * 1000)
    with pytest.raises(OSError) as e:
        os.pwrite(fd, b"y" * 4096, (1 << 20) - 100)
    assert e.value.errno == errno.EFBIG
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EFBIG
    assert m.read("knowledge", "big") == "small\n"
    assert versions(m, "big") == ["1"]
    with pytest.raises(OSError) as e:
        os.truncate(doc, (1 << 20) + 1)
    assert e.value.errno == errno.EFBIG
    # exactly the limit is fine
    doc.write_bytes(b"z" * (1 << 20))
    assert os.stat(doc).st_size == 1 << 20
    assert "larger than 1048576 bytes" in m.log_path.read_text()


def test_truncate_rename_and_versions_are_what_they_say(kmount):
    m = kmount
    doc = m.path("knowledge", "t")
    doc.write_text("abcdef")
    os.truncate(doc, 3)  # by path: a version of its own
    assert m.read("knowledge", "t") == "abc"
    with open(doc, "r+") as f:  # on a writer: its copy, committed at close
        f.truncate(1)
        f.seek(0, os.SEEK_END)
        f.write("z")
    assert m.read("knowledge", "t") == "az"
    assert versions(m, "t") == ["1", "2", "3"]
    with pytest.raises(OSError) as e:
        os.rename(doc, m.path("knowledge", "u"))
    assert e.value.errno == errno.EXDEV
    subprocess.run(["mv", str(doc), str(m.path("knowledge", "u"))], check=True)
    assert m.read("knowledge", "u") == "az" and not doc.exists()
    with pytest.raises(OSError):
        os.mkdir(m.path("knowledge", ".versions", "x"))
    with pytest.raises(OSError):
        m.path("knowledge", ".versions", "new").write_text("x")
    with pytest.raises(OSError) as e:
        os.unlink(m.path("knowledge", ".versions", "u", "1"))


@pytest.mark.parametrize("name", [".hidden", "a b", "semi;colon", "x" * 129, "tab\tname"])
def test_odd_names_are_refused(kmount, name):
    m = kmount
    with pytest.raises(OSError) as e:
        open(m.path("knowledge", name), "w").close()
    assert e.value.errno in (errno.EINVAL, errno.ENAMETOOLONG)
    with pytest.raises(OSError):
        os.mkdir(m.path("knowledge", name))
    assert os.listdir(m.path("knowledge")) == [".versions"]


def test_knowledge_survives_a_restart(tmp_path, token, agents, mount):
    ags = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ags, token)
    m = mount(cfg)
    m.path("knowledge", "kept").write_text("one\n")
    m.path("knowledge", "kept").write_text("two\n")
    state = m.state
    m.stop()
    m2 = mount(cfg, state=state)
    assert m2.read("knowledge", "kept") == "two\n"
    assert versions(m2, "kept") == ["1", "2"]


# ---- replicas on the agents ----

def replica(a, *parts):
    return Path(a.state_dir + "-knowledge").joinpath(*parts)


def replica_text(a, *parts):
    try:
        return replica(a, *parts).read_text()
    except OSError:
        return None


@pytest.fixture
def three(tmp_path, token, agents, mount):
    ags = agents(3)
    cfg = make_config(tmp_path / "hosts.json", ags, token, probe={"interval_s": 1})
    m = mount(cfg)
    for a in ags:
        assert m.json("nodes", a.name, "health")["reachable"]
    return m, ags, cfg


def test_replicas_converge_after_an_agent_was_away(three, tmp_path):
    m, ags, _ = three
    os.mkdir(m.path("knowledge", "docs"))
    m.path("knowledge", "docs", "a").write_text("one\n")
    m.path("knowledge", "old").write_text("to be removed\n")
    for a in ags:
        wait_until(lambda: replica_text(a, "docs", "a") == "one\n", 20,
                   what=f"replica on {a.name}")
        wait_until(lambda: replica_text(a, "old") is not None, 20, what=f"old on {a.name}")
    mode = replica(ags[0]).stat().st_mode & 0o777
    assert mode == 0o755
    assert replica(ags[0], "docs", "a").stat().st_mode & 0o777 == 0o444
    away = ags[2]
    port, state = away.port, away.state_dir
    away.stop()
    m.path("knowledge", "docs", "a").write_text("two\n")
    m.path("knowledge", "docs", "a").write_text("three\n")
    os.unlink(m.path("knowledge", "old"))
    for a in ags[:2]:
        wait_until(lambda: replica_text(a, "docs", "a") == "three\n", 20,
                   what=f"replica on {a.name}")
        wait_until(lambda: replica_text(a, "old") is None, 20, what=f"deletion on {a.name}")
    assert replica_text(away, "docs", "a") == "one\n"  # it was away
    back = Agent(tmp_path, away.name, away.token_file, port=port, state=state)
    try:
        wait_until(lambda: replica_text(back, "docs", "a") == "three\n", 30,
                   what="the agent that was away caught up")
        wait_until(lambda: replica_text(back, "old") is None, 30, what="deletion caught up")
        seqs = set()
        for a in [*ags[:2], back]:
            wait_until(lambda: a.request("GET", "/api/node/health")[2]["knowledge_seq"] == 5,
                       20, what=f"{a.name} reports seq 5")
            seqs.add((Path(a.state_dir) / "knowledge.seq").read_text().strip())
        assert seqs == {"5"}
        # no stray temporary files in any replica
        for a in [*ags[:2], back]:
            names = [p.name for p in replica(a).rglob("*")]
            assert sorted(names) == ["a", "docs"], names
    finally:
        back.stop()


def test_a_task_reads_the_replica_while_the_control_plane_is_away(three, tmp_path, mount):
    m, ags, cfg = three
    m.path("knowledge", "facts").write_text("the sky is blue\n")
    for a in ags:
        wait_until(lambda: replica_text(a, "facts") == "the sky is blue\n", 20,
                   what=f"replica on {a.name}")
    gate = tmp_path / "gate"
    gate.mkdir()
    os.chmod(gate, 0o777)
    submit(m, "reader", {"node": "n2",
                         "cmd": f"while [ ! -e {gate}/go ]; do sleep 0.1; done; "
                                "cat \"$CLUSTERFS_KNOWLEDGE/facts\"; "
                                "echo \"$CLUSTERFS_KNOWLEDGE\""})
    wait_until(lambda: m.read("tasks", "reader", "status").strip() == "running", 20,
               what="the task runs")
    state = m.state
    m.stop()
    (gate / "go").write_text("")
    # the agent runs the task to its end without the control plane
    wait_until(lambda: any(t.get("state") == "succeeded"
                           for t in ags[1].request("GET", "/api/node/tasks")[2]["tasks"]),
               30, what="the task ended on its agent")
    m2 = mount(cfg, state=state)
    assert wait_task(m2, "reader") == "succeeded 0\n"
    out = m2.read("tasks", "reader", "stdout").splitlines()
    assert out[0] == "the sky is blue"
    assert out[1] == ags[1].state_dir + "-knowledge"


def test_a_full_size_binary_document_reaches_every_replica(three):
    m, ags, _ = three
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value, NULs included
    m.path("knowledge", "blob").write_bytes(data)
    assert m.path("knowledge", "blob").read_bytes() == data
    for a in ags:
        wait_until(lambda: replica(a, "blob").exists() and
                   replica(a, "blob").read_bytes() == data, 20, what=f"blob on {a.name}")
