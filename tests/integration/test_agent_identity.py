"""Integration tests for tasks that run as their submitter (the "user" field of
tools/agent/TASKS-API.md), and for the agent's checks of its token file and state
directory.

Real agents on 127.0.0.1, started the way test_agent_tasks.py starts them, and real users
that this module creates with useradd (cfsa_alice with the supplementary group cfsa_grp,
cfsa_bob, cfsa_carol whose home does not exist) and removes with userdel -r at the end.
One case runs the agent itself as cfsa_bob. Needs root, as the suite does.
"""

import fcntl
import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import pytest

from conftest import free_port, wait_until
from test_agent_tasks import AGENT, TaskAgent, is_alive, read_file, task_dir, write_token

NODE = "node-ident"
HOMES = "/tmp/cfsa-homes"
GROUP = "cfsa_grp"
ALICE, BOB, CAROL, GHOST, BAD = "cfsa_alice", "cfsa_bob", "cfsa_carol", "cfsa_ghost", "cfsa_bad"
# A passwd entry whose gid is (gid_t) -1, which the kernel refuses: the change of identity
# fails in the task's child. Appended to /etc/passwd by hand (useradd will not make it).
BAD_LINE = "%s:x:4294967294:4294967295::/tmp:/bin/sh\n" % BAD


def run(*args):
    return subprocess.run(args, check=False, capture_output=True, text=True)


