#!/usr/bin/python3
"""Membership benchmark (issue "Membership", item 8).

(a) 500 joined nodes pushing heartbeats at 10x the seed's rate (every 4.5 s; here
    probe.heartbeat_s 4) beside the same 500 nodes pulled by probes (probe.interval_s 4,
    answered by tools/clusterfs-agent-sim): the daemon's CPU per second and RSS, and the
    CPU one heartbeat costs. Goal: under 50 us of daemon CPU per heartbeat.
(b) close() -> exec of a task on a reverse node (--join --reverse, over the relay) beside a
    pulled node, in the same mount, one task at a time. Goal: p50 within 2 ms of pulled.

Everything runs on loopback and is stopped by PID at the end. Not part of the test suite;
see tests/bench/README.md. Debian's /usr/bin/python3, standard library only."""
import argparse
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (ROOT, Bench, cpu_s, logger, pct, rss_mb, secret,  # noqa: E402
                     wait_reachable, wait_until)

N_NODES = 500
PERIOD_S = 4
GOAL_HB_US = 50.0
GOAL_REVERSE_DELTA_MS = 2.0

log = logger("membership")


def base_config(b, **kw):
    cfg = {"cluster": "bench-join", "auth": {"token_file": str(b.token_file)},
           "probe": {"interval_s": PERIOD_S, "timeout_ms": 2000, "stale_after_s": 120,
                     "offline_after_s": 600, "heartbeat_s": PERIOD_S},
           "thresholds": {"cpu": [100, 100], "memory": [100, 100], "disk": [100, 100],
                          "load": [1000, 1000]},
           "tasks": {"allow_root": True}, "hosts": {}}
    cfg.update(kw)
    return cfg


def control_plane_keys(b):
    d = b.tmp / "cp"
    r = subprocess.run([str(b.build / "tools/agent/clusterfs-agent"), "--init", str(d),
                        "--name", "control", "--listen", "127.0.0.1:1"],
                       capture_output=True, text=True, check=True)
    return d, json.loads("{" + r.stdout.splitlines()[0] + "}")["control"]["tls"]["fingerprint"]


def measure(pid, seconds):
    c0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_s(pid) - c0) / (time.monotonic() - t0), rss_mb(pid)


def bench_pulled(b, window):
    sim = b.spawn("sim", [str(b.build / "tools/clusterfs-agent-sim"), "--base-port", "21000",
                          "--count", str(N_NODES), "--token-file", str(b.token_file)])
    time.sleep(0.5)
    hosts = {f"sim-{i + 1:03d}": {"host": "127.0.0.1", "port": 21000 + i}
             for i in range(N_NODES)}
    cfgp = b.tmp / "pulled.json"
    cfgp.write_text(json.dumps(base_config(b, hosts=hosts)))
    mnt, p = b.mount("pulled", cfgp, timeout=20)
    wait_reachable(mnt, N_NODES, 60)
    time.sleep(PERIOD_S)
    cpu, rss = measure(p.pid, window)
    b.unmount(mnt, p)
    b.stop(sim)
    return cpu, rss


class OneWrite(http.client.HTTPSConnection):
    """Sends the request line, headers and body in one write, as curl does with a small
    POST: http.client writes the body separately, a second TLS record and wake-up of the
    server per request that no agent causes."""

    def _send_output(self, message_body=None, encode_chunked=False):
        self._buffer.extend((b"", b""))
        msg = b"\r\n".join(self._buffer)
        del self._buffer[:]
        self.send(msg + (message_body or b""))


