#!/usr/bin/python3
"""Throughput benchmark: N short tasks (`true`) over 8 real agents on loopback, submitted
through the mount and run to the end, beside the same N POSTed straight to the agents in
the same run (the floor). Prints tasks/s for both and their ratio, the time from
submission to the last end, and, for the mount, each slot's idle gap between two tasks
(the agent's clock: one task's end to the next one's start on the same node) and how late
the control plane noticed an end (its finished_at minus the agent's), p50/p90.

Goal (issue "Files that hold still and a control plane that keeps up", item 5): the mount
at >= 0.8x the floor. Not part of the test suite; see tests/bench/README.md.

    sudo tests/bench/throughput.py [--tasks 2000] [--agents 8] [--build build]"""
import argparse
import datetime
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, Agent, Bench, logger, pct, tasks_config, wait_until  # noqa: E402

GOAL_RATIO = 0.8


log = logger("throughput")


def agent_tasks(b, a):
    c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
    c.request("GET", "/api/node/tasks", headers={"Authorization": f"Bearer {b.token}"})
    r = c.getresponse()
    doc = json.loads(r.read())
    c.close()
    return doc["tasks"]


def floor_run(b, agents, n, prefix):
    """POSTs n tasks round-robin, one keep-alive connection per agent, and waits until
    every one ended. Returns the seconds from the first POST to the last end."""
    per = [[] for _ in agents]
    for i in range(n):
        per[i % len(agents)].append(f"{prefix}-{i}")
    start = time.time()

    def post(a, ids):
        c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
        h = {"Authorization": f"Bearer {b.token}", "Content-Type": "application/json"}
        for tid in ids:
            while True:
                c.request("POST", "/api/node/tasks", json.dumps({"id": tid, "cmd": ["true"]}), h)
                r = c.getresponse()
                r.read()
                if r.status in (200, 201):
                    break
                time.sleep(0.005)  # 503: the agent's running limit; try again
        c.close()
    threads = [threading.Thread(target=post, args=(a, ids)) for a, ids in zip(agents, per)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    last = 0.0
    for a in agents:
        def ended(a=a):
            mine = [t for t in agent_tasks(b, a) if t["id"].startswith(prefix + "-")]
            return len(mine) == len(per[agents.index(a)]) and all(
                t["state"] != "running" for t in mine) and mine
        wait_until(ended, 300, f"the floor's tasks on {a.name}")
        for t in agent_tasks(b, a):
            if t["id"].startswith(prefix + "-"):
                last = max(last, t["finished_at"])
    return last - start


def wall(stamp):
    """An RFC 3339 time of the tree ("2026-12-01T14:04:40.123Z") as unix seconds."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


args_timeout = 600


def mount_run(b, agents, mnt, n, prefix):
    spec = json.dumps({"cmd": ["true"]}).encode()

    def submit(ids):
        for i in ids:
            fd = os.open(mnt / "tasks" / "new" / f"{prefix}-{i}.json",
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, spec)
            finally:
                os.close(fd)
    # as many submitters as the floor has posters
    threads = [threading.Thread(target=submit, args=(range(j, n, len(agents)),))
               for j in range(len(agents))]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submitted = time.time() - start
    wait_until(lambda: all((mnt / "tasks" / f"{prefix}-{i}" / "status").read_text()
                           in ("succeeded\n", "failed\n") for i in range(n - 1, -1, -97)) and
               len(os.listdir(mnt / "tasks" / "done")) >= n, args_timeout, "every task to end")
    infos = [json.loads((mnt / "tasks" / f"{prefix}-{i}" / "info").read_text()) for i in range(n)]
    last = max(wall(i["finished_at"]) for i in infos)
    # the agents' side: starts and ends per node, by dispatch id
    remote = {}
    for a in agents:
        for t in agent_tasks(b, a):
            if f".{prefix}-" in t["id"]:  # dispatch ids: INSTANCE.TASK.ATTEMPT
                remote[t["id"]] = (a.name, t["started_at"], t["finished_at"])
    gaps, late = [], []
    by_node = {}
    for t in remote.values():
        by_node.setdefault(t[0], []).append(t[1:])
    for runs in by_node.values():
        runs.sort()
        for (s0, e0), (s1, e1) in zip(runs, runs[1:]):
            gaps.append(max(0.0, s1 - e0) * 1000)
    ends = {tid.split(".", 1)[1].rsplit(".", 1)[0]: t[2] for tid, t in remote.items()}
    for info in infos:
        e = ends.get(info["id"])
        if e:
            late.append(max(0.0, wall(info["finished_at"]) - e) * 1000)
    return submitted, last - start, gaps, late


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    b = Bench(Path(args.build), args.keep, "throughput")
    try:
        agents = [Agent(b, i) for i in range(args.agents)]
        floor_s = floor_run(b, agents, args.tasks, "floor")
        cfg = tasks_config(b, agents)
        mnt, _ = b.mount("tp", cfg, n_nodes=len(agents))
        sub_s, mount_s, gaps, late = mount_run(b, agents, mnt, args.tasks, "tp")
        floor_rate, mount_rate = args.tasks / floor_s, args.tasks / mount_s
        ratio = mount_rate / floor_rate
        print(f"{args.tasks} tasks of `true` over {len(agents)} agents (loopback)")
        print(f"  direct POST (floor): {floor_s:7.2f} s  {floor_rate:7.1f} tasks/s")
        print(f"  through the mount:   {mount_s:7.2f} s  {mount_rate:7.1f} tasks/s "
              f"(submitted in {sub_s:.2f} s)")
        print(f"  ratio mount/floor:   {ratio:.2f}  (goal >= {GOAL_RATIO}: "
              f"{'met' if ratio >= GOAL_RATIO else 'not met'})")
        if gaps:
            print(f"  slot idle gap:       p50 {pct(gaps, 50):.1f} ms  p90 {pct(gaps, 90):.1f} ms")
        if late:
            print(f"  end noticed after:   p50 {pct(late, 50):.1f} ms  p90 {pct(late, 90):.1f} ms")
    finally:
        b.cleanup()


if __name__ == "__main__":
    sys.exit(main())
