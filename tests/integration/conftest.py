"""Harness for integration tests: real agents on loopback, a real FUSE mount.

Every helper stops what it started (fixtures finalize even when a test fails), so a
failing case cannot wedge the next one."""
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("CLUSTERFS_BUILD", ROOT / "build"))
AGENT_BIN = BUILD / "tools" / "agent" / "clusterfs-agent"
DAEMON_BIN = BUILD / "daemon" / "clusterfs"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc, log_path, deadline_s=10.0):
    """Waits for an agent's "listening on" line, which it logs once it serves requests
    (its port accepts connections a little earlier). False if it exited or timed out."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        with open(log_path) as f:
            if "listening on " in f.read():
                return True
        time.sleep(0.05)
    return False


def wait_until(pred, timeout=10.0, step=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def mounted(path):
    """/proc/mounts lists the mountpoint (a FUSE mount whose daemon died is still listed,
    though os.path.ismount() is false for it)."""
    path = os.path.abspath(path)  # no stat: the mount may not answer
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


def abort_fuse_connection(path):
    """Aborts the FUSE connection of the mount on path through fusectl (mounted if need
    be): the last resort for a daemon that cannot exit because a request waits for it."""
    path = os.path.abspath(path)  # no stat: the mount may not answer
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                major, minor = (int(x) for x in fields[2].split(":"))
                break
        else:
            return False
    conns = Path("/sys/fs/fuse/connections")
    with open("/proc/mounts") as f:
        have_fusectl = any(line.split()[2] == "fusectl" for line in f)
    if not have_fusectl:
        subprocess.run(["mount", "-t", "fusectl", "none", str(conns)], check=False,
                       stderr=subprocess.DEVNULL)
    try:
        (conns / str((major << 20) | minor) / "abort").write_text("1")
        return True
    except OSError:
        return False


def write_token(path, value):
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (value + "\n").encode())
    os.close(fd)
    os.chmod(path, 0o600)
    return path


AGENT_TOKEN = "t0ken-for-tests-5f2c9a"  # the token of agents the agent tests start
SUPERVISOR = "clusterfs-agent-supervise"  # the agent runs it from its own directory
# CLUSTERFS_AGENT_VALGRIND=1: agents started with valgrind=True run under memcheck (not
# their supervisors), and an error or a definite leak makes them exit 99 (checked at stop)
AGENT_VALGRIND = os.environ.get("CLUSTERFS_AGENT_VALGRIND") == "1"
VALGRIND_CMD = ["valgrind", "--quiet", "--trace-children=no", "--error-exitcode=99",
                "--leak-check=full", "--errors-for-leak-kinds=definite"]
AGENT_START_S = 60.0 if AGENT_VALGRIND else 10.0


class Agent:
    """One clusterfs-agent process on 127.0.0.1, its files under tmp: the log (appended to
    across restarts of the same name) and, unless told, its state directory. name None
    starts it without --name. prefix runs it under another program (setpriv, valgrind)."""

    def __init__(self, tmp, name, token_file, port=None, extra=(), state=None, env=None,
                 log=None, prefix=(), valgrind=False):
        self.name = name
        self.port = port or free_port()
        self.token_file = Path(token_file)
        try:
            self.token = self.token_file.read_text().strip()
        except OSError:
            self.token = None  # a test of a missing token file
        self.state = Path(state) if state else Path(tmp) / f"agent-{name}-state"
        self.state_dir = str(self.state)
        self.log_path = Path(log) if log else Path(tmp) / f"agent-{name}.log"
        self.stderr_path = str(self.log_path)
        self.killed = False
        self.valgrind = valgrind and AGENT_VALGRIND
        self.log = open(self.log_path, "ab")
        start = self.log.tell()
        args = [str(AGENT_BIN), "--listen", f"127.0.0.1:{self.port}", "--token-file",
                str(self.token_file), "--state-dir", str(self.state)]
        if name is not None:
            args += ["--name", name]
        prefix = [*prefix, *(VALGRIND_CMD if self.valgrind else [])]
        self.proc = subprocess.Popen([*prefix, *args, *extra], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log, env=env)
        try:
            wait_until(lambda: self._listening(start),
                       60 if self.valgrind else AGENT_START_S, what=f"agent {name} listening")
        except AssertionError:
            self.stop()
            raise AssertionError("agent did not start listening:\n" + self.stderr())

    def _listening(self, start):
        if self.proc.poll() is not None:
            raise AssertionError(f"agent {self.name} exited with {self.proc.returncode}")
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return b"listening on " in f.read()

    def stderr(self):
        return self.log_path.read_text(errors="replace")

    def connect(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def raw(self, method, path, body=None, token=True, headers=None, timeout=30):
        """One request on a fresh connection: (status, response, body bytes). token True
        sends the agent's own, None sends none; a body that is not bytes or str is sent
        as JSON."""
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = "Bearer " + (self.token if token is True else token)
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        conn = self.connect(timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            return resp.status, resp, resp.read()
        finally:
            conn.close()

    def request(self, method, path, body=None, token=True, headers=None):
        """(status, response, parsed JSON body); checks that the answer is a JSON line."""
        status, resp, raw = self.raw(method, path, body, token, headers)
        assert resp.getheader("Content-Type") == "application/json", raw
        assert raw.endswith(b"\n"), raw
        return status, resp, json.loads(raw)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def kill9(self):
        self.killed = True
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        """Stops the agent (SIGTERM, then SIGKILL after 10 s); returns its exit status,
        None when it had been killed with kill9(), -1 when it had to be killed now."""
        code = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(60 if self.valgrind else 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                code = -1
        if not self.log.closed:
            self.log.close()
        if code is None and not self.killed:
            code = self.proc.returncode
        return code


def kill_leftovers(state_dir):
    """Kills the process groups and supervisors of an agent's tasks without a result."""
    tasks = os.path.join(state_dir, "tasks")
    if not os.path.isdir(tasks):
        return
    for task_id in os.listdir(tasks):
        d = os.path.join(tasks, task_id)
        if os.path.exists(os.path.join(d, "result.json")):
            continue
        try:
            with open(os.path.join(d, "pgid")) as f:
                os.killpg(int(f.read()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        try:
            with open(os.path.join(d, "supervisor")) as f:
                pid = int(f.read().split()[0])
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                args = f.read().split(b"\0")
            if os.path.basename(args[0]) == SUPERVISOR.encode() and args[1] == d.encode():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


@pytest.fixture
def agent_pool():
    """Factory: agent_pool(tmp, cls=Agent, **kw) starts an agent (a cls) with files under
    tmp. At teardown every one is stopped, the tasks they left are killed, and the test
    fails when one did not exit 0."""
    started = []

    def start(tmp, cls=Agent, **kw):
        kw.setdefault("log", os.path.join(tmp, "agent-%d.log" % len(started)))
        agent = cls(tmp, **kw)
        started.append(agent)
        return agent

    yield start
    failures = []
    for agent in started:
        code = agent.stop()
        if code not in (0, None):
            failures.append("agent exited with %s:\n%s" % (code, agent.stderr()))
    for state in {a.state_dir for a in started}:
        kill_leftovers(state)
    if failures:
        pytest.fail("\n".join(failures))


class Mount:
    """clusterfs -f on a fresh mountpoint."""

    def __init__(self, tmp, config=None, env=None, state=None, extra=(), mnt=None):
        self.tmp = Path(tmp)
        # a mountpoint every user can reach (pytest's own tmp dirs are 0700), so that
        # tests can act as another uid
        self.mnt = Path(mnt) if mnt else Path(tempfile.mkdtemp(prefix="clusterfs-mnt-"))
        os.chmod(self.mnt, 0o755)
        self.state = Path(state) if state else self.tmp / "state"
        self.log_path = self.tmp / "clusterfs.log"
        self.log = open(self.log_path, "ab")
        args = [str(DAEMON_BIN), "-f", "-s", str(self.state)]
        if os.environ.get("CLUSTERFS_VALGRIND"):
            # memcheck: errors and definite leaks make the daemon exit 99 (checked at stop)
            args = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
                    "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite",
                    f"--log-file={self.tmp}/valgrind.%p.log", *args]
        if config:
            args += ["-c", str(config)]
        args += [*extra, str(self.mnt)]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log,
                                     env={**os.environ, **(env or {})})
        wait_until(self._mounted, 60 if os.environ.get("CLUSTERFS_VALGRIND") else 10,
                   what="mount")

    def _mounted(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"clusterfs exited with {self.proc.returncode}: "
                                 + self.log_path.read_text()[-2000:])
        return os.path.ismount(self.mnt)

    def path(self, *parts):
        return self.mnt.joinpath(*parts)

    def read(self, *parts):
        return self.path(*parts).read_text()

    def json(self, *parts):
        return json.loads(self.read(*parts))

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    # a thread stuck in the kernel on this very mount: cut the connection
                    abort_fuse_connection(self.mnt)
                    self.proc.wait()
        # always: a daemon that died leaves its mount listed (and ENOTCONN) until this
        if mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        if not mounted(self.mnt):
            try:
                self.mnt.rmdir()
            except OSError:
                pass
        self.log.close()
        if self.proc.returncode == 99:
            # ASan/UBSan (tests/run.sh --asan) or valgrind (CLUSTERFS_VALGRIND=1) found
            # something: the report is in the daemon's log or in valgrind.PID.log
            reports = [p.read_text()[-3000:] for p in self.tmp.glob("valgrind.*.log")]
            raise AssertionError("clusterfs reported memory errors:\n" +
                                 self.log_path.read_text()[-3000:] + "\n".join(reports))


