#!/usr/bin/python3
"""Cold fan-out benchmark: what `cat MNT/nodes/*/health` costs when every node's data is
stale, beside the same N requests made by curl one after another and all at once.

DESIGN §2 promises that reading every node's health costs one round of parallel
requests, not N. With an injected per-request delay D, the goal here is a cold cat
within 2 x D. Not part of the test suite; see tests/bench/README.md.

Uses the Debian python (/usr/bin/python3), standard library only."""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import (ROOT, Agent, Bench, hosts, logger, reachable, start_sim,  # noqa: E402
                     wait_until)

CURL_PARALLEL_CAP = 300  # curl silently caps --parallel-max at 300


log = logger("fanout")


def start_real_agents(b, n):
    return [Agent(b, i, f"n{i + 1:03d}").port for i in range(n)]


def write_config(b, name, ports):
    # periodic probes must not warm the cache between measurements: one per hour.
    # max_age_ms is left at its default (1000).
    return harness.write_config(b, name, hosts(ports), {
        "interval_s": 3600, "timeout_ms": 2000, "stale_after_s": 7200,
        "offline_after_s": 7200, "unhealthy_after": 3})


def timed(args, **kw):
    t = time.monotonic()
    r = subprocess.run(args, **kw)
    return (time.monotonic() - t) * 1000.0, r


CAT = 'exec cat "$0"/nodes/*/health > /dev/null'
GLOB = 'echo "$0"/nodes/*/health > /dev/null'


def shell_ms(mnt, script):
    ms, r = timed(["/bin/sh", "-c", script, str(mnt)])
    if r.returncode != 0:
        raise RuntimeError(f"{script!r} failed with {r.returncode}")
    return ms


def cold_cat(mnt, n):
    """Times one cold `cat MNT/nodes/*/health > /dev/null` and, right after it, the same
    cat warm (data fresh, names cached); then checks from the files (now fresh, read from
    memory) that every node was probed during the cold cat."""
    t0 = time.time()
    ms = shell_ms(mnt, CAT)
    warm = shell_ms(mnt, CAT)
    stale = 0
    for d in sorted((mnt / "nodes").iterdir()):
        doc = json.loads((d / "health").read_text())
        since = time.time() - t0
        if not doc["reachable"] or doc["age_s"] is None or doc["age_s"] > since + 0.002:
            stale += 1
    if stale:
        raise RuntimeError(f"{stale} of {n} nodes were not probed by the cold cat")
    return ms, warm


def checked_since(doc, t0):
    """True when the node's health document says it was probed successfully after t0."""
    at = doc.get("checked_at")
    if not doc.get("reachable") or not at:
        return False
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() >= t0 - 0.01


def cold_health(mnt, n):
    """Times one cold `cat MNT/health` (every node stale): the open starts one probe round
    for the stale nodes and answers when it ends. Checks that every node was probed."""
    t0 = time.time()
    ms, r = timed(["cat", str(mnt / "health")], capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"cat health failed with {r.returncode}")
    doc = json.loads(r.stdout)
    stale = sum(1 for v in doc.values() if not checked_since(v, t0))
    if len(doc) != n or stale:
        raise RuntimeError(f"{stale} of {len(doc)} nodes were not probed by cat health")
    return ms


def curl_config(b, name, ports):
    path = b.tmp / f"{name}.curl"
    path.write_text("".join(f'url = "http://127.0.0.1:{p}/api/node/health"\n'
                            'output = "/dev/null"\n' for p in ports))
    return path


CURL_BASE = ["curl", "--silent", "--show-error", "--noproxy", "*", "--write-out",
             "%{http_code} %{time_total}\\n"]


def curl_codes(out):
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return [r[0] for r in rows], [float(r[1]) * 1000.0 for r in rows]


def curl_sequential(b, cfg, n):
    ms, r = timed(CURL_BASE + ["--header", f"@{b.curl_header}", "--config", str(cfg)],
                  capture_output=True, text=True)
    codes, times = curl_codes(r.stdout)
    if codes.count("200") != n:
        raise RuntimeError(f"sequential curl: {codes.count('200')} of {n} answered 200: "
                           f"{r.stderr.strip()[:200]}")
    return ms, times


