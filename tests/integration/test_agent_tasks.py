"""Integration tests for the agent's task API (tools/agent/TASKS-API.md): each case starts
its own agent on a free port with its own token file and state directory, runs real tasks
through it, and always stops the agent and kills whatever tasks are left.

The binary is $CLUSTERFS_BUILD/tools/agent/clusterfs-agent (default: the
repository's build/), with the task supervisor clusterfs-agent-supervise beside it; these
tests build nothing themselves. With CLUSTERFS_AGENT_VALGRIND=1
every agent runs under valgrind (not its supervisors), and a case fails when valgrind
reports an error or a definite leak.
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import AGENT_BIN, AGENT_START_S, AGENT_TOKEN, SUPERVISOR, Agent, free_port

AGENT = str(AGENT_BIN)
TOKEN = AGENT_TOKEN
START_S = AGENT_START_S
TASK_FIELDS = {"id", "state", "pid", "exit_code", "signal", "started_at", "finished_at",
               "stdout_size", "stderr_size"}


def write_token(path, token=TOKEN):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (token + "\n").encode())
    os.close(fd)


class TaskAgent(Agent):
    def request(self, method, path, body=None):
        """(status, parsed JSON body); checks that the answer is JSON."""
        status, _, doc = super().request(method, path, body)
        return status, doc

    def post(self, body):
        return self.request("POST", "/api/node/tasks", body)

    def get(self, task_id):
        return self.request("GET", "/api/node/tasks/" + task_id)

    def output(self, task_id, stream="stdout", query=""):
        status, resp, raw = self.raw("GET", "/api/node/tasks/%s/%s%s" % (task_id, stream, query))
        assert status == 200, raw
        assert resp.getheader("Content-Type") == "application/octet-stream"
        return raw, int(resp.getheader("X-Total-Size"))

    def wait_final(self, task_id, timeout=15.0):
        end = time.monotonic() + timeout
        while True:
            status, doc = self.get(task_id)
            assert status == 200, doc
            if doc["state"] != "running":
                return doc
            assert time.monotonic() < end, "task %s still running: %r" % (task_id, doc)
            time.sleep(0.05)

    def health(self):
        status, doc = self.request("GET", "/api/node/health")
        assert status == 200
        return doc


def task_dir(agent, task_id):
    return os.path.join(agent.state_dir, "tasks", task_id)


def read_file(path):
    with open(path) as f:
        return f.read()


def proc_stat(pid):
    """(state letter, pgid) of a process, or None when it does not exist."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[2])


def is_alive(pid):
    st = proc_stat(pid)
    return st is not None and st[0] not in "ZX"


