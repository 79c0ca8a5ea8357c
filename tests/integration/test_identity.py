"""Who may do what: tasks run as their submitter, files belong to their owner, limits are
per user (DESIGN §8). Users are made by the test (useradd) and removed at the end; the
users act through runuser, as a person at a shell would."""
import errno
import grp
import json
import os
import pwd
import stat
import subprocess
import textwrap

import pytest

from conftest import AGENT_BIN, Agent, make_config, wait_until, write_token

ALICE, BOB, GROUP = "cfs_alice", "cfs_bob", "cfs_team"


def _run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def users():
    """Two users with homes; alice is also in GROUP. Removed at the end."""
    made, made_group = [], False
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        _run("groupadd", GROUP)
        made_group = True
    for name in (ALICE, BOB):
        try:
            pwd.getpwnam(name)
        except KeyError:
            _run("useradd", "-m", "-d", f"/tmp/home-{name}", "-s", "/bin/sh", name)
            made.append(name)
    _run("usermod", "-a", "-G", GROUP, ALICE)  # also when alice was left by a crashed run
    yield {n: pwd.getpwnam(n) for n in (ALICE, BOB)}
    for name in made:
        subprocess.run(["userdel", "-r", name], check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    if made_group:
        subprocess.run(["groupdel", GROUP], check=False, stderr=subprocess.DEVNULL)


# Code run as another user: each op reports "ok" or the errno's name.
PRELUDE = textwrap.dedent("""
    import errno, json, os, sys
    def op(fn):
        try:
            r = fn()
            return r if isinstance(r, str) else "ok"
        except OSError as e:
            return errno.errorcode[e.errno]
    def read(p):
        with open(p) as f:
            return f.read()
    def write(p, data):
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)
""")


def as_user(user, code):
    """Runs python code as `user`; the code sets `out`, which comes back as JSON."""
    src = PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    p = subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", "-c", src],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def submit_as(user, m, name, spec):
    """Submits as `user`; returns "ok" or the errno name of the failing open/write/close."""
    path = m.path("tasks", "new", f"{name}.json")
    return as_user(user, f"out = op(lambda: write({str(path)!r}, {json.dumps(spec)!r}))")


def wait_as(user, m, name):
    return as_user(user, f"out = read({str(m.path('tasks', name, 'wait'))!r})")


@pytest.fixture
def cluster(tmp_path, token, agents, mount, users):
    """Two real agents (root) and a mount with the default identity policy."""
    def start(**tasks):
        ags = agents(2)
        cfg = make_config(tmp_path / "hosts.json", ags, token, tasks=tasks)
        if "allow_root" not in tasks:
            d = json.loads(cfg.read_text())
            d["tasks"].pop("allow_root")
            cfg.write_text(json.dumps(d))
        m = mount(cfg)
        for a in ags:
            wait_until(lambda a=a: m.read("nodes", a.name, "status") == "healthy\n", 10,
                       what=f"{a.name} healthy")
        return m, ags
    return start


IDENTITY = "id -u; id -g; id -G; echo $HOME $USER $LOGNAME $SHELL; umask; ps -o sid= -p $$"


def test_tasks_run_as_their_submitter_on_every_node(cluster, users):
    m, ags = cluster()
    alice = users[ALICE]
    team = grp.getgrnam(GROUP).gr_gid
    for a in ags:
        assert submit_as(ALICE, m, f"who-{a.name}", {"cmd": IDENTITY, "node": a.name}) == "ok"
    for a in ags:
        assert wait_as(ALICE, m, f"who-{a.name}") == "succeeded 0\n"
        lines = as_user(ALICE, f"out = read({str(m.path('tasks', f'who-{a.name}', 'stdout'))!r})"
                        ).splitlines()
        assert lines[0] == str(alice.pw_uid)
        assert lines[1] == str(alice.pw_gid)
        groups = lines[2].split()
        assert str(team) in groups and "0" not in groups
        assert lines[3].split() == [alice.pw_dir, ALICE, ALICE, "/bin/sh"]
        assert lines[4] == "0022"
        # a session of its own, not the agent's
        assert int(lines[5]) != os.getsid(a.proc.pid)
        info = json.loads(as_user(ALICE, f"out = read({str(m.path('tasks', f'who-{a.name}', 'info'))!r})"))
        assert info["submitter"] == ALICE and info["run_as"] == ALICE
        assert info["submitter_uid"] == alice.pw_uid


def test_files_belong_to_their_owner(cluster, users):
    m, _ = cluster()
    alice, bob = users[ALICE], users[BOB]
    assert submit_as(ALICE, m, "secret", {"cmd": "echo s3cr3t", "env": {"API_KEY": "k-123"}}) == "ok"
    assert wait_as(ALICE, m, "secret") == "succeeded 0\n"
    d = m.path("tasks", "secret")
    st = os.stat(d)
    assert (st.st_uid, st.st_gid) == (alice.pw_uid, alice.pw_gid)
    for name, mode in (("spec", 0o600), ("info", 0o600), ("stdout", 0o600), ("stderr", 0o600),
                       ("wait", 0o600), ("status", 0o444), ("node", 0o444),
                       ("exit_code", 0o444), ("ctl", 0o666)):
        st = os.stat(d / name)
        assert stat.S_IMODE(st.st_mode) == mode, name
        assert st.st_uid == alice.pw_uid, name
    tasks = str(m.path("tasks"))
    out = as_user(BOB, f"""
        d = {str(d)!r}
        out = {{n: op(lambda n=n: read(d + "/" + n)) for n in
                ("spec", "info", "stdout", "stderr", "wait")}}
        out["status"] = op(lambda: read(d + "/status"))
        out["exit_code"] = op(lambda: read(d + "/exit_code"))
        out["ls"] = op(lambda: " ".join(sorted(os.listdir({tasks!r}))))
        out["ctl"] = op(lambda: write(d + "/ctl", "cancel\\n"))
    """)
    for n in ("spec", "info", "stdout", "stderr", "wait"):
        assert out[n] == "EACCES", n
    assert out["status"] == "succeeded\n" and out["exit_code"] == "0\n"
    assert "secret" in out["ls"].split()
    assert out["ctl"] == "EPERM"
    # the owner reads them
    assert "k-123" in as_user(ALICE, f"out = read({str(d / 'spec')!r})")


def test_group_reads_with_tasks_group(cluster, users):
    m, _ = cluster(group=GROUP)
    assert submit_as(BOB, m, "shared", {"cmd": "echo hi"}) == "ok"
    assert wait_as(BOB, m, "shared") == "succeeded 0\n"
    st = os.stat(m.path("tasks", "shared", "stdout"))
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == grp.getgrnam(GROUP).gr_gid and st.st_uid == users[BOB].pw_uid
    # alice is in the group: she reads; the config shows the group
    assert as_user(ALICE, f"out = read({str(m.path('tasks', 'shared', 'stdout'))!r})") == "hi\n"
    assert m.json("config")["tasks"]["group"] == GROUP


def test_drafts_are_their_creators(cluster, users):
    m, _ = cluster()
    new = str(m.path("tasks", "new"))
    out = as_user(ALICE, f"""
        fd = os.open({new!r} + "/draft.tmp", os.O_WRONLY | os.O_CREAT, 0o666)
        os.write(fd, b'{{"cmd": "echo', )
        os.close(fd)
        out = oct(os.stat({new!r} + "/draft.tmp").st_mode & 0o777)
    """)
    assert out == "0o600"
    assert as_user(BOB, f"out = op(lambda: read({new!r} + '/draft.tmp'))") == "EACCES"
    assert as_user(BOB, f"out = op(lambda: os.unlink({new!r} + '/draft.tmp'))") in ("EPERM",
                                                                                    "EACCES")


def test_root_is_refused_unless_allowed(cluster):
    m, _ = cluster()
    p = m.path("tasks", "new", "asroot.json")
    with pytest.raises(OSError) as e:
        with open(p, "w") as f:
            f.write('{"cmd": "id -u"}')
    assert e.value.errno == errno.EPERM
    why = m.read("tasks", "new", "asroot.error")
    assert "root may not submit tasks" in why and "allow_root" in why
    assert not m.path("tasks", "asroot").exists()


def test_root_runs_as_root_when_allowed(cluster):
    m, _ = cluster(allow_root=True)
    m.path("tasks", "new", "rootok.json").write_text('{"cmd": "id -u"}')
    assert m.read("tasks", "rootok", "wait") == "succeeded 0\n"
    assert m.read("tasks", "rootok", "stdout") == "0\n"


def test_env_cannot_change_identity(cluster):
    m, _ = cluster()
    for var in ("USER", "HOME", "LOGNAME", "SHELL"):
        assert submit_as(ALICE, m, f"lie{var}", {"cmd": "true", "env": {var: "root"}}) == "EINVAL"
        why = as_user(ALICE, f"out = read({str(m.path('tasks', 'new', f'lie{var}.error'))!r})")
        assert f"may not set {var}" in why
    # LD_PRELOAD and friends are the user's own business
    assert submit_as(ALICE, m, "preload", {"cmd": "echo $LD_LIBRARY_PATH",
                                           "env": {"LD_LIBRARY_PATH": "/opt/x"}}) == "ok"
    assert wait_as(ALICE, m, "preload") == "succeeded 0\n"


def test_run_as_agent_policy(cluster, users):
    m, _ = cluster(run_as="agent")
    assert submit_as(ALICE, m, "asagent", {"cmd": "id -u"}) == "ok"
    assert wait_as(ALICE, m, "asagent") == "succeeded 0\n"
    assert as_user(ALICE, f"out = read({str(m.path('tasks', 'asagent', 'stdout'))!r})") == "0\n"
    info = json.loads(as_user(ALICE, f"out = read({str(m.path('tasks', 'asagent', 'info'))!r})"))
    assert info["run_as"] is None and info["submitter"] == ALICE


def test_per_user_draft_limits(cluster):
    m, _ = cluster(drafts_per_user=3, draft_bytes_per_user=1)
    new = str(m.path("tasks", "new"))
    out = as_user(ALICE, f"""
        out = [op(lambda i=i: write({new!r} + "/a%d.tmp" % i, "x")) for i in range(4)]
    """)
    assert out == ["ok", "ok", "ok", "EDQUOT"]
    # another user is not stopped by alice's drafts
    assert as_user(BOB, f"out = op(lambda: write({new!r} + '/b0.tmp', 'x'))") == "ok"
    # bytes: 1 MiB per user over all drafts
    out = as_user(BOB, f"""
        out = [op(lambda: write({new!r} + "/b0.tmp", "y" * 700000)),
               op(lambda: write({new!r} + "/b1.tmp", "y" * 700000))]
    """)
    assert out == ["ok", "EDQUOT"]
    # removing drafts gives the room back
    out = as_user(ALICE, f"""
        os.unlink({new!r} + "/a0.tmp")
        out = op(lambda: write({new!r} + "/a3.tmp", "x"))
    """)
    assert out == "ok"


def test_per_user_queued_limit(cluster):
    m, ags = cluster(queued_per_user=2)
    m.path("nodes", ags[0].name, "ctl").write_text("drain\n")
    for i in range(2):
        assert submit_as(ALICE, m, f"q{i}", {"cmd": "true", "node": ags[0].name}) == "ok"
    assert submit_as(ALICE, m, "q2", {"cmd": "true", "node": ags[0].name}) == "EDQUOT"
    why = as_user(ALICE, f"out = read({str(m.path('tasks', 'new', 'q2.error'))!r})")
    assert "2 unfinished tasks" in why and "queued_per_user" in why
    assert submit_as(BOB, m, "bq", {"cmd": "true", "node": ags[0].name}) == "ok"
    m.path("nodes", ags[0].name, "ctl").write_text("resume\n")
    assert wait_as(ALICE, m, "q0") == "succeeded 0\n"
    assert wait_as(ALICE, m, "q1") == "succeeded 0\n"
    assert submit_as(ALICE, m, "q3", {"cmd": "true"}) == "ok"


def test_unknown_user_on_the_node_fails_with_the_reason(tmp_path, token, agents, mount, users):
    """The node's passwd has no alice (its own mount namespace, a copy of /etc/passwd
    without her): her task fails with the reason, never runs as anyone else."""
    good = agents(1)[0]
    passwd = tmp_path / "passwd"
    passwd.write_text("".join(l for l in open("/etc/passwd") if not l.startswith(ALICE + ":")))
    port = __import__("conftest").free_port()
    log = open(tmp_path / "agent-far.log", "wb")
    far = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount --bind {passwd} /etc/passwd && exec "$0" "$@"', str(AGENT_BIN),
         "--listen", f"127.0.0.1:{port}", "--token-file", str(token), "--state-dir",
         str(tmp_path / "far-state"), "--name", "far"], stdout=log, stderr=log)
    try:
        wait_until(lambda: b"listening on " in (tmp_path / "agent-far.log").read_bytes(), 10,
                   what="agent far listening")
        cfg = make_config(tmp_path / "hosts.json", [good], token)
        d = json.loads(cfg.read_text())
        d["hosts"]["far"] = {"host": "127.0.0.1", "services": {"agent": {"port": port}}}
        cfg.write_text(json.dumps(d))
        m = mount(cfg)
        wait_until(lambda: m.read("nodes", "far", "status") == "healthy\n", 10, what="far")
        assert submit_as(ALICE, m, "nouser", {"cmd": "id -u > /tmp/cfs-nouser-ran",
                                               "node": "far"}) == "ok"
        assert wait_as(ALICE, m, "nouser") == "failed -1\n"
        info = m.json("tasks", "nouser", "info")
        assert f"user {ALICE} does not exist on far" in info["reason"]
        assert not os.path.exists("/tmp/cfs-nouser-ran")
        # the same user runs on the node that has her
        assert submit_as(ALICE, m, "hasuser", {"cmd": "id -un", "node": good.name}) == "ok"
        assert wait_as(ALICE, m, "hasuser") == "succeeded 0\n"
    finally:
        far.terminate()
        far.wait(10)
        log.close()