def curl_parallel(b, ports):
    """All N requests at once: one curl --parallel per 300 URLs (curl's cap), all
    started together; the wall time until the last one finished."""
    chunks = [ports[i:i + CURL_PARALLEL_CAP] for i in range(0, len(ports), CURL_PARALLEL_CAP)]
    cfgs = [curl_config(b, f"par{len(ports)}-{i}", c) for i, c in enumerate(chunks)]
    t = time.monotonic()
    procs = [subprocess.Popen(CURL_BASE + ["--parallel", "--parallel-immediate",
                                           "--parallel-max", str(len(c)), "--header",
                                           f"@{b.curl_header}", "--config", str(cfg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c, cfg in zip(chunks, cfgs)]
    outs = [p.communicate() for p in procs]
    ms = (time.monotonic() - t) * 1000.0
    ok = sum(curl_codes(o)[0].count("200") for o, _ in outs)
    if ok != len(ports):
        raise RuntimeError(f"parallel curl: {ok} of {len(ports)} answered 200: "
                           f"{' '.join(e.strip()[:200] for _, e in outs)}")
    return ms


def run_case(b, kind, n, delay_ms, repeat):
    name = f"{kind}{n}"
    log(f"{name}: starting {n} {'real agents' if kind == 'real' else 'simulated nodes'}")
    before = len(b.procs)
    ports = start_real_agents(b, n) if kind == "real" else start_sim(b, n, delay_ms)
    backends = [p for _, p in b.procs[before:]]
    config = write_config(b, name, ports)
    mnt, daemon = b.mount(name, config)
    try:
        wait_until(lambda: reachable(mnt) == n, 30, f"first probe round of {n} nodes")
        cats, warms, globs, healths = [], [], [], []
        for i in range(repeat):
            # max_age_ms is 1000 and the kernel keeps names and attributes 1 s: past
            # 1.2 s the data is stale and every name must be looked up again. The glob
            # alone costs those lookups without opening anything (no probe).
            time.sleep(1.2)
            globs.append(shell_ms(mnt, GLOB))
            time.sleep(1.2)
            cold, warm = cold_cat(mnt, n)
            cats.append(cold)
            warms.append(warm)
            time.sleep(1.2)
            healths.append(cold_health(mnt, n))
        log(f"{name}: cold cat ms {[round(x, 1) for x in cats]}, warm cat ms "
            f"{[round(x, 1) for x in warms]}, glob ms {[round(x, 1) for x in globs]}, "
            f"cold health ms {[round(x, 1) for x in healths]}")
    finally:
        b.unmount(mnt, daemon)

    cfg = curl_config(b, f"seq{n}", ports)
    one_cfg = curl_config(b, f"one{n}", ports[:1])
    seqs, pars, ones, per_req = [], [], [], []
    for i in range(repeat):
        ms, times = curl_sequential(b, cfg, n)
        seqs.append(ms)
        per_req += times
        pars.append(curl_parallel(b, ports))
        ones.append(curl_sequential(b, one_cfg, 1)[0])
    log(f"{name}: sequential curl ms {[round(x, 1) for x in seqs]}, parallel curl ms "
        f"{[round(x, 1) for x in pars]}, one-request curl ms {[round(x, 1) for x in ones]}")

    for p in backends:
        b.stop(p)
    return {
        "kind": kind, "n": n,
        "delay_ms": delay_ms if kind == "sim" else None,
        "request_ms": statistics.median(per_req),
        "cat": statistics.median(cats),
        "health": statistics.median(healths),
        "warm": statistics.median(warms),
        "glob": statistics.median(globs),
        # what the cold cat spent waiting on the network round, roughly
        "wait": statistics.median(c - w - g for c, w, g in zip(cats, warms, globs)),
        "seq": statistics.median(seqs),
        "par": statistics.median(pars),
        "one": statistics.median(ones),
    }


def print_table(rows, repeat):
    head = ("N", "backend", "delay ms", "req ms", "cold cat ms", "seq curl ms", "par curl ms",
            "cat/delay", "cat/par", "goal: cat <= 2x delay", "goal: cat <= 1.0x par",
            "health ms", "health/delay", "goal: health <= 2x delay", "warm cat ms",
            "glob ms", "wait ms", "1-req curl ms")
    out = []
    for r in rows:
        par_ratio = r["cat"] / r["par"]
        par_goal = "met" if par_ratio <= 1.0 else "NOT met"
        if r["delay_ms"]:
            ratio = r["cat"] / r["delay_ms"]
            goal = f"{'met' if ratio <= 2.0 else 'NOT met'} ({2 * r['delay_ms']} ms)"
            delay = str(r["delay_ms"])
            ratio_s = f"{ratio:.2f}"
            h_ratio = r["health"] / r["delay_ms"]
            h_ratio_s = f"{h_ratio:.2f}"
            h_goal = f"{'met' if h_ratio <= 2.0 else 'NOT met'} ({2 * r['delay_ms']} ms)"
        else:
            delay, ratio_s, goal = "0 (real)", "-", "n/a: no injected delay"
            h_ratio_s, h_goal = "-", "n/a: no injected delay"
        out.append((str(r["n"]), "agent" if r["kind"] == "real" else "sim", delay,
                    f"{r['request_ms']:.2f}", f"{r['cat']:.1f}", f"{r['seq']:.1f}",
                    f"{r['par']:.1f}", ratio_s, f"{par_ratio:.2f}", goal, par_goal,
                    f"{r['health']:.1f}", h_ratio_s, h_goal,
                    f"{r['warm']:.1f}", f"{r['glob']:.1f}", f"{r['wait']:.1f}",
                    f"{r['one']:.1f}"))
    widths = [max(len(h), *(len(row[i]) for row in out)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    print(f"cold fan-out, median of {repeat} runs (wall ms; curl figures include starting "
          f"curl)")
    print(fmt.format(*head))
    for row in out:
        print(fmt.format(*row))
    print("req ms: median time_total curl reports for one request of the sequential run.\n"
          "seq curl: one curl process, N URLs in turn. par curl: ceil(N/300) curl --parallel\n"
          "processes at once (curl caps --parallel-max at 300).\n"
          "warm cat: the same cat right after the cold one (data fresh, names cached): the\n"
          "FUSE cost of N open/read/close. glob: `echo nodes/*/health` with names expired\n"
          "and data stale (lookups only, no probe). wait = cold - warm - glob: roughly the\n"
          "time the cold cat spent waiting on the probe round.\n"
          "1-req curl: wall time of a curl process making one request (start-up + 1 delay).\n"
          "health: a cold `cat MNT/health` (every node stale): one probe round, one document.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.environ.get("CLUSTERFS_BUILD", ROOT / "build"),
                    type=Path, help="meson build directory (default: %(default)s)")
    ap.add_argument("--sizes", default="8,64,512",
                    help="node counts run on the simulator (default: %(default)s)")
    ap.add_argument("--real", type=int, default=8,
                    help="also run this many real agents; 0 to skip (default: %(default)s)")
    ap.add_argument("--delay-ms", type=int, default=20,
                    help="the simulator's injected delay (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (default: 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    for exe in ("daemon/clusterfs", "tools/agent/clusterfs-agent",
                "tools/clusterfs-agent-sim"):
        if not (args.build / exe).exists():
            sys.exit(f"fanout: {args.build / exe} is missing; run: ninja -C {args.build}")
    for tool in ("curl", "fusermount3"):
        if not shutil.which(tool):
            sys.exit(f"fanout: {tool} is not installed")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        sys.exit("fanout: cannot use /dev/fuse")

    b = Bench(args.build.resolve(), args.keep, "fanout")
    b.curl_header = b.secret_file("curl-header", f"Authorization: Bearer {b.token}\n")
    # SIGTERM/SIGINT unwind through the finally below, which stops everything by PID
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    rows = []
    try:
        if args.real:
            rows.append(run_case(b, "real", args.real, 0, args.repeat))
        for n in (int(x) for x in args.sizes.split(",") if x):
            rows.append(run_case(b, "sim", n, args.delay_ms, args.repeat))
    finally:
        b.cleanup()
    print_table(rows, args.repeat)
    return 0 if all(r["kind"] == "real" or (r["cat"] <= 2 * r["delay_ms"] and
                                            r["health"] <= 2 * r["delay_ms"] and
                                            r["cat"] <= r["par"])
                    for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
