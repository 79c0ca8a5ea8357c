"""Tasks: submit by dropping a file, run on the right node, watch, wait, cancel."""
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import Mount, make_config, wait_until


def submit(m, name, spec):
    """Writes a spec as a user would (`cp`): create, write, close."""
    with open(m.path("tasks", "new", f"{name}.json"), "w") as f:
        f.write(spec if isinstance(spec, str) else json.dumps(spec))


def wait_task(m, name, timeout=30):
    """Reads tasks/NAME/wait in a thread-free way: it blocks until the task ends."""
    out = {}

    def reader():
        out["v"] = m.read("tasks", name, "wait")

    t = threading.Thread(target=reader)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"wait for {name} did not return within {timeout}s"
    return out["v"]


@pytest.fixture
def cluster3(tmp_path, token, agents, mount):
    ags = agents(3)
    cfg = make_config(tmp_path / "hosts.json", ags, token, probe={"interval_s": 1})
    m = mount(cfg)
    for a in ags:
        assert m.json("nodes", a.name, "health")["reachable"]
    return m, ags, cfg


def test_shell_and_argv_specs(cluster3):
    m, _, _ = cluster3
    submit(m, "hello", {"cmd": "echo hello; echo oops >&2"})
    submit(m, "argv", {"cmd": ["printf", "%s-%s", "a b", "c"]})
    assert wait_task(m, "hello") == "succeeded 0\n"
    assert wait_task(m, "argv") == "succeeded 0\n"
    assert m.read("tasks", "hello", "stdout") == "hello\n"
    assert m.read("tasks", "hello", "stderr") == "oops\n"
    assert m.read("tasks", "argv", "stdout") == "a b-c"
    assert m.read("tasks", "hello", "status") == "succeeded\n"
    assert m.read("tasks", "hello", "exit_code") == "0\n"
    node = m.read("tasks", "hello", "node").strip()
    assert node in ("n1", "n2", "n3")
    info = m.json("tasks", "hello", "info")
    assert info["submitter_uid"] == os.getuid()
    assert info["attempts"] == 1
    assert info["placement"].startswith(f"placed on {node}")
    assert json.loads(m.read("tasks", "hello", "spec"))["cmd"] == "echo hello; echo oops >&2"
    # symlinks by state and by node
    assert os.readlink(m.path("tasks", "done", "hello")) == "../hello"
    assert m.read("tasks", "done", "hello", "status") == "succeeded\n"
    assert "hello" in os.listdir(m.path("nodes", node, "tasks"))
    assert os.readlink(m.path("nodes", node, "tasks", "hello")) == "../../../tasks/hello"
    assert not os.listdir(m.path("tasks", "new"))
    assert "hello" in m.read("events")


def test_failed_exit_code(cluster3):
    m, _, _ = cluster3
    submit(m, "bad", {"cmd": "exit 3"})
    assert wait_task(m, "bad") == "failed 3\n"
    assert m.read("tasks", "bad", "exit_code") == "3\n"
    assert "bad" in os.listdir(m.path("tasks", "failed"))


@pytest.mark.parametrize("text,needle", [
    ('{"cmd": "true",\n  "node": }', "line 2, column"),
    ('{"comand": "true"}', 'did you mean "cmd"'),
    ('{"node": "any"}', 'missing required field "cmd"'),
    ('{"cmd": "true", "priority": "P9"}', '"priority"'),
    ('[1, 2]', "must be a JSON object"),
])
def test_rejected_specs(cluster3, text, needle):
    m, _, _ = cluster3
    with pytest.raises(OSError) as e:
        submit(m, "rej", text)
    assert e.value.errno == errno.EINVAL
    err = m.read("tasks", "new", "rej.error")
    assert needle in err, err
    # the spec stays for fixing, and fixing it submits it
    assert m.read("tasks", "new", "rej.json") == text
    assert not os.path.exists(m.path("tasks", "rej"))
    submit(m, "rej", {"cmd": "true"})
    assert wait_task(m, "rej") == "succeeded 0\n"
    assert not os.path.exists(m.path("tasks", "new", "rej.error"))


def test_oversized_spec(cluster3):
    m, _, _ = cluster3
    with pytest.raises(OSError) as e:
        with open(m.path("tasks", "new", "big.json"), "w") as f:
            f.write('{"cmd": "true", "env": {"X": "' + "x" * (2 << 20) + '"}}')
    assert e.value.errno == errno.EFBIG


