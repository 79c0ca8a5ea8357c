#!/usr/bin/python3
"""Task dispatch benchmark: how long from close() of a spec in MNT/tasks/new/ until the
task's process runs on its agent, and how many durable submissions per second the mount
takes, beside the floor of POSTing the same task to the agent directly (and beside
`ssh localhost` when an sshd can be started here).

Goals (README "Tasks", item 8): p50 close->exec under 5 ms; at least 1,000 durable
submissions per second. Not part of the test suite; see tests/bench/README.md.

Uses the Debian python (/usr/bin/python3), standard library only."""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (ROOT, Agent, Bench, free_port, logger, pct, port_open,  # noqa: E402
                     ratio, submit, tasks_config, wait_until)

LAT_CMD = ["date", "+%s.%N"]  # its first action is to read CLOCK_REALTIME
RATE_CMD = ["true"]
GOAL_P50_MS = 5.0
GOAL_RATE = 1000.0


log = logger("dispatch")


# ---- workers: started as `dispatch.py --worker KIND ...`, one process per submitter ----

def worker_main(argv):
    """Submits COUNT tasks named PREFIX-I, one after another, once the parent writes a
    byte to stdin (so that all submitters start together). Prints one JSON line: ok,
    errors, the first errors' text, start and end (time.time()) and the per-submission
    durations in ms."""
    kind, target, prefix, count = argv[0], argv[1], argv[2], int(argv[3])
    spec = json.dumps({"cmd": RATE_CMD}).encode()
    conn = token = None
    if kind == "http":
        token = Path(argv[4]).read_text().strip()
        conn = http.client.HTTPConnection("127.0.0.1", int(target), timeout=30)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read(1)
    ok, errors, first, durs = 0, 0, [], []
    start = time.time()
    for i in range(count):
        name = f"{prefix}-{i}"
        t = time.perf_counter()
        try:
            if kind == "mount":
                fd = os.open(os.path.join(target, "tasks", "new", name + ".json"),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, spec)
                finally:
                    os.close(fd)  # the submission: committed (fsync) before it returns
            else:
                body = json.dumps({"id": name, "cmd": RATE_CMD})
                conn.request("POST", "/api/node/tasks", body, headers)
                r = conn.getresponse()
                data = r.read()
                if r.status != 201:
                    raise OSError(f"HTTP {r.status}: {data[:200]!r}")
            ok += 1
            durs.append((time.perf_counter() - t) * 1000.0)
        except OSError as e:
            errors += 1
            if len(first) < 3:
                first.append(f"{name}: {e}")
    end = time.time()
    print(json.dumps({"ok": ok, "errors": errors, "first_errors": first, "start": start,
                      "end": end, "durs": durs}), flush=True)
    return 0


# ---- the measurements (the plumbing is in harness.py) ----

