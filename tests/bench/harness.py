"""The benchmarks' plumbing, one copy for all of them: a Bench that records what it starts
(agents, the simulator, clusterfs mounts) and stops it by PID, unmounting what is left,
even on failure or Ctrl-C; the token and config files; waiting; timing helpers.

It follows tests/integration/conftest.py (0600 token files, a mount waited for and
unmounted with `fusermount3 -u -z`) but stands alone: the benchmarks run with Debian's
/usr/bin/python3 and the standard library only, and conftest.py needs pytest."""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("CLUSTERFS_BUILD", ROOT / "build"))

# the benches load the machine: no node may turn critical (and ineligible) on that
RELAXED_THRESHOLDS = {"cpu": [100, 100], "memory": [100, 100], "disk": [100, 100],
                      "load": [1000, 1000]}


def logger(name):
    """A log(msg) that writes "[name] msg" to stderr."""
    def log(msg):
        print(f"[{name}] {msg}", file=sys.stderr, flush=True)
    return log


# ---- timing ----

def pct(xs, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def ratio(a, b, digits=2):
    """a / b as the tables print it ("1.23x"), "-" when there is no baseline."""
    return f"{a / b:.{digits}f}x" if b else "-"


def cpu_s(pid):
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    """The resident set of a process, in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid):
    return rss_kb(pid) / 1024.0


# ---- waiting and ports ----

def wait_until(pred, timeout, what, step=0.02):
    """Polls pred (an OSError counts as not yet) until it is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def mounted(path):
    """/proc/mounts lists the mountpoint: a FUSE mount whose daemon died is still listed,
    though os.path.ismount() is false for it (no stat: it may not answer)."""
    path = os.path.abspath(str(path))
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secret(path, text):
    """Writes text and a newline to path, mode 0600 (tokens); returns path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (text + "\n").encode())
    os.close(fd)
    return Path(path)


# ---- what a bench starts ----

class Bench:
    """Everything started is recorded here and stopped by PID in cleanup(), in reverse
    order; mounts a daemon left behind are unmounted. The bearer token of the agents and
    the daemon is b.token, in b.token_file."""

    def __init__(self, build, keep=False, name="bench"):
        self.build = Path(build)
        self.keep = keep
        self.log = logger(name)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"clusterfs-bench-{name}-"))
        os.chmod(self.tmp, 0o755)  # tasks may run as other users
        self.procs = []   # (name, Popen)
        self.mounts = []  # mountpoints
        self.token = "bench-" + os.urandom(12).hex()
        self.token_file = secret(self.tmp / "token", self.token)

    def secret_file(self, name, text):
        """A 0600 file in tmp holding exactly text."""
        path = self.tmp / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, text.encode())
        os.close(fd)
        return path

    def spawn(self, name, args, **kw):
        """Starts args with stdout and stderr in tmp/NAME.log (unless stdout= or stdin=
        say otherwise)."""
        logf = open(self.tmp / f"{name}.log", "ab")
        p = subprocess.Popen(args, stdout=kw.pop("stdout", logf), stderr=logf,
                             stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)
        logf.close()
        self.procs.append((name, p))
        return p

    def stop(self, p, timeout=10):
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def mount(self, name, config, state=None, timeout=10, step=0.02, n_nodes=None,
              mnt=None):
        """Mounts clusterfs -f on tmp/mnt-NAME (or mnt) with config and the state
        directory tmp/state-NAME (or state); waits for the mount and, with n_nodes, for
        the first probe of that many nodes (stats' reachable count, which probes
        nothing). Returns (mountpoint, daemon)."""
        mnt = Path(mnt) if mnt else self.tmp / f"mnt-{name}"
        mnt.mkdir(exist_ok=True)
        state = state or self.tmp / f"state-{name}"
        p = self.spawn(f"clusterfs-{name}", [str(self.build / "daemon/clusterfs"), "-f", "-s",
                                             str(state), "-c", str(config), str(mnt)])
        self.mounts.append(mnt)

        def mounted():
            if p.poll() is not None:
                raise RuntimeError(f"clusterfs exited with {p.returncode}; see "
                                   f"{self.tmp}/clusterfs-{name}.log")
            return os.path.ismount(mnt)
        wait_until(mounted, timeout, f"the {name} mount", step)
        if n_nodes is not None:
            wait_reachable(mnt, n_nodes)
        return mnt, p

    def unmount(self, mnt, daemon):
        self.stop(daemon)
        if mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        if mnt in self.mounts:
            self.mounts.remove(mnt)

    def cleanup(self):
        for _, p in reversed(self.procs):
            self.stop(p)
        for mnt in list(self.mounts):
            if mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        if self.keep:
            self.log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def reachable(mnt):
    """Nodes whose last probe succeeded, from stats (which never triggers a probe)."""
    return json.loads((Path(mnt) / "stats").read_text())["nodes"]["reachable"]


def wait_reachable(mnt, n, timeout=30):
    """Placement needs every node's first probe (eligible = healthy or warning)."""
    wait_until(lambda: reachable(mnt) == n, timeout, f"the first probe of {n} nodes")


class Agent:
    """One clusterfs-agent on 127.0.0.1 with the bench's token, its state in tmp."""

    def __init__(self, b, i, name=None):
        self.name = name or f"n{i + 1}"
        self.port = free_port()
        self.state = b.tmp / f"agent-{self.name}"
        self.proc = b.spawn(f"agent-{self.name}", [
            str(b.build / "tools/agent/clusterfs-agent"), "--listen",
            f"127.0.0.1:{self.port}", "--token-file", str(b.token_file), "--state-dir",
            str(self.state), "--name", self.name])
        wait_until(lambda: self.proc.poll() is None and port_open(self.port), 10,
                   f"agent {self.name} on {self.port}")

    def task_file(self, task_id, name="stdout"):
        return self.state / "tasks" / task_id / name


def start_sim(b, n, delay_ms):
    """One simulator for all n nodes, on n consecutive ports below the ephemeral range
    (so clients' source ports cannot collide with them); retries another base if taken.
    Returns the ports."""
    for attempt in range(20):
        base = random.randrange(10000, 32000 - n)
        p = b.spawn(f"sim-{n}", [
            str(b.build / "tools/clusterfs-agent-sim"), "--base-port", str(base), "--count",
            str(n), "--delay-ms", str(delay_ms), "--token-file", str(b.token_file)])
        try:
            wait_until(lambda: p.poll() is None and port_open(base + n - 1), 10,
                       f"simulator on {base}..{base + n - 1}")
            return list(range(base, base + n))
        except RuntimeError:
            if p.poll() is None:
                raise
            b.stop(p)
    raise RuntimeError("no free range of ports for the simulator")


def hosts(ports, name_fmt="n{:03d}", **extra):
    """The hosts section for agents on 127.0.0.1 at ports, named by name_fmt(1, 2, ...);
    ports may be a dict name -> port."""
    items = ports.items() if isinstance(ports, dict) else (
        (name_fmt.format(i + 1), port) for i, port in enumerate(ports))
    return {name: {"host": "127.0.0.1", "role": "worker", **extra,
                   "services": {"agent": {"port": port}}} for name, port in items}


def write_config(b, name, hosts, probe, file=None, **sections):
    """Writes a hosts.json for the bench's cluster bench-NAME to tmp/FILE (NAME.json):
    the bench's token, the probe section, relaxed thresholds unless told, hosts, and any
    other sections (thresholds=None: the defaults). Returns the path."""
    cfg = {"cluster": f"bench-{name}", "auth": {"token_file": str(b.token_file)},
           "probe": probe}
    thresholds = sections.pop("thresholds", RELAXED_THRESHOLDS)
    if thresholds is not None:
        cfg["thresholds"] = thresholds
    cfg.update(sections)
    cfg["hosts"] = hosts
    path = b.tmp / (file or f"{name}.json")
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def tasks_config(b, agents, name="dispatch"):
    """The config of the task benches (dispatch, throughput, artifacts, scale): agents as
    workers, a probe that leaves them fresh, root allowed to submit (the bench runs as
    root) and no queue limit."""
    return write_config(
        b, name, hosts({a.name: a.port for a in agents}),
        {"interval_s": 30, "timeout_ms": 2000, "stale_after_s": 600, "offline_after_s": 1200,
         "unhealthy_after": 3},
        file="hosts.json", tasks={"allow_root": True, "queued_per_user": 1000000})


def submit(mnt, name, spec_bytes):
    """Creates tasks/new/NAME.json, writes it, then times close(): returns (t0 before
    close, t1 after it), wall clock."""
    fd = os.open(Path(mnt) / "tasks" / "new" / f"{name}.json",
                 os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, spec_bytes)
    except BaseException:
        os.close(fd)
        raise
    t0 = time.time()
    os.close(fd)
    t1 = time.time()
    return t0, t1