def test_bad_names(cluster3):
    m, _, _ = cluster3
    for name in ("bad name!.json", "a:b.json"):
        with pytest.raises(OSError) as e:
            open(m.path("tasks", "new", name), "w").close()
        assert e.value.errno == errno.EINVAL, name
    with pytest.raises(OSError) as e:
        submit(m, "new", {"cmd": "true"})
    assert e.value.errno == errno.EINVAL
    assert "reserved" in m.read("tasks", "new", "new.error")


def test_name_taken(cluster3):
    m, _, _ = cluster3
    submit(m, "once", {"cmd": "true"})
    with pytest.raises(FileExistsError):
        submit(m, "once", {"cmd": "true"})
    with pytest.raises(FileExistsError):
        os.open(m.path("tasks", "new", "once.json"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_staging_then_rename(cluster3):
    m, _, _ = cluster3
    new = m.path("tasks", "new")
    # rsync: a dot-file with a random suffix, renamed into place
    with open(new / ".r1.json.Xa81k2", "w") as f:
        f.write('{"cmd": "echo rsync"}')
    assert not os.path.exists(m.path("tasks", "r1"))
    os.rename(new / ".r1.json.Xa81k2", new / "r1.json")
    assert wait_task(m, "r1") == "succeeded 0\n"
    # an editor's swap file and an atomic writer's temp file
    for staging in ("r2.json.swp", "r2.json~", "r2.json.tmp"):
        with open(new / staging, "w") as f:
            f.write('{"cmd": "echo editor"}')
    assert not os.path.exists(m.path("tasks", "r2"))
    os.rename(new / "r2.json.tmp", new / "r2.json")
    assert wait_task(m, "r2") == "succeeded 0\n"
    assert m.read("tasks", "r2", "stdout") == "editor\n"
    # vim's own sequence on a new file: probe file 4913, then write the file itself
    open(new / "4913", "w").close()
    os.unlink(new / "4913")
    fd = os.open(new / "r3.json", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    os.write(fd, b'{"cmd": "true"}\n')
    os.fsync(fd)
    os.close(fd)
    assert wait_task(m, "r3") == "succeeded 0\n"
    # a rejected rename keeps the spec, with the reason beside it
    with open(new / ".r4.json.tmp", "w") as f:
        f.write('{"cmd": ""}')
    os.rename(new / ".r4.json.tmp", new / "r4.json")
    assert "cmd" in m.read("tasks", "new", "r4.error")
    assert os.path.exists(new / "r4.json")


def test_cancel_and_wait(cluster3):
    m, _, _ = cluster3
    submit(m, "long", {"cmd": "sleep 30"})
    wait_until(lambda: m.read("tasks", "long", "status") == "running\n", what="running")
    assert "long" in os.listdir(m.path("tasks", "running"))
    with open(m.path("tasks", "long", "ctl"), "w") as f:
        f.write("cancel\n")
    out = wait_task(m, "long", 15)
    assert out.startswith("cancelled "), out
    with pytest.raises(OSError) as e:
        with open(m.path("tasks", "long", "ctl"), "w") as f:
            f.write("cancle\n")
    assert e.value.errno == errno.EINVAL


def test_timeout(cluster3):
    m, _, _ = cluster3
    submit(m, "slow", {"cmd": "sleep 30", "timeout_s": 1})
    out = wait_task(m, "slow", 20)
    assert out.startswith("timed_out "), out


def test_wait_interrupted(cluster3):
    m, _, _ = cluster3
    submit(m, "forever", {"cmd": "sleep 60"})
    p = subprocess.Popen(["cat", str(m.path("tasks", "forever", "wait"))],
                         stdout=subprocess.PIPE)
    time.sleep(0.5)
    assert p.poll() is None  # it waits
    p.send_signal(signal.SIGINT)
    assert p.wait(5) != 0  # Ctrl-C ends it
    # the mount is fine, and the task still runs
    assert m.read("tasks", "forever", "status") in ("running\n", "dispatched\n")
    with open(m.path("tasks", "forever", "ctl"), "w") as f:
        f.write("cancel")
    assert wait_task(m, "forever", 15).startswith("cancelled")


def test_only_submitter_or_root_may_cancel(cluster3):
    m, _, _ = cluster3
    submit(m, "mine", {"cmd": "sleep 30"})
    wait_until(lambda: m.read("tasks", "mine", "status") == "running\n", what="running")
    ctl = str(m.path("tasks", "mine", "ctl"))
    script = f"import os; os.write(os.open({ctl!r}, os.O_WRONLY), b'cancel')"
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "/usr/bin/python3", "-c", script], capture_output=True, text=True)
    assert r.returncode != 0
    assert "[Errno 1] Operation not permitted" in r.stderr, r.stderr
    assert m.read("tasks", "mine", "status") == "running\n"
    with open(ctl, "w") as f:
        f.write("cancel")
    assert wait_task(m, "mine", 15).startswith("cancelled")


def test_broadcast_to_all(cluster3):
    m, ags, _ = cluster3
    submit(m, "everywhere", {"cmd": "echo $CLUSTERFS_TASK_ID", "node": "all"})
    assert wait_task(m, "everywhere") == "succeeded 0\n"
    info = m.json("tasks", "everywhere", "info")
    assert sorted(info["children"]) == ["everywhere@n1", "everywhere@n2", "everywhere@n3"]
    for a in ags:
        assert m.read("tasks", f"everywhere@{a.name}", "node") == f"{a.name}\n"
        assert m.read("tasks", f"everywhere@{a.name}", "status") == "succeeded\n"


def test_placement_rules(tmp_path, token, agents, mount):
    ags = agents(3)
    cfg = make_config(tmp_path / "hosts.json", ags, token,
                      routing={"deep_reasoning": {"hosts": ["n2"]}})
    d = json.loads(cfg.read_text())
    d["hosts"]["n3"]["capabilities"] = ["gpu"]
    cfg.write_text(json.dumps(d))
    m = mount(cfg)
    for a in ags:
        m.json("nodes", a.name, "health")
    submit(m, "think", {"cmd": "true", "type": "deep_reasoning"})
    submit(m, "render", {"cmd": "true", "requires": ["gpu"]})
    submit(m, "pinned", {"cmd": "true", "node": "n1"})
    assert wait_task(m, "think") == "succeeded 0\n"
    assert m.read("tasks", "think", "node") == "n2\n"
    assert wait_task(m, "render") == "succeeded 0\n"
    assert m.read("tasks", "render", "node") == "n3\n"
    assert wait_task(m, "pinned") == "succeeded 0\n"
    assert m.read("tasks", "pinned", "node") == "n1\n"
    # nothing has the capability: it waits, and says why
    submit(m, "tpu", {"cmd": "true", "requires": ["tpu"]})
    wait_until(lambda: "tpu" in (m.json("tasks", "tpu", "info")["reason"] or ""),
               what="reason")
    assert m.read("tasks", "tpu", "status") == "queued\n"
    assert "tpu" in os.listdir(m.path("tasks", "queued"))
    # drain: no new work for n2, so deep_reasoning waits; resume lets it run
    with open(m.path("nodes", "n2", "ctl"), "w") as f:
        f.write("drain\n")
    assert m.read("nodes", "n2", "status") == "draining\n"
    submit(m, "think2", {"cmd": "true", "type": "deep_reasoning"})
    wait_until(lambda: m.json("tasks", "think2", "info")["reason"], what="queued reason")
    assert m.read("tasks", "think2", "status") == "queued\n"
    with open(m.path("nodes", "n2", "ctl"), "w") as f:
        f.write("resume\n")
    assert wait_task(m, "think2") == "succeeded 0\n"
    # P0 needs a reliable node: fail n1 three times in a row (reliability 0 - 30)
    for i in range(3):
        submit(m, f"f{i}", {"cmd": "exit 1", "node": "n1"})
        wait_task(m, f"f{i}")
    assert m.read("nodes", "n1", "reliability") == "0.0\n"
    assert float(m.read("nodes", "n3", "reliability")) == 100.0
    submit(m, "urgent", {"cmd": "true", "priority": "P0", "type": "batch"})
    assert wait_task(m, "urgent") == "succeeded 0\n"
    assert m.read("tasks", "urgent", "node") != "n1\n"


def _submitter(mnt, prefix, n, q):
    ok = 0
    for i in range(n):
        with open(os.path.join(mnt, "tasks", "new", f"{prefix}-{i}.json"), "w") as f:
            f.write('{"cmd": "true"}')
        ok += 1
    q.put(ok)


def test_eight_submitters_at_once(cluster3):
    m, _, _ = cluster3
    q = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_submitter, args=(str(m.mnt), f"p{k}", 50, q))
             for k in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert sum(q.get() for _ in procs) == 400
    wait_until(lambda: len(os.listdir(m.path("tasks", "done"))) == 400, 120,
               step=0.5, what="400 tasks done")
    assert len(os.listdir(m.path("tasks", "failed"))) == 0