def wait_started(agents, task_id, timeout=10.0):
    """Polls the agents' state directories (plain local files, not the mount, so that the
    wait does not load the daemon) until the task's stdout holds its timestamp. Returns
    the agent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for a in agents:
            try:
                if a.task_file(task_id).stat().st_size > 0:
                    return a
            except FileNotFoundError:
                pass
        time.sleep(0.0005)
    raise RuntimeError(f"task {task_id} did not start within {timeout}s")


def busy(mnt):
    return len(os.listdir(mnt / "tasks" / "running")) + len(os.listdir(mnt / "tasks" / "queued"))


def parse_stamp(text, what):
    try:
        return float(text.strip())
    except ValueError:
        raise RuntimeError(f"{what}: no timestamp in its stdout: {text[:80]!r}")


def latency_mount(b, agents, config, n, warmup):
    """(a) through the mount: one task at a time, each submitted while a node has a free
    slot and nothing else is queued, so that the figure is dispatch and not waiting."""
    mnt, daemon = b.mount("latency", config, n_nodes=len(agents))
    spec = json.dumps({"cmd": LAT_CMD}).encode()
    instance = None
    closes, execs, after = [], [], []
    try:
        for i in range(warmup + n):
            name = f"lat{i}"
            wait_until(lambda: busy(mnt) < len(agents), 30, "a free slot", step=0.002)
            t0, t1 = submit(mnt, name, spec)
            if instance is None:
                # the dispatch id is INSTANCE.NAME.ATTEMPT; learn INSTANCE once
                def found():
                    for a in agents:
                        d = a.state / "tasks"
                        for e in (os.listdir(d) if d.is_dir() else ()):
                            if e.endswith(f".{name}.1"):
                                return e[: -len(f".{name}.1")]
                    return None
                deadline = time.monotonic() + 10
                while not instance and time.monotonic() < deadline:
                    instance = found()
                    time.sleep(0.001)
                if not instance:
                    raise RuntimeError("the first task never reached an agent")
            wait_started(agents, f"{instance}.{name}.1")
            if i >= warmup:
                closes.append((name, t0, t1))
        # every task ends; its stdout is then read back through the mount
        wait_until(lambda: busy(mnt) == 0, 60, "the latency tasks to end", step=0.05)
        for name, t0, t1 in closes:
            status = (mnt / "tasks" / name / "status").read_text().strip()
            if status != "succeeded":
                raise RuntimeError(f"task {name} ended {status}")
            ts = parse_stamp((mnt / "tasks" / name / "stdout").read_text(), name)
            execs.append((ts - t0) * 1000.0)
            after.append((ts - t1) * 1000.0)
    finally:
        b.unmount(mnt, daemon)
    return {"close": [(t1 - t0) * 1000.0 for _, t0, t1 in closes], "exec": execs,
            "after": after}


class Http:
    """A keep-alive client of one agent."""

    def __init__(self, b, port):
        self.headers = {"Authorization": f"Bearer {b.token}",
                        "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, method, path, body=None):
        self.conn.request(method, path, body, self.headers)
        r = self.conn.getresponse()
        return r.status, r.read()

    def close(self):
        self.conn.close()


def latency_http(b, agent, n, warmup):
    """(a) the floor: the same task POSTed to an agent over a keep-alive connection."""
    c = Http(b, agent.port)
    run = os.urandom(4).hex()
    sent = []
    try:
        for i in range(warmup + n):
            tid = f"direct-{run}-{i}"
            body = json.dumps({"id": tid, "cmd": LAT_CMD})
            t0 = time.time()
            status, data = c.call("POST", "/api/node/tasks", body)
            t1 = time.time()
            if status != 201:
                raise RuntimeError(f"POST {tid}: HTTP {status}: {data[:200]!r}")
            wait_started([agent], tid)
            if i >= warmup:
                sent.append((tid, t0, t1))
        execs, posts = [], []
        for tid, t0, t1 in sent:
            for _ in range(1000):
                status, data = c.call("GET", f"/api/node/tasks/{tid}")
                if status == 200 and json.loads(data)["state"] != "running":
                    break
                time.sleep(0.005)
            status, data = c.call("GET", f"/api/node/tasks/{tid}/stdout")
            ts = parse_stamp(data.decode(), tid)
            execs.append((ts - t0) * 1000.0)
            posts.append((t1 - t0) * 1000.0)
    finally:
        c.close()
    return {"close": posts, "exec": execs}


def run_workers(b, kind, targets, n, parallel, extra=()):
    """parallel submitter processes, n tasks in all; started together. Returns the
    successful submissions, errors and their rate over the wall time of the run."""
    per = [n // parallel + (1 if w < n % parallel else 0) for w in range(parallel)]
    run = os.urandom(3).hex()
    procs = []
    for w in range(parallel):
        p = b.spawn(f"worker-{kind}-{parallel}-{w}",
                    [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
                     str(targets[w % len(targets)]), f"r{run}-p{parallel}-w{w}", str(per[w]),
                     *extra], stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        procs.append(p)
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"a {kind} submitter did not start: {line!r}")
        for p in procs:
            p.stdin.write(b"g")
            p.stdin.flush()
        results = []
        for p in procs:
            out = p.stdout.readline()
            p.wait(120)
            results.append(json.loads(out))
    finally:
        for p in procs:
            b.stop(p)
    ok = sum(r["ok"] for r in results)
    errors = sum(r["errors"] for r in results)
    for r in results:
        for e in r["first_errors"]:
            log(f"{kind} x{parallel}: error: {e}")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    durs = [d for r in results for d in r["durs"]]
    return {"ok": ok, "errors": errors, "wall": wall, "rate": ok / wall if wall > 0 else 0.0,
            "p50": pct(durs, 50) if durs else float("nan"),
            "p99": pct(durs, 99) if durs else float("nan")}


def rate_mount(b, agents, config, n, parallel):
    """(b) through the mount, on a fresh store, so that one run's backlog does not load
    the next."""
    mnt, daemon = b.mount(f"rate{parallel}", config, n_nodes=len(agents))
    try:
        r = run_workers(b, "mount", [mnt], n, parallel)
        queued = r["queued"] = len(os.listdir(mnt / "tasks" / "queued"))
        log(f"mount x{parallel}: {r['ok']} submitted in {r['wall']:.2f} s "
            f"({r['rate']:.0f}/s), {r['errors']} errors; {queued} still queued at the end")
    finally:
        b.unmount(mnt, daemon)
    return r


def rate_http(b, agents, n, parallel):
    r = run_workers(b, "http", [a.port for a in agents], n, parallel, [str(b.token_file)])
    log(f"http x{parallel}: {r['ok']} POSTs in {r['wall']:.2f} s ({r['rate']:.0f}/s), "
        f"{r['errors']} errors")
    return r


# ---- ssh, when an sshd can be started here ----

SSHD = "/usr/sbin/sshd"


class Ssh:
    """A private sshd on a free loopback port, with a host key and an authorized key made
    for this run; the system's configuration is never read or touched."""

    def __init__(self, b):
        d = b.tmp / "ssh"
        d.mkdir(mode=0o700)
        for key in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench",
                            "-f", str(d / key)], check=True, stdin=subprocess.DEVNULL)
        (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)
        self.port = free_port()
        (d / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {d / 'host_key'}\n"
            f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "PermitRootLogin prohibit-password\nUseDNS no\nMaxStartups 64:30:128\n"
            "MaxSessions 64\nLogLevel ERROR\n")
        self.proc = b.spawn("sshd", [SSHD, "-D", "-e", "-f", str(d / "sshd_config")])
        try:
            wait_until(lambda: self.proc.poll() is None and port_open(self.port), 10, "sshd")
        except RuntimeError:
            lines = (b.tmp / "sshd.log").read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"sshd did not start: {lines[-1] if lines else 'no output'}")
        self.args = ["ssh", "-F", "/dev/null", "-i", str(d / "user_key"), "-p",
                     str(self.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                     "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-o", "LogLevel=ERROR",
                     "127.0.0.1"]


def ssh_latency(ssh, n):
    execs = []
    for i in range(n):
        t0 = time.time()
        r = subprocess.run(ssh.args + ["date", "+%s.%N"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"ssh date: {r.returncode}: {r.stderr.strip()[:200]}")
        execs.append((parse_stamp(r.stdout, "ssh date") - t0) * 1000.0)
    return {"exec": execs}


def ssh_rate(ssh, n, parallel):
    """n `ssh localhost true` in all, parallel at a time."""
    t = time.monotonic()
    ok = errors = 0
    running = []
    left = n
    while left or running:
        while left and len(running) < parallel:
            running.append(subprocess.Popen(ssh.args + ["true"], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
            left -= 1
        p = running.pop(0)
        if p.wait(30) == 0:
            ok += 1
        else:
            errors += 1
    wall = time.monotonic() - t
    return {"ok": ok, "errors": errors, "wall": wall, "rate": ok / wall}


# ---- the report ----

def print_table(lat, rates, ssh_note, args):
    rows = []
    mf, hf = lat["mount"], lat["http"]

    def lat_row(what, m, h, key):
        p50m, p99m = pct(m[key], 50), pct(m[key], 99)
        if h is None:
            return (what, f"{p50m:.2f}", f"{p99m:.2f}", "-", "-", "-", "-")
        p50h, p99h = pct(h[key], 50), pct(h[key], 99)
        return (what, f"{p50m:.2f}", f"{p99m:.2f}", f"{p50h:.2f}", f"{p99h:.2f}",
                ratio(p50m, p50h, 1), ratio(p99m, p99h, 1))

    rows.append(lat_row("close() duration / POST round trip", mf, hf, "close"))
    rows.append(lat_row("close->exec / POST->exec", mf, hf, "exec"))
    rows.append(lat_row("close returned->exec (mount only)", mf, None, "after"))
    if lat.get("ssh"):
        s = lat["ssh"]["exec"]
        rows.append(("ssh localhost date: start->exec", "-", "-", f"{pct(s, 50):.2f}",
                     f"{pct(s, 99):.2f}", ratio(pct(mf["exec"], 50), pct(s, 50)),
                     ratio(pct(mf["exec"], 99), pct(s, 99))))
    head = ("(a) latency, ms", "mount p50", "mount p99", "floor p50", "floor p99",
            "p50 ratio", "p99 ratio")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{widths[0]}}}" if i == 0 else f"{{:>{w}}}"
                    for i, w in enumerate(widths))
    print(f"(a) dispatch latency: {args.latency} tasks cmd {LAT_CMD} submitted one at a time "
          f"(after {args.warmup} warm-up), {args.agents} agents on loopback; floor: POST "
          f"/api/node/tasks over keep-alive HTTP")
    print(fmt.format(*head))
    for r in rows:
        print(fmt.format(*r))
    if ssh_note:
        print(ssh_note)

    print()
    print(f"(b) durable submissions/s: {args.n} tasks cmd {RATE_CMD}; mount: create+write+close "
          f"in MNT/tasks/new/ (fresh store per run); floor: POST /api/node/tasks "
          f"(keep-alive, submitter i -> agent i mod {args.agents})")
    head = ("submitters", "mount /s", "mount ok", "mount err", "close p50 ms", "close p99 ms",
            "queued at end", "floor /s", "floor ok", "POST p50 ms", "mount/floor")
    rows = []
    for p in args.parallel:
        m, h = rates[("mount", p)], rates[("http", p)]
        rows.append((str(p), f"{m['rate']:.0f}", str(m["ok"]), str(m["errors"]),
                     f"{m['p50']:.2f}", f"{m['p99']:.2f}", str(m["queued"]), f"{h['rate']:.0f}",
                     str(h["ok"]),
                     f"{h['p50']:.2f}", f"{m['rate'] / h['rate']:.2f}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    print(fmt.format(*head))
    for r in rows:
        print(fmt.format(*r))
    for p in args.parallel:
        if ("ssh", p) in rates:
            s = rates[("ssh", p)]
            print(f"ssh localhost true, {p} at a time: {s['rate']:.0f}/s ({s['ok']} ok, "
                  f"{s['errors']} errors); mount/ssh {ratio(rates[('mount', p)]['rate'], s['rate'], 1)}")
    if ssh_note:
        print(ssh_note)

    p50 = pct(mf["exec"], 50)
    best_p = max(args.parallel, key=lambda p: rates[("mount", p)]["rate"])
    best = rates[("mount", best_p)]["rate"]
    lat_ok = p50 < GOAL_P50_MS
    rate_ok = best >= GOAL_RATE
    print()
    print(f"goal: p50 close->exec under {GOAL_P50_MS:g} ms: {'met' if lat_ok else 'NOT met'} "
          f"({p50:.2f} ms)")
    print(f"goal: at least {GOAL_RATE:,.0f} durable submissions/s: "
          f"{'met' if rate_ok else 'NOT met'} ({best:.0f}/s, best of "
          f"{', '.join(str(p) for p in args.parallel)} submitters: {best_p})")
    return lat_ok and rate_ok


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.environ.get("CLUSTERFS_BUILD", ROOT / "build"),
                    type=Path, help="meson build directory (default: %(default)s)")
    ap.add_argument("--agents", type=int, default=8,
                    help="real agents (nodes) to dispatch to (default: %(default)s)")
    ap.add_argument("--latency", type=int, default=200,
                    help="tasks timed one at a time, per path (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=10,
                    help="untimed tasks first, per path (default: %(default)s)")
    ap.add_argument("-n", "--n", type=int, default=1000,
                    help="tasks per throughput run (default: %(default)s)")
    ap.add_argument("--parallel", default="1,8",
                    help="submitter processes per throughput run (default: %(default)s)")
    ap.add_argument("--ssh-n", type=int, default=50,
                    help="ssh connections per ssh figure, if sshd is here (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    args.parallel = [int(x) for x in args.parallel.split(",") if x]

    for exe in ("daemon/clusterfs", "tools/agent/clusterfs-agent"):
        if not (args.build / exe).exists():
            sys.exit(f"dispatch: {args.build / exe} is missing; run: ninja -C {args.build}")
    if not shutil.which("fusermount3"):
        sys.exit("dispatch: fusermount3 is not installed")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        sys.exit("dispatch: cannot use /dev/fuse")

    b = Bench(args.build.resolve(), args.keep, "dispatch")
    # SIGTERM/SIGINT unwind through the finally below, which stops everything by PID
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    lat, rates, ssh_note = {}, {}, None
    try:
        agents = [Agent(b, i) for i in range(args.agents)]
        config = tasks_config(b, agents)
        log(f"{len(agents)} agents up; (a) latency through the mount")
        lat["mount"] = latency_mount(b, agents, config, args.latency, args.warmup)
        log("(a) latency of direct POSTs")
        lat["http"] = latency_http(b, agents[0], args.latency, args.warmup)
        for p in args.parallel:
            log(f"(b) {args.n} submissions through the mount, {p} submitter(s)")
            rates[("mount", p)] = rate_mount(b, agents, config, args.n, p)
            log(f"(b) {args.n} direct POSTs, {p} client(s)")
            rates[("http", p)] = rate_http(b, agents, args.n, p)
        if os.access(SSHD, os.X_OK) and shutil.which("ssh") and shutil.which("ssh-keygen"):
            try:
                ssh = Ssh(b)
                log("ssh localhost: latency and rate")
                lat["ssh"] = ssh_latency(ssh, args.ssh_n)
                for p in args.parallel:
                    rates[("ssh", p)] = ssh_rate(ssh, args.ssh_n, p)
                b.stop(ssh.proc)
            except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                ssh_note = f"ssh: could not be measured here ({e}), skipped"
        elif not os.access(SSHD, os.X_OK):
            ssh_note = "ssh: not installed here (sshd missing), skipped"
        else:
            ssh_note = "ssh: not installed here (ssh or ssh-keygen missing), skipped"
    finally:
        b.cleanup()
    return 0 if print_table(lat, rates, ssh_note, args) else 1


if __name__ == "__main__":
    sys.exit(main())