def make_config(path, agents, token_file, **overrides):
    """Writes a hosts.json for the given agents; overrides merge into the top level."""
    cfg = {
        "cluster": "test",
        "auth": {"token_file": str(token_file)},
        "probe": {"interval_s": 5, "timeout_ms": 1000, "stale_after_s": 120,
                  "offline_after_s": 600, "unhealthy_after": 3},
        "thresholds": {"cpu": [100, 100], "memory": [100, 100], "disk": [100, 100],
                       "load": [1000, 1000]},
        # the suite runs as root; tests of the identity policy set "tasks" themselves
        "tasks": {"allow_root": True},
        "hosts": {a.name: {"host": "127.0.0.1", "role": "worker",
                           "services": {"agent": {"port": a.port}}} for a in agents},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    Path(path).write_text(json.dumps(cfg, indent=2) + "\n")
    return Path(path)


@pytest.fixture
def token(tmp_path):
    return write_token(tmp_path / "token", "s3cret-" + os.urandom(8).hex())


@pytest.fixture
def agents(tmp_path, token):
    """Factory: agents(3) starts three agents sharing the test token."""
    started = []

    def start(n, names=None, token_file=None):
        for i in range(n):
            name = names[i] if names else f"n{len(started) + 1}"
            started.append(Agent(tmp_path, name, token_file or token))
        return started[-n:]

    yield start
    for a in started:
        a.stop()


@pytest.fixture
def mount(tmp_path):
    """Factory: mount(config) mounts clusterfs; unmounted at the end of the test."""
    mounts = []

    def start(config=None, **kw):
        d = tmp_path / f"m{len(mounts)}"
        d.mkdir()
        m = Mount(d, config, **kw)
        mounts.append(m)
        return m

    yield start
    for m in mounts:
        m.stop()