def append_passwd_line(line):
    """Appends to /etc/passwd under the lock that useradd and userdel take (lckpwdf(3))."""
    with open("/etc/.pwd.lock", "w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        with open("/etc/passwd", "a") as f:
            f.write(line)


def remove_users():
    for name in (ALICE, BOB, CAROL, BAD):
        if run("id", "-u", name).returncode == 0:
            run("userdel", "-r", "-f", name)
    if run("getent", "group", GROUP).returncode == 0:
        run("groupdel", GROUP)
    shutil.rmtree(HOMES, ignore_errors=True)


@pytest.fixture(scope="module")
def users():
    """Creates the test's users afresh (a leftover of an earlier run is removed first) and
    removes them at the end; returns their passwd entries by name."""
    if os.geteuid() != 0:
        pytest.fail("these tests create users and must run as root")
    remove_users()
    os.makedirs(HOMES, exist_ok=True)
    os.chmod(HOMES, 0o755)
    try:
        subprocess.run(["groupadd", GROUP], check=True)
        subprocess.run(["useradd", "-m", "-d", os.path.join(HOMES, ALICE), "-s", "/bin/bash",
                        "-G", GROUP, "-U", ALICE], check=True)
        subprocess.run(["useradd", "-m", "-d", os.path.join(HOMES, BOB), "-s", "/bin/sh",
                        "-U", BOB], check=True)
        subprocess.run(["useradd", "-M", "-d", os.path.join(HOMES, "no-such-home"), "-s",
                        "", "-U", CAROL], check=True)
        yield {name: pwd.getpwnam(name) for name in (ALICE, BOB, CAROL)}
    finally:
        remove_users()


@pytest.fixture
def tmpdir_path():
    # Others may traverse it: an agent that runs as cfsa_bob reads its files below.
    with tempfile.TemporaryDirectory(prefix="clusterfs-identity-test-") as d:
        os.chmod(d, 0o755)
        yield d


@pytest.fixture
def start_agent(tmpdir_path, users, agent_pool):
    """Starts agents named NODE (as root, or as `as_user` via setpriv, each with a token
    file of its user's) with the shared harness: stopped at teardown, leftover tasks
    killed."""

    def start(state_dir=None, as_user=None, token_file=None, extra=()):
        if not token_file:
            token_file = os.path.join(tmpdir_path, "token-%s" % (as_user or "root"))
            write_token(token_file)
            if as_user:
                os.chown(token_file, users[as_user].pw_uid, users[as_user].pw_gid)
        env = dict(os.environ)
        prefix = ()
        if as_user:
            pw = users[as_user]
            prefix = ("setpriv", "--reuid", str(pw.pw_uid), "--regid", str(pw.pw_gid),
                      "--init-groups", "--")
            env.update(HOME=pw.pw_dir, USER=as_user, LOGNAME=as_user)
        return agent_pool(tmpdir_path, TaskAgent, name=NODE, token_file=token_file,
                          extra=extra, env=env, prefix=prefix,
                          state=state_dir or os.path.join(tmpdir_path, "state"))

    return start


@pytest.fixture
def agent(start_agent):
    return start_agent()


def run_refusing(args, timeout=10):
    """Runs an agent that must exit by itself; returns (exit code, stderr)."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def status_ids(pid):
    """The Uid, Gid and Groups lines of /proc/PID/status, as lists of ints."""
    lines = dict(line.split(":", 1) for line in read_file("/proc/%d/status" % pid).splitlines()
                 if ":" in line)
    return ([int(x) for x in lines["Uid"].split()], [int(x) for x in lines["Gid"].split()],
            sorted(int(x) for x in lines["Groups"].split()))


def assert_never_ran(agent, task_id, doc):
    assert doc["state"] == "failed" and doc["exit_code"] is None and doc["pid"] is None, doc
    d = task_dir(agent, task_id)
    assert not os.path.exists(os.path.join(d, "supervisor")) or \
        read_file(os.path.join(d, "supervisor")) == ""
    assert not os.path.exists(os.path.join(d, "pid")) or read_file(os.path.join(d, "pid")) == ""


# --- running as the request's user --------------------------------------------------------

def test_task_runs_as_its_user(agent, users):
    alice = users[ALICE]
    status, doc = agent.post({
        "id": "who", "user": ALICE,
        "cmd": "id -u; id -g; id -G; echo $HOME $USER $LOGNAME; umask; pwd; echo $SHELL; id",
    })
    assert status == 201, doc
    assert doc["user"] == ALICE and doc["uid"] == alice.pw_uid
    doc = agent.wait_final("who")
    assert doc["state"] == "succeeded", (doc, agent.output("who", "stderr"))
    assert doc["user"] == ALICE and doc["uid"] == alice.pw_uid
    lines = agent.output("who")[0].decode().splitlines()
    assert len(lines) == 8, lines
    uid, gid, groups, names, umask, cwd, shell, full_id = lines
    assert int(uid) == alice.pw_uid and int(gid) == alice.pw_gid
    expected_groups = set(os.getgrouplist(ALICE, alice.pw_gid))
    assert grp.getgrnam(GROUP).gr_gid in expected_groups
    assert {int(g) for g in groups.split()} == expected_groups
    assert names == "%s %s %s" % (alice.pw_dir, ALICE, ALICE)
    assert umask == "0022"
    assert cwd == alice.pw_dir  # the default cwd of another user is its HOME
    assert shell == "/bin/bash"
    assert "=0(" not in full_id and ",0(" not in full_id and "root" not in full_id, full_id
    assert GROUP in full_id
    # The output files are the supervisor's (root's), inherited as descriptors.
    out = os.stat(os.path.join(task_dir(agent, "who"), "stdout"))
    assert out.st_uid == 0 and stat.S_IMODE(out.st_mode) == 0o600


def test_task_process_has_the_users_ids_and_a_session_of_its_own(agent, users):
    alice = users[ALICE]
    status, doc = agent.post({"id": "ids", "user": ALICE, "cmd": ["sleep", "30"]})
    assert status == 201, doc
    pid = doc["pid"]
    wait_until(lambda: read_file("/proc/%d/comm" % pid) == "sleep\n", 5, what="sleep exec'd")
    uids, gids, groups = status_ids(pid)
    assert uids == [alice.pw_uid] * 4 and gids == [alice.pw_gid] * 4
    assert groups == sorted(set(os.getgrouplist(ALICE, alice.pw_gid)))
    assert 0 not in groups
    caps = dict(line.split(":\t", 1) for line in read_file("/proc/%d/status" % pid).splitlines()
                if line.startswith("Cap"))
    assert int(caps["CapEff"], 16) == 0 and int(caps["CapPrm"], 16) == 0
    assert int(caps["CapAmb"], 16) == 0
    sid = int(subprocess.run(["ps", "-o", "sid=", "-p", str(pid)], capture_output=True,
                             text=True, check=True).stdout)
    agent_sid = int(subprocess.run(["ps", "-o", "sid=", "-p", str(agent.proc.pid)],
                                   capture_output=True, text=True, check=True).stdout)
    assert sid == pid and sid != agent_sid
    assert os.getpgid(pid) == pid
    # Its supervisor stays root, so that it can record, signal and time the task out.
    sup = int(read_file(os.path.join(task_dir(agent, "ids"), "supervisor")).split()[0])
    assert status_ids(sup)[0] == [0, 0, 0, 0]
    assert os.getsid(sup) != sid
    status, doc = agent.request("POST", "/api/node/tasks/ids/cancel")
    assert status == 202, doc
    assert agent.wait_final("ids")["state"] == "cancelled"
    assert not is_alive(pid)


def test_timeout_kills_a_task_of_another_user(agent, users):
    status, doc = agent.post({"id": "slow", "user": ALICE, "cmd": "sleep 30", "timeout_s": 0.3})
    assert status == 201, doc
    doc = agent.wait_final("slow")
    assert doc["state"] == "timed_out" and doc["signal"] == signal.SIGTERM
    assert doc["user"] == ALICE


def test_task_without_user_runs_as_the_agent(agent):
    status, doc = agent.post({"id": "me", "cmd": "id -u; pwd"})
    assert status == 201, doc
    assert doc["user"] == "root" and doc["uid"] == 0
    assert agent.wait_final("me")["state"] == "succeeded"
    uid, cwd = agent.output("me")[0].decode().splitlines()
    assert uid == "0"
    assert cwd == os.path.realpath(os.path.join(task_dir(agent, "me"), "work"))


def test_missing_home_means_root_directory(agent, users):
    carol = users[CAROL]
    assert not os.path.exists(carol.pw_dir)
    agent.post({"id": "homeless", "user": CAROL, "cmd": "pwd; echo $HOME; echo $SHELL; id -u"})
    assert agent.wait_final("homeless")["state"] == "succeeded"
    assert agent.output("homeless")[0].decode().splitlines() == \
        ["/", carol.pw_dir, "/bin/sh", str(carol.pw_uid)]


def test_cwd_the_user_may_not_enter_fails_127(agent, users, tmpdir_path):
    private = os.path.join(tmpdir_path, "roots-only")
    os.mkdir(private, 0o700)
    marker = os.path.join(tmpdir_path, "ran")
    status, doc = agent.post({"id": "denied", "user": ALICE, "cwd": private,
                              "cmd": "touch %s" % marker})
    assert status == 201, doc
    doc = agent.wait_final("denied")
    assert doc["state"] == "failed" and doc["exit_code"] == 127, doc
    assert private in doc["error"]
    err = agent.output("denied", "stderr")[0].decode()
    assert private in err and "Permission denied" in err
    assert not os.path.exists(marker)
    # The same directory is fine for the agent's own user.
    agent.post({"id": "allowed", "cwd": private, "cmd": "pwd"})
    assert agent.wait_final("allowed")["state"] == "succeeded"


def test_unknown_user_is_a_failed_task_that_never_runs(start_agent, tmpdir_path):
    agent = start_agent()
    marker = os.path.join(tmpdir_path, "ran")
    body = {"id": "ghostly", "user": GHOST, "cmd": "touch %s" % marker}
    status, doc = agent.post(body)
    assert status == 201, doc
    assert doc["error"] == "user %s does not exist on %s" % (GHOST, NODE)
    assert doc["user"] == GHOST and doc["uid"] is None
    assert_never_ran(agent, "ghostly", doc)
    status, again = agent.post(body)
    assert status == 200 and again == doc
    # Durable: a restarted agent knows it, and still runs nothing.
    assert agent.stop() == 0
    agent = start_agent()
    status, after = agent.get("ghostly")
    assert status == 200 and after == doc
    status, again = agent.post(body)
    assert status == 200 and again == doc
    time.sleep(0.3)
    assert not os.path.exists(marker)
    listed = agent.request("GET", "/api/node/tasks")[1]["tasks"]
    assert [t for t in listed if t["id"] == "ghostly"] == [doc]


def test_failed_change_of_identity_is_a_failed_task(agent, users, tmpdir_path):
    marker = os.path.join(tmpdir_path, "ran")
    append_passwd_line(BAD_LINE)
    try:
        status, doc = agent.post({"id": "bad-ids", "user": BAD, "cmd": "touch %s" % marker})
        assert status == 201, doc
        doc = agent.wait_final("bad-ids")
    finally:
        run("userdel", "-f", BAD)
    assert doc["state"] == "failed" and doc["exit_code"] is None, doc
    assert doc["user"] == BAD and doc["uid"] == 4294967294
    assert doc["error"].startswith("cannot run the task as %s: " % BAD), doc
    assert "Invalid argument" in doc["error"], doc
    assert doc["error"] in agent.output("bad-ids", "stderr")[0].decode()
    assert not os.path.exists(marker)


@pytest.mark.parametrize("name", ["USER", "HOME", "LOGNAME", "SHELL"])
def test_env_may_not_set_the_identity(agent, name):
    status, doc = agent.post({"id": "liar", "user": ALICE, "cmd": "true", "env": {name: "x"}})
    assert status == 400
    assert doc == {"error": "env may not set %s (the task's identity comes from its user)"
                   % name}
    status, doc = agent.post({"id": "liar", "cmd": "true", "env": {name: "x"}})
    assert status == 400
    assert agent.request("GET", "/api/node/tasks/liar")[0] == 404


def test_env_may_set_other_variables(agent, users):
    status, doc = agent.post({"id": "preload", "user": ALICE, "cmd": 'echo "$LD_PRELOAD|$X"',
                              "env": {"LD_PRELOAD": "", "X": "y"}})
    assert status == 201, doc
    assert agent.wait_final("preload")["state"] == "succeeded"
    assert agent.output("preload")[0] == b"|y\n"


@pytest.mark.parametrize("user", ["", "-alice", "a" * 65, "al ice", "al/ice", "al:ice",
                                  "élise", 1000, ["alice"]])
def test_invalid_user_is_400(agent, user):
    status, doc = agent.post({"id": "bad-user", "cmd": "true", "user": user})
    assert status == 400
    assert '"user"' in doc["error"], doc
    assert agent.request("GET", "/api/node/tasks/bad-user")[0] == 404


def test_longest_valid_user_name_is_accepted(agent):
    name = "a" * 64
    status, doc = agent.post({"id": "long-name", "cmd": "true", "user": name})
    assert status == 201 and doc["error"] == "user %s does not exist on %s" % (name, NODE)


# --- an agent that does not run as root -----------------------------------------------------

def test_agent_not_root_runs_only_its_own_users_tasks(start_agent, users, tmpdir_path):
    bob = users[BOB]
    base = os.path.join(tmpdir_path, "bobs")
    os.mkdir(base, 0o700)
    os.chown(base, bob.pw_uid, bob.pw_gid)
    agent = start_agent(state_dir=os.path.join(base, "state"), as_user=BOB)
    assert status_ids(agent.proc.pid)[0] == [bob.pw_uid] * 4

    status, doc = agent.post({"id": "plain", "cmd": "id -u; pwd"})
    assert status == 201, doc
    assert doc["user"] == BOB and doc["uid"] == bob.pw_uid
    assert agent.wait_final("plain")["state"] == "succeeded"
    uid, cwd = agent.output("plain")[0].decode().splitlines()
    assert int(uid) == bob.pw_uid
    assert cwd == os.path.realpath(os.path.join(task_dir(agent, "plain"), "work"))

    status, doc = agent.post({"id": "named", "user": BOB, "cmd": "id -u; echo $USER $HOME"})
    assert status == 201, doc
    assert doc["user"] == BOB
    assert agent.wait_final("named")["state"] == "succeeded"
    assert agent.output("named")[0].decode().splitlines() == \
        [str(bob.pw_uid), "%s %s" % (BOB, bob.pw_dir)]

    marker = os.path.join(tmpdir_path, "ran")
    status, doc = agent.post({"id": "alices", "user": ALICE, "cmd": "touch %s" % marker})
    assert status == 201, doc
    assert doc["error"] == "this agent runs as %s and cannot run tasks as %s" % (BOB, ALICE)
    assert doc["user"] == ALICE and doc["uid"] == users[ALICE].pw_uid
    assert_never_ran(agent, "alices", doc)
    status, again = agent.post({"id": "alices", "user": ALICE, "cmd": "true"})
    assert status == 200 and again == doc
    time.sleep(0.3)
    assert not os.path.exists(marker)
    # Its files are bob's and private.
    for name in ("spec.json", "result.json"):
        st = os.stat(os.path.join(task_dir(agent, "alices"), name))
        assert st.st_uid == bob.pw_uid and stat.S_IMODE(st.st_mode) == 0o600


# --- restarts -------------------------------------------------------------------------------

def test_user_survives_agent_kill9_and_task_is_readopted(start_agent, users):
    alice = users[ALICE]
    body = {"id": "lasting", "user": ALICE, "cmd": "sleep 2; id -u; echo $USER"}
    agent = start_agent()
    status, doc = agent.post(body)
    assert status == 201, doc
    pid = doc["pid"]
    spec = json.loads(read_file(os.path.join(task_dir(agent, "lasting"), "spec.json")))
    assert spec["user"] == ALICE and spec["uid"] == alice.pw_uid
    agent.kill9()

    agent = start_agent()
    status, doc = agent.get("lasting")
    assert status == 200, doc
    assert doc["state"] == "running" and doc["pid"] == pid
    assert doc["user"] == ALICE and doc["uid"] == alice.pw_uid
    assert status_ids(pid)[0] == [alice.pw_uid] * 4
    status, again = agent.post(body)
    assert status == 200 and again["user"] == ALICE
    doc = agent.wait_final("lasting")
    assert doc["state"] == "succeeded" and doc["user"] == ALICE, doc
    assert agent.output("lasting")[0].decode().splitlines() == [str(alice.pw_uid), ALICE]
    agent.kill9()
    agent = start_agent()
    assert agent.get("lasting") == (200, doc)


# --- the token file and the state directory -------------------------------------------------

def test_token_file_of_another_user_is_refused(users, tmpdir_path):
    token_file = os.path.join(tmpdir_path, "bobs-token")
    write_token(token_file)
    os.chown(token_file, users[BOB].pw_uid, users[BOB].pw_gid)
    code, err = run_refusing([AGENT, "--listen", "127.0.0.1:%d" % free_port(), "--token-file",
                              token_file, "--state-dir", os.path.join(tmpdir_path, "state"),
                              "--name", NODE])
    assert code == 2, err
    assert "token file %s is owned by %s (uid %d)" % (token_file, BOB, users[BOB].pw_uid) in err
    assert "chown root %s" % token_file in err
    assert not os.path.exists(os.path.join(tmpdir_path, "state"))


def test_token_file_of_root_is_accepted_by_a_user_agent(start_agent, users, tmpdir_path):
    bob = users[BOB]
    token_file = os.path.join(tmpdir_path, "roots-token")
    write_token(token_file)
    os.chmod(token_file, 0o600)
    # Root owns it, 0600: bob could not even read it, and says so.
    base = os.path.join(tmpdir_path, "bobs")
    os.mkdir(base, 0o700)
    os.chown(base, bob.pw_uid, bob.pw_gid)
    code, err = run_refusing(["setpriv", "--reuid", str(bob.pw_uid), "--regid",
                              str(bob.pw_gid), "--init-groups", "--", AGENT, "--listen",
                              "127.0.0.1:%d" % free_port(), "--token-file", token_file,
                              "--state-dir", os.path.join(base, "state")])
    assert code == 2 and "Permission denied" in err and "owned by" not in err, err


def test_state_dir_open_to_others_is_made_private(start_agent, tmpdir_path):
    state = os.path.join(tmpdir_path, "open-state")
    os.mkdir(state)
    os.chmod(state, 0o777)
    agent = start_agent(state_dir=state)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert "state directory %s was accessible by group or others (mode 0777); changed its " \
        "mode to 0700" % state in agent.stderr()
    agent.post({"id": "private", "cmd": "echo hi"})
    assert agent.wait_final("private")["state"] == "succeeded"
    d = task_dir(agent, "private")
    for name in ("spec.json", "result.json", "stdout", "stderr", "pid", "pgid", "supervisor"):
        assert stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_state_dir_of_another_user_is_refused(users, tmpdir_path):
    state = os.path.join(tmpdir_path, "bobs-state")
    os.mkdir(state, 0o700)
    os.chown(state, users[BOB].pw_uid, users[BOB].pw_gid)
    token_file = os.path.join(tmpdir_path, "token")
    write_token(token_file)
    code, err = run_refusing([AGENT, "--listen", "127.0.0.1:%d" % free_port(), "--token-file",
                              token_file, "--state-dir", state, "--name", NODE])
    assert code == 1, err
    assert "refusing state directory %s: it is owned by %s (uid %d)" % (
        state, BOB, users[BOB].pw_uid) in err
    assert "chown root %s" % state in err
    assert os.listdir(state) == []


def test_ledger_file_is_private(start_agent, tmpdir_path):
    ledger = os.path.join(tmpdir_path, "ledger.db")
    agent = start_agent(extra=("--ledger", ledger))
    status, doc = agent.request("POST", "/api/ledger/record",
                                {"record_id": "r1", "step": 1, "metrics": {"loss": 1.0},
                                 "path": "/ckpt/step-1"})
    assert status in (200, 201), doc
    made = [p for p in os.listdir(tmpdir_path) if p.startswith("ledger.db")]
    assert "ledger.db" in made
    for name in made:
        assert stat.S_IMODE(os.stat(os.path.join(tmpdir_path, name)).st_mode) == 0o600, name