def test_daemon_kill9_during_submissions(tmp_path, token, agents):
    """kill -9 in the middle of 200 submissions: each accepted one runs exactly once."""
    ags = agents(2)
    ran = tmp_path / "ran"
    ran.touch()
    cfg = make_config(tmp_path / "hosts.json", ags, token)
    state = tmp_path / "state"
    (tmp_path / "a").mkdir()
    m = Mount(tmp_path / "a", cfg, state=state)
    accepted = []
    try:
        def killer():
            # land the kill in the middle, however fast submissions are on this machine
            wait_until(lambda: len(accepted) >= 60, 30, step=0.001, what="60 submissions")
            m.proc.send_signal(signal.SIGKILL)

        threading.Thread(target=killer).start()
        for i in range(200):
            try:
                with open(m.path("tasks", "new", f"k{i}.json"), "w") as f:
                    f.write(json.dumps({"cmd": f"echo k{i} >> {ran}"}))
                accepted.append(f"k{i}")
            except OSError:
                break
        m.proc.wait(10)
    finally:
        m.stop()
    assert 0 < len(accepted) < 200, "the kill should land in the middle"
    (tmp_path / "b").mkdir()
    m2 = Mount(tmp_path / "b", cfg, state=state)
    try:
        for name in accepted:
            assert wait_task(m2, name) == "succeeded 0\n", name
        time.sleep(1)  # anything that would run twice has had time to
        lines = ran.read_text().split()
        for name in accepted:
            assert lines.count(name) == 1, (name, lines.count(name))
        # submissions whose close() never returned ran at most once
        assert all(lines.count(x) == 1 for x in set(lines))
    finally:
        m2.stop()