def bench_pushed(b, window, fresh):
    """Drop-ins for 500 nodes (addresses nothing listens on: a probe would fail), kept
    healthy by heartbeats alone, sent by threads over HTTPS: each node on a connection of its
    own kept alive between its heartbeats (as clusterfs-agent does), or (fresh) on a new
    connection each, TLS handshake included (as it did before)."""
    d, _fp = control_plane_keys(b)
    join_token = secret(b.tmp / "join.token", "join-" + os.urandom(8).hex()).read_text().strip()
    cfgd = b.tmp / ("pushed-fresh" if fresh else "pushed")
    (cfgd / "hosts.d").mkdir(parents=True)
    tokens = {}
    for i in range(N_NODES):
        name = f"push-{i + 1:03d}"
        tokens[name] = "agent-" + os.urandom(12).hex()
        secret(cfgd / "hosts.d" / f"{name}.token", tokens[name])
        (cfgd / "hosts.d" / f"{name}.json").write_text(json.dumps(
            {"host": "127.0.0.1", "port": 9, "token_file": f"{name}.token"}))
    port = 28769
    cfgp = cfgd / "hosts.json"
    cfgp.write_text(json.dumps(base_config(b, join={
        "listen": f"127.0.0.1:{port}", "token_file": str(b.tmp / "join.token"),
        "tls": {"cert_file": str(d / "agent.crt"), "key_file": str(d / "agent.key")}})))
    mnt, p = b.mount("pushed-fresh" if fresh else "pushed", cfgp, timeout=20)
    health = {"cores": 4, "cpu_percent": 12.5, "load": [0.5, 0.4, 0.3], "mem_total_mb": 16000,
              "mem_available_mb": 12000, "mem_percent": 25.0, "disk_percent": 40.0,
              "gpus": [], "tasks_running": 0, "version": "bench"}
    stop = threading.Event()
    sent = [0] * 4
    errors = [0] * 4
    names = sorted(tokens)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a benchmark client on loopback; the agent pins

    def sender(k):
        mine = names[k::4]
        # a connection per node, as each agent keeps its own
        conns = {name: OneWrite("127.0.0.1", port, context=ctx, timeout=10) for name in mine}
        hdr = {"Authorization": f"Bearer {join_token}", "Content-Type": "application/json"}
        start = time.monotonic()
        beat = 0
        while not stop.is_set():
            for j, name in enumerate(mine):
                # spread each node's beats evenly over the period
                due = start + beat * PERIOD_S + PERIOD_S * j / len(mine)
                delay = due - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                body = json.dumps({"name": name, "token": tokens[name], "health": health})
                conn = conns[name]
                try:
                    conn.request("POST", "/api/join/heartbeat", body, hdr)
                    r = conn.getresponse()
                    r.read()
                    if fresh:
                        conn.close()  # the next request connects again
                    sent[k] += 1
                    if r.status != 200:
                        errors[k] += 1
                except OSError:
                    errors[k] += 1
                    conn.close()
            beat += 1
        for conn in conns.values():
            conn.close()

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        wait_reachable(mnt, N_NODES, 60)
        time.sleep(PERIOD_S)
        s0 = sum(sent)
        c0, t0 = cpu_s(p.pid), time.monotonic()
        time.sleep(window)
        cpu = (cpu_s(p.pid) - c0) / (time.monotonic() - t0)
        beats = sum(sent) - s0
        rss = rss_mb(p.pid)
        reachable = json.loads((mnt / "stats").read_text())["nodes"]["reachable"]
    finally:
        stop.set()
        for t in threads:
            t.join()
    # the same daemon and nodes with the heartbeats stopped (still healthy: stale after
    # 120 s): what it spends anyway (its tick over 500 nodes), so that what is left is
    # what the heartbeats cost
    time.sleep(1)
    idle, _ = measure(p.pid, window)
    b.unmount(mnt, p)
    per_hb_us = cpu * window / beats * 1e6 if beats else float("inf")
    marginal_us = (cpu - idle) * window / beats * 1e6 if beats else float("inf")
    return cpu, rss, beats / window, per_hb_us, marginal_us, idle, sum(errors), reachable