def test_store_and_state_dir_are_private(tmp_path, token, agents, mount):
    ags = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ags, token)
    state = tmp_path / "open-state"
    state.mkdir(mode=0o777)
    os.chmod(state, 0o777)
    m = mount(cfg, state=state)
    m.path("tasks", "new", "t.json").write_text('{"cmd": "true"}')
    assert m.read("tasks", "t", "wait") == "succeeded 0\n"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert "made it 0700" in m.log_path.read_text()
    for f in state.iterdir():
        if f.name.startswith("clusterfs.db"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name


def test_state_dir_of_another_user_is_refused(tmp_path, token, agents, users):
    ags = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ags, token)
    state = tmp_path / "bobs-state"
    state.mkdir(mode=0o700)
    os.chown(state, users[BOB].pw_uid, users[BOB].pw_gid)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run([str(AGENT_BIN.parents[2] / "daemon" / "clusterfs"), "-f", "-s",
                        str(state), "-c", str(cfg), str(mnt)], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 6
    assert f"belongs to uid {users[BOB].pw_uid}" in p.stderr


def test_token_file_of_another_user_is_refused(tmp_path, agents, users):
    ags = agents(1)
    tok = write_token(tmp_path / "bobs.token", "t-" + os.urandom(8).hex())
    os.chown(tok, users[BOB].pw_uid, users[BOB].pw_gid)
    cfg = make_config(tmp_path / "hosts.json", ags, tok)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run([str(AGENT_BIN.parents[2] / "daemon" / "clusterfs"), "-f", "-s",
                        str(tmp_path / "st"), "-c", str(cfg), str(mnt)], capture_output=True,
                       text=True, timeout=20)
    assert p.returncode == 5
    assert f"belongs to uid {users[BOB].pw_uid}" in p.stderr and "chown" in p.stderr