def test_agent_kill9_keeps_result(tmp_path, token, agents, mount):
    ags = agents(1)
    m = mount(make_config(tmp_path / "hosts.json", ags, token))
    m.json("nodes", "n1", "health")
    submit(m, "survivor", {"cmd": "sleep 2; echo done"})
    wait_until(lambda: m.read("tasks", "survivor", "status") == "running\n", what="running")
    a = ags[0]
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    time.sleep(0.5)
    from conftest import Agent
    restarted = Agent(tmp_path, "n1", token, port=a.port)
    try:
        assert wait_task(m, "survivor", 30) == "succeeded 0\n"
        assert m.read("tasks", "survivor", "stdout") == "done\n"
    finally:
        restarted.stop()


def test_full_disk_loses_nothing(tmp_path, token, agents, mount):
    """The state directory's disk fills up: a submission fails with ENOSPC and says so,
    the spec stays, and once there is room again the same file submits."""
    ags = agents(1)
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], check=True)
    try:
        m = mount(make_config(tmp_path / "hosts.json", ags, token), state=state)
        submit(m, "before", {"cmd": "true"})
        assert wait_task(m, "before") == "succeeded 0\n"
        filler = state / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        spec = json.dumps({"cmd": "echo after", "env": {"PAD": "x" * 100000}})
        with pytest.raises(OSError) as e:
            submit(m, "after", spec)
        assert e.value.errno == errno.ENOSPC
        assert "disk is full" in m.read("tasks", "new", "after.error")
        assert m.read("tasks", "new", "after.json") == spec
        assert not os.path.exists(m.path("tasks", "after"))
        assert m.read("tasks", "before", "status") == "succeeded\n"  # nothing lost
        filler.unlink()
        # the same file, closed again, submits (an editor's :w)
        submit(m, "after", spec)
        assert wait_task(m, "after") == "succeeded 0\n"
        assert m.read("tasks", "after", "stdout") == "after\n"
        m.stop()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_error_sentences_escape_control_bytes(tmp_path, token, agents, mount):
    """A spec with an ESC byte in a field name: NAME.error and the log quote it as \\x1b."""
    ags = agents(1)
    m = mount(make_config(tmp_path / "hosts.json", ags, token))
    with pytest.raises(OSError):
        submit(m, "esc", '\x1b[2Jevil')
    err = m.read("tasks", "new", "esc.error")
    assert "\x1b" not in err and "\\x1b" in err, repr(err)
    log = m.log_path.read_text()
    assert "\x1b" not in log and "near '\\x1b'" in log