def submit(mnt, name, spec):
    fd = os.open(mnt / "tasks" / "new" / f"{name}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                 0o644)
    os.write(fd, spec)
    t0 = time.time()
    os.close(fd)
    return t0


def bench_reverse(b, n):
    d, fp = control_plane_keys(b)
    agent = b.build / "tools/agent/clusterfs-agent"
    keys = b.tmp / "rev-keys"
    subprocess.run([str(agent), "--init", str(keys), "--name", "rev1", "--listen",
                    "127.0.0.1:28801"], capture_output=True, check=True)
    join_token = secret(b.tmp / "join2.token", "join-" + os.urandom(8).hex())
    cfgd = b.tmp / "rev"
    cfgd.mkdir()
    cfgp = cfgd / "hosts.json"
    cfgp.write_text(json.dumps(base_config(
        b, hosts={"pull1": {"host": "127.0.0.1", "port": 28802}},
        join={"listen": "127.0.0.1:28770", "token_file": str(join_token),
              "tls": {"cert_file": str(d / "agent.crt"), "key_file": str(d / "agent.key")}})))
    pull = b.spawn("agent-pull1", [str(agent), "--listen", "127.0.0.1:28802", "--token-file",
                                   str(b.token_file), "--state-dir", str(b.tmp / "st-pull1"),
                                   "--name", "pull1"])
    mnt, p = b.mount("reverse", cfgp, timeout=20)
    rev = b.spawn("agent-rev1", [str(agent), "--listen", "127.0.0.1:28801", "--token-file",
                                 str(keys / "agent.token"), "--tls-cert", str(keys / "agent.crt"),
                                 "--tls-key", str(keys / "agent.key"), "--state-dir",
                                 str(b.tmp / "st-rev1"), "--name", "rev1", "--join",
                                 "https://127.0.0.1:28770", "--join-fingerprint", fp,
                                 "--join-token-file", str(join_token), "--reverse"])
    wait_reachable(mnt, 2)
    out = {}
    for node in ("pull1", "rev1"):
        lat = []
        for i in range(n + 5):
            name = f"{node}-{i}"
            t0 = submit(mnt, name, json.dumps({"cmd": ["date", "+%s.%N"], "node": node}).encode())
            wait_until(lambda: (mnt / "tasks" / name / "status").read_text().strip()
                       in ("succeeded", "failed"), 30, name, step=0.002)
            if i >= 5:  # warm-up
                lat.append((float((mnt / "tasks" / name / "stdout").read_text()) - t0) * 1000)
        out[node] = lat
    b.unmount(mnt, p)
    b.stop(rev)
    b.stop(pull)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("CLUSTERFS_BUILD", ROOT / "build"))
    ap.add_argument("--window", type=float, default=20.0, help="seconds of CPU measured")
    ap.add_argument("--tasks", type=int, default=50, help="latency samples per node")
    ap.add_argument("--only", choices=("pushed",),
                    help="run only the kept-alive heartbeats (when profiling)")
    args = ap.parse_args()
    b = Bench(Path(args.build), name="membership")
    if args.only == "pushed":
        try:
            r = bench_pushed(b, args.window, False)
        finally:
            b.cleanup()
        print(f"pushing: daemon CPU {100 * r[0]:.1f} %, RSS {r[1]:.1f} MiB, idle "
              f"{100 * r[5]:.1f} %, {r[4]:.1f} us per heartbeat beyond the idle daemon")
        return 0
    try:
        log("500 pulled nodes...")
        pull_cpu, pull_rss = bench_pulled(b, args.window)
        log("500 pushing nodes...")
        push_cpu, push_rss, rate, per_hb, marginal, idle, errs, reach = bench_pushed(
            b, args.window, False)
        log("500 pushing nodes, a new connection per heartbeat...")
        fresh = bench_pushed(b, args.window, True)
        log("reverse vs pulled dispatch...")
        lat = bench_reverse(b, args.tasks)
    finally:
        b.cleanup()
    print(f"500 nodes, one report per node every {PERIOD_S} s (10x the seed's 45 s):")
    print(f"  pulled by probes:     daemon CPU {100 * pull_cpu:5.1f} %   RSS {pull_rss:6.1f} MiB")
    print(f"  pushing heartbeats:   daemon CPU {100 * push_cpu:5.1f} %   RSS {push_rss:6.1f} MiB"
          f"   ({rate:.0f} heartbeats/s, {errs} errors, {reach}/500 reachable)")
    print(f"  the same, heartbeats stopped: daemon CPU {100 * idle:5.1f} %")
    print(f"  daemon CPU per heartbeat: {marginal:.1f} us beyond the idle daemon (goal < "
          f"{GOAL_HB_US:.0f} us); {per_hb:.1f} us counting all its CPU")
    print(f"  a new TLS connection per heartbeat: daemon CPU {100 * fresh[0]:5.1f} %, "
          f"{fresh[4]:.1f} us per heartbeat beyond the idle daemon ({fresh[6]} errors, "
          f"{fresh[7]}/500 reachable)")
    p50p, p99p = pct(lat["pull1"], 50), pct(lat["pull1"], 99)
    p50r, p99r = pct(lat["rev1"], 50), pct(lat["rev1"], 99)
    print(f"close() -> exec, {args.tasks} tasks each, one at a time:")
    print(f"  pulled node:  p50 {p50p:6.2f} ms   p99 {p99p:6.2f} ms")
    print(f"  reverse node: p50 {p50r:6.2f} ms   p99 {p99r:6.2f} ms   (p50 +{p50r - p50p:.2f} ms; "
          f"goal within {GOAL_REVERSE_DELTA_MS:.0f} ms)")
    ok = marginal < GOAL_HB_US and p50r - p50p <= GOAL_REVERSE_DELTA_MS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
