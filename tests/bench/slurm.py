#!/usr/bin/python3
"""Slurm benchmark: tasks through the mount beside Slurm's own client, in the same run, on
a real Slurm started here (tests/integration/slurm.py: munged, slurmctld, one slurmd,
slurmrestd with auth/jwt).

1. Submission latency: close() of a spec in MNT/tasks/new/ until the job is visible in
   `squeue`, against `sbatch` of the same script until its job is visible (both measured
   by the same squeue poll, median of --n runs).
2. 100 tasks end to end: from the first submission until all have ended, through the mount
   (files, then every tasks/ID/wait) against 100 `sbatch` calls (then squeue until none is
   left pending or running).

Goal (issue 12): within 1.2x of sbatch for both. Exit status 0 when met, 1 when not.
Not part of the test suite; see tests/bench/README.md."""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from conftest import Mount, make_config, write_token  # noqa: E402
from slurm import PARTITION, Slurm  # noqa: E402

GOAL = 1.2


def log(msg):
    print(f"[slurm-bench] {msg}", file=sys.stderr, flush=True)


def median(xs):
    s = sorted(xs)
    return s[len(s) // 2]


def squeue_names(slurm, states="all"):
    r = subprocess.run(["squeue", "-h", "-a", "-t", states, "-o", "%j"], env=slurm.env,
                       capture_output=True, text=True, timeout=30)
    return set(r.stdout.split())


def until_visible(slurm, match, t0):
    """Seconds from t0 until squeue lists a job whose name match() accepts."""
    while True:
        if any(match(n) for n in squeue_names(slurm)):
            return time.monotonic() - t0
        time.sleep(0.002)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10, help="latency samples per side")
    ap.add_argument("--tasks", type=int, default=100)
    args = ap.parse_args()
    slurm = Slurm()
    tmpdir = Path(slurm.dir) / "bench"
    tmpdir.mkdir()
    m = None
    try:
        token = write_token(tmpdir / "token", "unused")
        jwt = slurm.write_token_file(tmpdir / "slurm.jwt")
        cfg = make_config(tmpdir / "hosts.json", [], token,
                          slurm={"rest": f"http://127.0.0.1:{slurm.rest_port}",
                                 "token_file": str(jwt), "user": "nobody",
                                 "partition": PARTITION, "output_dir": str(slurm.out),
                                 "interval_s": 1, "queue_depth": 1000})
        (tmpdir / "m").mkdir()
        m = Mount(tmpdir / "m", cfg)
        while not m.path("nodes", "slurm").exists() or \
                m.read("nodes", "slurm", "status") != "healthy\n":
            time.sleep(0.05)
        script = slurm.out / "job.sh"
        script.write_text("#!/bin/sh\ntrue\n")
        os.chmod(script, 0o755)

        # 1. latency
        mount_lat, sbatch_lat = [], []
        for i in range(args.n):
            name = f"lat{i}"
            t0 = time.monotonic()
            with open(m.path("tasks", "new", f"{name}.json"), "w") as f:
                f.write(json.dumps({"cmd": "true", "node": "slurm"}))
            mount_lat.append(until_visible(slurm, lambda n: n.endswith(f".{name}.1"), t0))
            t0 = time.monotonic()
            subprocess.run(["sbatch", "-Q", "-J", f"sb-lat{i}", "-p", PARTITION,
                            "-o", "/dev/null", "-D", str(slurm.out), str(script)],
                           env=slurm.env, check=True)
            sbatch_lat.append(until_visible(slurm, lambda n: n == f"sb-lat{i}", t0))
            m.read("tasks", name, "wait")

        # 2. 100 end to end
        n = args.tasks
        t0 = time.monotonic()
        for i in range(n):
            with open(m.path("tasks", "new", f"e2e{i}.json"), "w") as f:
                f.write(json.dumps({"cmd": "true", "node": "slurm"}))
        bad = [i for i in range(n) if m.read("tasks", f"e2e{i}", "wait") != "succeeded 0\n"]
        mount_e2e = time.monotonic() - t0
        t0 = time.monotonic()
        for i in range(n):
            subprocess.run(["sbatch", "-Q", "-J", f"sb-e2e{i}", "-p", PARTITION,
                            "-o", "/dev/null", "-D", str(slurm.out), str(script)],
                           env=slurm.env, check=True)
        while any(x.startswith("sb-e2e") for x in squeue_names(slurm, "PENDING,RUNNING,"
                                                                       "CONFIGURING,COMPLETING")):
            time.sleep(0.01)
        sbatch_e2e = time.monotonic() - t0

        ml, sl = median(mount_lat) * 1000, median(sbatch_lat) * 1000
        print(f"{'':34} {'mount':>10} {'sbatch':>10} {'ratio':>7}")
        print(f"{'submit -> in squeue, median ms':34} {ml:10.1f} {sl:10.1f} {ml / sl:7.2f}")
        print(f"{f'{n} tasks end to end, s':34} {mount_e2e:10.2f} {sbatch_e2e:10.2f} "
              f"{mount_e2e / sbatch_e2e:7.2f}")
        if bad:
            print(f"{len(bad)} tasks through the mount did not succeed: {bad[:5]}")
        ok = not bad and ml / sl <= GOAL and mount_e2e / sbatch_e2e <= GOAL
        print(f"goal (within {GOAL}x of sbatch): {'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    finally:
        if m:
            m.stop()
        slurm.stop()


if __name__ == "__main__":
    sys.exit(main())
