#!/usr/bin/python3
"""Scale benchmark: a store filled with finished tasks (10k, 100k and 1M by default) by
tools/clusterfs-store-fill, which writes them through the daemon's own store module
(store_insert_tasks, store_put_output: the schema and code path a submission takes),
then mounted over 4 real agents on loopback. For each size, beside an empty store in the
same run: start-up time (to the first `stats` read served), RSS, idle CPU, the first
getdents of tasks/done, `ls -U tasks/done | head`, `ls tasks/done | head`, `ls tasks |
wc -l`, `cat stats`, one submission's close() (p50) and a short task's close() ->
`succeeded` visible (p50, through tasks/ID/wait).

Goals at 1M (issue "Files that hold still and a control plane that keeps up", item 7):
start-up <= 2 s, RSS <= 100 MB, idle CPU <= 1%, `ls tasks/done | head` <= 50 ms,
`ls tasks | wc -l` <= 2 s, `cat stats` <= 5 ms, close() p50 within 20% of the empty
store's, close() -> succeeded p50 <= 20 ms. Not part of the test suite; see
tests/bench/README.md.

    sudo tests/bench/scale.py [--sizes 10000,100000,1000000] [--build build]"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (ROOT, Agent, Bench, cpu_s, logger, pct, rss_mb, submit,  # noqa: E402
                     tasks_config, wait_reachable)

log = logger("scale")


def timed_shell(cmd, cwd):
    t0 = time.monotonic()
    r = subprocess.run(["sh", "-c", cmd], cwd=cwd, capture_output=True, text=True,
                       timeout=600)
    return time.monotonic() - t0, r.stdout


def first_getdents(path):
    t0 = time.monotonic()
    with os.scandir(path) as it:
        next(it, None)
    return time.monotonic() - t0


def measure(b, agents, config, name, size):
    """Fills a state directory with `size` finished tasks, mounts it and measures."""
    state = b.tmp / f"state-{name}"
    state.mkdir()
    if size:
        t0 = time.monotonic()
        subprocess.run([str(b.build / "tools/clusterfs-store-fill"), "-s", str(state), "-n",
                        str(size), "-N", str(len(agents)), "-o", str(b.output_every)],
                       check=True)
        log(f"{name}: filled {size} tasks in {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    mnt, p = b.mount(name, config, state=state, timeout=120, step=0.005)
    (mnt / "stats").read_bytes()  # served: the daemon's loop runs, the tasks are loaded
    startup = time.monotonic() - t0
    wait_reachable(mnt, len(agents))
    time.sleep(2)
    c0, w0 = cpu_s(p.pid), time.monotonic()
    time.sleep(5)
    idle = (cpu_s(p.pid) - c0) / (time.monotonic() - w0) * 100
    res = {"startup": startup, "idle_cpu": idle}

    res["first_getdents"] = min(first_getdents(mnt / "tasks" / "done") for _ in range(3))
    res["ls_U_head"] = min(timed_shell("ls -U tasks/done | head", mnt)[0] for _ in range(3))
    res["ls_head"] = min(timed_shell("ls tasks/done | head", mnt)[0] for _ in range(2))
    dt, out = timed_shell("ls tasks | wc -l", mnt)
    res["ls_wc"] = dt
    res["ls_wc_n"] = int(out.strip() or 0)
    times = []
    for _ in range(30):
        t0 = time.monotonic()
        doc = (mnt / "stats").read_bytes()
        times.append(time.monotonic() - t0)
    res["stats"] = pct(times, 50)
    counts = json.loads(doc)["tasks"]
    res["stats_total"] = counts["total"]

    closes, ends = [], []
    for i in range(40):
        tid = f"s-{name}-{i}"
        t0, t1 = submit(mnt, tid, b'{"cmd": ["true"]}')
        closes.append(t1 - t0)
        state_text = (mnt / "tasks" / tid / "wait").read_text()
        t2 = time.time()
        if not state_text.startswith("succeeded"):
            raise RuntimeError(f"task {tid} ended {state_text!r}")
        ends.append(t2 - t1)
    res["close"] = pct(closes, 50)
    res["end"] = pct(ends, 50)
    res["rss"] = rss_mb(p.pid)
    b.unmount(mnt, p)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--build", default=os.environ.get("CLUSTERFS_BUILD", str(ROOT / "build")))
    ap.add_argument("--output-every", type=int, default=10,
                    help="every Nth filled task gets stdout (0: none; 1: all, slower fill)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    b = Bench(Path(a.build).resolve(), a.keep, "scale")
    b.output_every = a.output_every
    sizes = [int(s) for s in a.sizes.split(",") if s]
    rows = []
    try:
        agents = [Agent(b, i) for i in range(a.agents)]
        config = tasks_config(b, agents)
        for size in [0] + sizes:
            log(f"measuring {size} finished tasks")
            rows.append((size, measure(b, agents, config, f"n{size}", size)))
    finally:
        b.cleanup()

    base = rows[0][1]
    cols = [("start-up s", "startup", "{:.3f}"), ("RSS MB", "rss", "{:.1f}"),
            ("idle CPU %", "idle_cpu", "{:.2f}"), ("done: 1st getdents ms", "first_getdents", "ms"),
            ("ls -U done|head ms", "ls_U_head", "ms"), ("ls done|head ms", "ls_head", "ms"),
            ("ls tasks|wc -l s", "ls_wc", "{:.3f}"), ("cat stats ms", "stats", "ms"),
            ("close() p50 ms", "close", "ms"), ("close->succeeded p50 ms", "end", "ms")]
    print(f"{'finished tasks':>16} " + " ".join(f"{c[0]:>12}" for c in cols))
    for size, r in rows:
        cells = []
        for _, k, f in cols:
            cells.append(f"{r[k] * 1000:.1f}" if f == "ms" else f.format(r[k]))
        print(f"{size:>16} " + " ".join(f"{c:>12}" for c in cells))
    print()
    for size, r in rows[1:]:
        print(f"listing check at {size}: ls tasks | wc -l = {r['ls_wc_n']} "
              f"(expected {size + 5}), stats total = {r['stats_total']} "
              f"(expected {size})")
    big_size, big = rows[-1]
    goals = [
        ("start-up", big["startup"], 2.0, "s", big["startup"] <= 2.0),
        ("RSS", big["rss"], 100, "MB", big["rss"] <= 100),
        ("idle CPU", big["idle_cpu"], 1.0, "%", big["idle_cpu"] <= 1.0),
        ("ls tasks/done | head", big["ls_head"] * 1000, 50, "ms", big["ls_head"] <= 0.05),
        ("ls tasks | wc -l", big["ls_wc"], 2.0, "s", big["ls_wc"] <= 2.0),
        ("cat stats", big["stats"] * 1000, 5, "ms", big["stats"] <= 0.005),
        ("close() p50 vs empty store", big["close"] / base["close"], 1.2, "x",
         big["close"] <= 1.2 * base["close"]),
        ("close() -> succeeded p50", big["end"] * 1000, 20, "ms", big["end"] <= 0.02),
    ]
    print(f"\ngoals at {big_size} finished tasks:")
    ok = True
    for what, v, goal, unit, met in goals:
        ok &= met
        print(f"  {what:<28} {v:10.3f} {unit:<3} goal <= {goal:<6} {'met' if met else 'NOT met'}")
    print(f"  (ls -U tasks/done | head, which prints as it reads: {big['ls_U_head'] * 1000:.1f} ms;"
          f" first getdents {big['first_getdents'] * 1000:.1f} ms; empty store close() p50 "
          f"{base['close'] * 1000:.2f} ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