def group_members(pgid):
    """Live (non-zombie) processes of a process group."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st and st[1] == pgid and st[0] not in "ZX":
                members.append(int(name))
    return members


def supervisor_pid(agent, task_id):
    return int(read_file(os.path.join(task_dir(agent, task_id), "supervisor")).split()[0])


@pytest.fixture
def tmpdir_path():
    with tempfile.TemporaryDirectory(prefix="clusterfs-tasks-test-") as d:
        yield d


@pytest.fixture
def start_agent(tmpdir_path, agent_pool):
    """Starts agents (no --name), all with the same state directory unless told, with
    the shared harness: stopped at teardown, leftover tasks killed."""
    token_file = os.path.join(tmpdir_path, "token")
    write_token(token_file)

    def start(state_dir=None, env=None):
        return agent_pool(tmpdir_path, TaskAgent, name=None, token_file=token_file, env=env,
                          state=state_dir or os.path.join(tmpdir_path, "state"),
                          valgrind=True)

    return start


@pytest.fixture
def agent(start_agent):
    return start_agent()


# --- running tasks ------------------------------------------------------------------------

def test_shell_task_succeeds(agent):
    status, doc = agent.post({"id": "shell-1", "cmd": "echo hello; echo oops >&2"})
    assert status == 201, doc
    assert TASK_FIELDS <= set(doc)
    assert doc["id"] == "shell-1" and doc["state"] in ("running", "succeeded")
    assert isinstance(doc["pid"], int) and abs(doc["started_at"] - time.time()) < 60
    doc = agent.wait_final("shell-1")
    assert doc["state"] == "succeeded"
    assert doc["exit_code"] == 0 and doc["signal"] is None
    assert doc["finished_at"] >= doc["started_at"]
    assert doc["stdout_size"] == 6 and doc["stderr_size"] == 5
    assert "error" not in doc
    assert agent.output("shell-1") == (b"hello\n", 6)
    assert agent.output("shell-1", "stderr") == (b"oops\n", 5)


def test_argv_task_succeeds(agent):
    status, doc = agent.post({"id": "argv-1", "cmd": ["printf", "%s|", "a b", "$HOME", "*"]})
    assert status == 201, doc
    assert agent.wait_final("argv-1")["state"] == "succeeded"
    assert agent.output("argv-1")[0] == b"a b|$HOME|*|"


def test_exit_code_3_fails(agent):
    agent.post({"id": "exit-3", "cmd": "echo before; exit 3"})
    doc = agent.wait_final("exit-3")
    assert doc["state"] == "failed"
    assert doc["exit_code"] == 3 and doc["signal"] is None
    assert agent.output("exit-3")[0] == b"before\n"


def test_killed_by_signal_fails(agent):
    agent.post({"id": "sig", "cmd": "kill -KILL $$"})
    doc = agent.wait_final("sig")
    assert doc["state"] == "failed"
    assert doc["exit_code"] == 128 + 9 and doc["signal"] == 9


def test_same_id_runs_once(agent, tmpdir_path):
    counter = os.path.join(tmpdir_path, "runs")
    body = {"id": "once", "cmd": "echo run >> %s; sleep 0.5" % counter}
    status, first = agent.post(body)
    assert status == 201, first
    status, second = agent.post(body)
    assert status == 200, second
    assert second["id"] == "once" and second["pid"] == first["pid"]
    agent.wait_final("once")
    status, third = agent.post(dict(body, cmd="echo other >> %s" % counter))
    assert status == 200 and third["state"] == "succeeded"
    time.sleep(0.3)
    assert read_file(counter) == "run\n"


def test_env_and_cwd(agent, tmpdir_path):
    workdir = os.path.join(tmpdir_path, "work here")
    os.mkdir(workdir)
    status, doc = agent.post({
        "id": "env-cwd",
        "cmd": 'pwd; echo "$FOO|$EMPTY|$CLUSTERFS_TASK_ID|$PATH"; echo "${LEAKY-unset}"',
        "env": {"FOO": "bar baz", "EMPTY": "", "CLUSTERFS_TASK_ID": "spoofed"},
        "cwd": workdir,
    })
    assert status == 201, doc
    assert agent.wait_final("env-cwd")["state"] == "succeeded"
    lines = agent.output("env-cwd")[0].decode().splitlines()
    assert lines == [workdir,
                     "bar baz||env-cwd|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                     "/sbin:/bin",
                     "unset"]


def test_environment_is_minimal(start_agent):
    agent = start_agent(env=dict(os.environ, LEAKY="from-the-agent"))
    agent.post({"id": "env-min", "cmd": ["env"], "env": {"PATH": "/bin:/usr/bin"}})
    assert agent.wait_final("env-min")["state"] == "succeeded"
    env = dict(line.split("=", 1) for line in agent.output("env-min")[0].decode().splitlines())
    assert set(env) == {"PATH", "HOME", "CLUSTERFS_TASK_ID", "CLUSTERFS_NODE",
                        "CLUSTERFS_KNOWLEDGE"}
    assert env["CLUSTERFS_KNOWLEDGE"] == os.path.realpath(agent.state_dir) + "-knowledge"
    assert env["PATH"] == "/bin:/usr/bin"
    assert env["CLUSTERFS_TASK_ID"] == "env-min"
    assert env["CLUSTERFS_NODE"] == socket.gethostname()  # the agent's --name default
    assert env["HOME"].startswith("/")


def test_default_cwd_is_the_tasks_work_dir(agent):
    agent.post({"id": "cwd-default", "cmd": "pwd; touch made-here"})
    assert agent.wait_final("cwd-default")["state"] == "succeeded"
    work = os.path.join(task_dir(agent, "cwd-default"), "work")
    assert agent.output("cwd-default")[0].decode().strip() == os.path.realpath(work)
    assert os.path.exists(os.path.join(work, "made-here"))
    assert os.stat(task_dir(agent, "cwd-default")).st_mode & 0o777 == 0o700


def test_bad_cwd_fails_127_with_message(agent):
    status, doc = agent.post({"id": "bad-cwd", "cmd": "echo never", "cwd": "/no/such/dir"})
    assert status == 201, doc
    doc = agent.wait_final("bad-cwd")
    assert doc["state"] == "failed" and doc["exit_code"] == 127
    assert "/no/such/dir" in doc["error"]
    err = agent.output("bad-cwd", "stderr")[0].decode()
    assert "/no/such/dir" in err and "No such file or directory" in err
    assert agent.output("bad-cwd")[0] == b""


def test_missing_program_fails_127_with_message(agent):
    agent.post({"id": "no-prog", "cmd": ["no-such-program-7f3a", "x"]})
    doc = agent.wait_final("no-prog")
    assert doc["state"] == "failed" and doc["exit_code"] == 127
    assert "no-such-program-7f3a" in agent.output("no-prog", "stderr")[0].decode()


def test_script_without_shebang_runs_with_sh(agent, tmpdir_path):
    script = os.path.join(tmpdir_path, "plain-script")
    with open(script, "w") as f:
        f.write("echo from script $1\n")
    os.chmod(script, 0o755)
    agent.post({"id": "script", "cmd": [script, "arg"]})
    assert agent.wait_final("script")["state"] == "succeeded"
    assert agent.output("script")[0] == b"from script arg\n"


# --- timeouts and cancel --------------------------------------------------------------------

def test_timeout_kills_the_process_group(agent):
    t0 = time.monotonic()
    # sh stays the group leader and its background sleep is a second member.
    status, doc = agent.post({"id": "slow", "cmd": "sleep 30 & echo $!; wait",
                              "timeout_s": 1})
    assert status == 201, doc
    pgid = doc["pid"]
    doc = agent.wait_final("slow", timeout=10)
    assert doc["state"] == "timed_out"
    assert doc["exit_code"] == 128 + 15 and doc["signal"] == 15
    assert time.monotonic() - t0 < 5
    sleeper = int(agent.output("slow")[0])
    assert not is_alive(sleeper)
    assert group_members(pgid) == []


def test_timeout_kills_after_grace_when_term_is_ignored(agent):
    t0 = time.monotonic()
    # An ignored signal stays ignored across exec, so sleep ignores TERM too.
    agent.post({"id": "stubborn", "cmd": "trap '' TERM; sleep 30; true", "timeout_s": 0.5})
    doc = agent.wait_final("stubborn", timeout=15)
    elapsed = time.monotonic() - t0
    assert doc["state"] == "timed_out"
    assert doc["exit_code"] == 128 + 9 and doc["signal"] == 9
    assert 5 <= elapsed < 9
    assert group_members(doc["pid"]) == []


def test_cancel(agent):
    status, doc = agent.post({"id": "to-cancel", "cmd": "sleep 30; true"})
    assert status == 201, doc
    status, doc = agent.request("POST", "/api/node/tasks/to-cancel/cancel", "{}")
    assert status == 202, doc
    assert doc["id"] == "to-cancel"
    doc = agent.wait_final("to-cancel", timeout=10)
    assert doc["state"] == "cancelled"
    assert doc["exit_code"] == 128 + 15 and doc["signal"] == 15
    assert group_members(doc["pid"]) == []
    status, again = agent.request("POST", "/api/node/tasks/to-cancel/cancel")
    assert status == 200 and again == doc


def test_cancel_of_a_finished_task_changes_nothing(agent):
    agent.post({"id": "done", "cmd": "true"})
    doc = agent.wait_final("done")
    status, after = agent.request("POST", "/api/node/tasks/done/cancel")
    assert status == 200 and after == doc and after["state"] == "succeeded"


# --- output ---------------------------------------------------------------------------------

def test_output_by_offset_and_limit(agent):
    agent.post({"id": "out", "cmd": "printf 0123456789"})
    agent.wait_final("out")
    assert agent.output("out") == (b"0123456789", 10)
    assert agent.output("out", query="?offset=3") == (b"3456789", 10)
    assert agent.output("out", query="?offset=3&limit=4") == (b"3456", 10)
    assert agent.output("out", query="?limit=0") == (b"", 10)
    assert agent.output("out", query="?offset=10") == (b"", 10)
    assert agent.output("out", query="?offset=1000") == (b"", 10)
    assert agent.output("out", query="?limit=99999999999") == (b"0123456789", 10)
    assert agent.output("out", "stderr") == (b"", 0)
    for bad in ("?offset=-1", "?offset=x", "?limit=1.5", "?offset="):
        status, _, raw = agent.raw("GET", "/api/node/tasks/out/stdout" + bad)
        assert status == 400, bad
        assert "offset and limit" in json.loads(raw)["error"]


def test_output_is_capped_at_one_mib(agent):
    agent.post({"id": "big", "cmd": "head -c 1500000 /dev/zero"})
    assert agent.wait_final("big")["stdout_size"] == 1500000
    data, total = agent.output("big")
    assert len(data) == 1024 * 1024 and total == 1500000
    data, _ = agent.output("big", query="?offset=%d" % len(data))
    assert len(data) == 1500000 - 1024 * 1024


def test_unknown_task_is_404(agent):
    for method, path in (("GET", "/api/node/tasks/nope"), ("GET", "/api/node/tasks/nope/stdout"),
                         ("GET", "/api/node/tasks/nope/stderr"),
                         ("POST", "/api/node/tasks/nope/cancel")):
        status, doc = agent.request(method, path)
        assert status == 404, path
        assert doc == {"error": "no such task: nope"}


def test_list_tasks(agent):
    code, doc = agent.request("GET", "/api/node/tasks")
    assert code == 200 and doc["tasks"] == [] and doc["time"] > 0
    agent.post({"id": "l1", "cmd": "true"})
    agent.post({"id": "l2", "cmd": ["false"]})
    agent.wait_final("l1")
    agent.wait_final("l2")
    status, doc = agent.request("GET", "/api/node/tasks")
    assert status == 200
    assert {t["id"]: t["state"] for t in doc["tasks"]} == {"l1": "succeeded", "l2": "failed"}
    assert all(TASK_FIELDS <= set(t) for t in doc["tasks"])


def test_health_counts_running_tasks(agent):
    assert agent.health()["tasks_running"] == 0
    agent.post({"id": "r1", "cmd": "sleep 30"})
    agent.post({"id": "r2", "cmd": "sleep 30"})
    agent.post({"id": "r3", "cmd": "true"})
    agent.wait_final("r3")
    assert agent.health()["tasks_running"] == 2
    agent.request("POST", "/api/node/tasks/r1/cancel")
    agent.wait_final("r1")
    assert agent.health()["tasks_running"] == 1


# --- isolation --------------------------------------------------------------------------------

def test_task_gets_only_its_own_descriptors_and_default_signals(agent):
    status, doc = agent.post({"id": "fds", "cmd": ["sleep", "30"]})
    assert status == 201, doc
    pid = doc["pid"]
    d = task_dir(agent, "fds")
    expected = {0: "/dev/null", 1: os.path.join(os.path.realpath(d), "stdout"),
                2: os.path.join(os.path.realpath(d), "stderr")}
    # Once sleep has exec'd and settled: exec closes the close-on-exec descriptors only
    # after the new name shows, and sleep opens and closes files of its own as it starts,
    # so a look too early can catch one of those. A leaked descriptor stays.
    end = time.monotonic() + 5
    while True:
        try:
            fds = {int(fd): os.readlink("/proc/%d/fd/%s" % (pid, fd))
                   for fd in os.listdir("/proc/%d/fd" % pid)}
        except FileNotFoundError:
            fds = None
        if (read_file("/proc/%d/comm" % pid) == "sleep\n" and fds == expected) or \
                time.monotonic() > end:
            break
        time.sleep(0.02)
    assert fds == expected
    status_lines = dict(line.split(":\t", 1) for line in
                        read_file("/proc/%d/status" % pid).splitlines() if ":\t" in line)
    assert int(status_lines["SigBlk"], 16) == 0
    assert int(status_lines["SigIgn"], 16) == 0
    # Own process group and session, apart from the agent's.
    assert os.getpgid(pid) == pid
    assert os.getsid(pid) != os.getsid(agent.proc.pid)
    sup = supervisor_pid(agent, "fds")
    for fd in os.listdir("/proc/%d/fd" % sup):
        assert not os.readlink("/proc/%d/fd/%s" % (sup, fd)).startswith("socket:")
    assert os.getsid(sup) == sup


# --- agent restarts ------------------------------------------------------------------------------

def test_task_is_readopted_after_agent_kill9(start_agent, tmpdir_path):
    counter = os.path.join(tmpdir_path, "runs")
    body = {"id": "survivor", "cmd": "echo run >> %s; sleep 2; echo done" % counter}
    agent = start_agent()
    status, doc = agent.post(body)
    assert status == 201, doc
    agent.kill9()

    agent = start_agent()
    status, doc = agent.get("survivor")
    assert status == 200 and doc["state"] == "running", doc
    assert agent.health()["tasks_running"] == 1
    status, again = agent.post(body)
    assert status == 200 and again["state"] == "running"
    doc = agent.wait_final("survivor")
    assert doc["state"] == "succeeded" and doc["exit_code"] == 0
    assert agent.output("survivor")[0] == b"done\n"
    status, again = agent.post(body)
    assert status == 200 and again == doc
    time.sleep(0.3)
    assert read_file(counter) == "run\n"


def test_finished_tasks_are_known_after_restart(start_agent):
    agent = start_agent()
    agent.post({"id": "before", "cmd": "echo kept; exit 4"})
    doc = agent.wait_final("before")
    assert agent.stop() == 0
    agent = start_agent()
    status, after = agent.get("before")
    assert status == 200 and after == doc
    assert agent.output("before")[0] == b"kept\n"
    status, _ = agent.post({"id": "before", "cmd": "true"})
    assert status == 200


def test_cancel_after_restart(start_agent):
    agent = start_agent()
    agent.post({"id": "long", "cmd": "sleep 30; true"})
    agent.kill9()
    agent = start_agent()
    status, doc = agent.request("POST", "/api/node/tasks/long/cancel")
    assert status == 202, doc
    doc = agent.wait_final("long", timeout=10)
    assert doc["state"] == "cancelled"


def test_task_without_supervisor_or_result_is_lost(start_agent):
    agent = start_agent()
    status, doc = agent.post({"id": "doomed", "cmd": "sleep 30"})
    assert status == 201, doc
    sup = supervisor_pid(agent, "doomed")
    agent.kill9()
    os.kill(sup, signal.SIGKILL)
    os.killpg(doc["pid"], signal.SIGKILL)
    end = time.monotonic() + 5
    while is_alive(sup) and time.monotonic() < end:
        time.sleep(0.05)

    agent = start_agent()
    status, doc = agent.get("doomed")
    assert status == 200
    assert doc["state"] == "lost" and doc["error"]
    assert doc["exit_code"] is None and doc["finished_at"] is None
    assert agent.health()["tasks_running"] == 0
    status, again = agent.post({"id": "doomed", "cmd": "sleep 30"})
    assert status == 200 and again["state"] == "lost"


def test_recycled_supervisor_pid_is_not_mistaken_for_the_supervisor(start_agent):
    agent = start_agent()
    agent.post({"id": "recycled", "cmd": "sleep 30"})
    sup_file = os.path.join(task_dir(agent, "recycled"), "supervisor")
    pid, start, boot = read_file(sup_file).split()
    agent.kill9()
    os.kill(int(pid), signal.SIGKILL)
    os.killpg(int(read_file(os.path.join(task_dir(agent, "recycled"), "pgid"))),
              signal.SIGKILL)
    # A live process of ours now has the recorded pid, but it started at another time.
    with open(sup_file, "w") as f:
        f.write("%d %s %s\n" % (os.getpid(), start, boot))
    agent = start_agent()
    status, doc = agent.get("recycled")
    assert status == 200 and doc["state"] == "lost"


def test_leftover_of_a_task_that_never_started_is_replaced(start_agent, tmpdir_path):
    """An agent that died while writing spec.json leaves it torn: no task, and the id
    stays free for a new POST."""
    leftover = os.path.join(tmpdir_path, "state", "tasks", "torn")
    os.makedirs(leftover, mode=0o700)
    with open(os.path.join(leftover, "spec.json"), "w") as f:
        f.write('{"id": "torn", "cmd": ["tr')
    agent = start_agent()
    status, _ = agent.get("torn")
    assert status == 404
    status, doc = agent.post({"id": "torn", "cmd": ["echo", "fresh"]})
    assert status == 201, doc
    assert agent.wait_final("torn")["state"] == "succeeded"
    assert agent.output("torn")[0] == b"fresh\n"
    assert "replacing" in agent.stderr()


def test_spares_of_an_earlier_agent_are_removed(start_agent, tmpdir_path):
    """Task directories made ahead of time live apart, and a new agent removes the
    ones it finds, half made or not, before it makes its own."""
    spares = os.path.join(tmpdir_path, "state", "tasks", "~spares")
    os.makedirs(os.path.join(spares, "stale", "work"))
    with open(os.path.join(spares, "stale", "spec.json"), "w") as f:
        f.write("{}")
    agent = start_agent()
    assert not os.path.exists(os.path.join(spares, "stale"))
    for i in range(12):  # more than the agent keeps ready
        status, doc = agent.post({"id": "s%d" % i, "cmd": ["true"]})
        assert status == 201, doc
    for i in range(12):
        assert agent.wait_final("s%d" % i)["state"] == "succeeded"
    _, doc = agent.request("GET", "/api/node/tasks")
    assert sorted(t["id"] for t in doc["tasks"]) == sorted("s%d" % i for i in range(12))
    assert agent.stop() == 0
    agent = start_agent()
    _, doc = agent.request("GET", "/api/node/tasks")
    assert len(doc["tasks"]) == 12


def test_agent_will_not_start_without_its_supervisor(tmpdir_path):
    lonely = os.path.join(tmpdir_path, "bin", "clusterfs-agent")
    os.makedirs(os.path.dirname(lonely))
    with open(AGENT, "rb") as src, open(lonely, "wb") as dst:
        dst.write(src.read())
    os.chmod(lonely, 0o755)
    token_file = os.path.join(tmpdir_path, "token")
    write_token(token_file)
    proc = subprocess.run([lonely, "--listen", "127.0.0.1:%d" % free_port(), "--token-file",
                           token_file, "--state-dir", os.path.join(tmpdir_path, "state")],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert os.path.join(os.path.dirname(lonely), SUPERVISOR) in proc.stderr
    assert "No such file or directory" in proc.stderr


def test_supervisor_is_not_for_hand_use():
    proc = subprocess.run([os.path.join(os.path.dirname(AGENT), SUPERVISOR)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "internal to clusterfs-agent" in proc.stderr


# --- requests -----------------------------------------------------------------------------------

def test_unknown_field_is_400(agent):
    status, doc = agent.post({"id": "x", "cmd": "true", "tiemout_s": 3})
    assert status == 400
    assert "tiemout_s" in doc["error"] and "timeout_s" in doc["error"]
    status, _ = agent.get("x")
    assert status == 404


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    b'{"id": "dup", "id": "dup", "cmd": "true"}',
    {"cmd": "true"},
    {"id": "", "cmd": "true"},
    {"id": "a/b", "cmd": "true"},
    {"id": "..", "cmd": "true"},
    {"id": "x" * 201, "cmd": "true"},
    {"id": "sp ace", "cmd": "true"},
    {"id": 7, "cmd": "true"},
    {"id": "x"},
    {"id": "x", "cmd": ""},
    {"id": "x", "cmd": []},
    {"id": "x", "cmd": ["", "a"]},
    {"id": "x", "cmd": ["ls", 3]},
    {"id": "x", "cmd": "a\u0000b"},
    {"id": "x", "cmd": "true", "env": ["A=1"]},
    {"id": "x", "cmd": "true", "env": {"A": 1}},
    {"id": "x", "cmd": "true", "env": {"A=B": "1"}},
    {"id": "x", "cmd": "true", "cwd": "relative/dir"},
    {"id": "x", "cmd": "true", "timeout_s": -1},
    {"id": "x", "cmd": "true", "timeout_s": "5"},
])
def test_invalid_request_is_400(agent, body):
    status, doc = agent.post(body)
    assert status == 400, doc
    assert doc["error"]
    code, doc = agent.request("GET", "/api/node/tasks")
    assert code == 200 and doc["tasks"] == [] and doc["time"] > 0


def test_valid_id_characters(agent):
    task_id = "Az09._@:-" + "x" * 191
    status, doc = agent.post({"id": task_id, "cmd": "true", "env": None, "timeout_s": 0})
    assert status == 201, doc
    assert agent.wait_final(task_id)["state"] == "succeeded"


def test_oversized_body_is_413(agent):
    """Refused from the headers alone, before any of the body is sent."""
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
        s.sendall(("POST /api/node/tasks HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n" % (TOKEN, 1024 * 1024 + 1)).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert "too large" in json.loads(body)["error"]


def test_more_than_256_running_is_503(agent):
    for i in range(256):
        status, doc = agent.post({"id": "many-%d" % i, "cmd": ["sleep", "60"]})
        assert status == 201, (i, doc)
    assert agent.health()["tasks_running"] == 256
    status, doc = agent.post({"id": "one-too-many", "cmd": "true"})
    assert status == 503 and "256" in doc["error"]
    status, _ = agent.get("one-too-many")
    assert status == 404
    status, doc = agent.post({"id": "many-0", "cmd": ["sleep", "60"]})
    assert status == 200
    agent.request("POST", "/api/node/tasks/many-0/cancel")
    agent.wait_final("many-0")
    status, doc = agent.post({"id": "one-more", "cmd": "true"})
    assert status == 201, doc


def test_list_since_filters_finished(agent):
    """?since=T keeps running tasks and those that finished at or after T."""
    assert agent.request("POST", "/api/node/tasks", {"id": "old", "cmd": "true"})[0] == 201
    agent.wait_final("old")
    code, doc = agent.request("GET", "/api/node/tasks")
    t = doc["time"]
    assert agent.request("POST", "/api/node/tasks", {"id": "slow", "cmd": "sleep 5"})[0] == 201
    code, doc = agent.request("GET", f"/api/node/tasks?since={t + 1}")
    assert code == 200
    assert [x["id"] for x in doc["tasks"]] == ["slow"]
    code, doc = agent.request("GET", "/api/node/tasks?since=0")
    assert sorted(x["id"] for x in doc["tasks"]) == ["old", "slow"]
    assert agent.request("GET", "/api/node/tasks?since=soon")[0] == 400


def test_task_that_never_got_the_go_ahead_is_not_lost(start_agent, tmpdir_path):
    """An agent killed between writing a task's spec.json and the go-ahead leaves the
    directory with spec.json, supervisor, stdout, stderr and work/, but no pid file and no
    result (supervisor.h): the supervisor never forked the task. A restarted agent must
    not call it lost: it forgets it, so that the same id, sent again, runs."""
    counter = os.path.join(tmpdir_path, "runs-never")
    body = {"id": "unborn", "cmd": "echo run >> %s" % counter}
    agent = start_agent()
    status, doc = agent.post(body)
    assert status == 201, doc
    agent.wait_final("unborn")
    assert agent.stop() == 0
    d = task_dir(agent, "unborn")
    for name in ("pid", "pgid", "result.json"):
        os.unlink(os.path.join(d, name))
    for name in ("stdout", "stderr"):
        open(os.path.join(d, name), "w").close()
    os.unlink(counter)

    agent = start_agent()
    status, doc = agent.get("unborn")
    assert status == 404, doc
    status, listing = agent.request("GET", "/api/node/tasks")
    assert status == 200 and all(t["id"] != "unborn" for t in listing["tasks"])
    assert "never started" in agent.stderr()
    status, doc = agent.post(body)
    assert status == 201, doc
    assert agent.wait_final("unborn")["state"] == "succeeded"
    assert read_file(counter) == "run\n"


def test_blocking_task_list(agent):
    """GET /api/node/tasks?index=N&wait=S answers what changed after change N; when nothing
    did, it waits for a task to start or end (woken, not at the deadline), holding no
    server thread: other requests are answered meanwhile."""
    status, doc = agent.request("GET", "/api/node/tasks?index=0")
    assert status == 200 and isinstance(doc["index"], int) and doc["index"] > 0
    index = doc["index"]
    # nothing changed: an answer with wait=0 is immediate and lists nothing new
    status, doc = agent.request("GET", f"/api/node/tasks?index={index}&wait=0")
    assert status == 200 and doc["tasks"] == [] and doc["index"] == index
    got = {}

    def poll():
        t = time.monotonic()
        got["status"], got["doc"] = agent.request(
            "GET", f"/api/node/tasks?index={index}&wait=30")
        got["took"] = time.monotonic() - t

    th = threading.Thread(target=poll)
    th.start()
    time.sleep(0.3)
    assert th.is_alive(), "the poll answered before anything changed"
    # the server still answers others while the poll waits
    assert agent.request("GET", "/api/node/health")[0] == 200
    status, _ = agent.post({"id": "wake-1", "cmd": ["sleep", "0.2"]})
    assert status == 201
    th.join(10)  # far below the poll's 30 s: it was woken by the start
    assert not th.is_alive(), "the poll was not woken by the task's start"
    assert got["status"] == 200
    assert [t["id"] for t in got["doc"]["tasks"]] == ["wake-1"]
    assert got["doc"]["index"] > index
    # the end is a change too
    index = got["doc"]["index"]
    status, doc = agent.request("GET", f"/api/node/tasks?index={index}&wait=30")
    assert status == 200 and doc["index"] > index
    assert [t["state"] for t in doc["tasks"] if t["id"] == "wake-1"] in (["running"],
                                                                         ["succeeded"])
    agent.wait_final("wake-1")
    # bad parameters are refused with a sentence
    for q in ("index=-1", "index=x", "index=1&wait=61", "index=1&wait=abc"):
        status, doc = agent.request("GET", "/api/node/tasks?" + q)
        assert status == 400 and doc["error"], q
