#!/usr/bin/python3
"""Artifacts benchmark: a 1 GiB output of a task on n1 moved to n2 as the input of another
task (the control plane signs a URL, n2's agent fetches from n1's, streamed to disk and
checked by SHA-256), beside `curl` of the same file between the same two agents in the
same run (the baseline: n1's file served to a client on n2's side, written to the same
disk, no digest; and, for reference, the same with the SHA-256 computed on the way, as the
agent does). Prints MB/s for both and their ratio, and the daemon's RSS growth while
the input was staged (sampled every 20 ms).

Goal (issue 14, item 6): >= 0.8x curl's throughput, RSS growth < 32 MB. Not part of the
test suite; see tests/bench/README.md.

    sudo tests/bench/artifacts.py [--mb 1024] [--runs 2] [--build build]"""
import argparse
import json
import re
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, Agent, Bench, logger, rss_kb, tasks_config  # noqa: E402

GOAL_RATIO = 0.8
GOAL_RSS_MB = 32


log = logger("artifacts")


def submit(mnt, name, spec):
    with open(mnt / "tasks" / "new" / f"{name}.json", "w") as f:
        json.dump(spec, f)


def wait(mnt, name):
    state = (mnt / "tasks" / name / "wait").read_text().split()[0]
    if state != "succeeded":
        reason = json.loads((mnt / "tasks" / name / "info").read_text()).get("reason")
        raise RuntimeError(f"{name} {state}: {reason}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024, help="the output's size in MiB")
    ap.add_argument("--runs", type=int, default=2, help="runs of each, interleaved")
    ap.add_argument("--build", default=os.environ.get("CLUSTERFS_BUILD", str(ROOT / "build")))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    b = Bench(Path(args.build).resolve(), args.keep, "artifacts")
    size = args.mb << 20
    try:
        agents = [Agent(b, i) for i in range(2)]
        cfg_path = tasks_config(b, agents)
        cfg = json.loads(cfg_path.read_text())
        cfg["artifacts"] = {"max_mb": args.mb + 1}  # cache_max_mb stays 64: not copied here
        cfg_path.write_text(json.dumps(cfg))
        mnt, daemon = b.mount("a", cfg_path, n_nodes=2)
        log(f"writing a {args.mb} MiB output on n1")
        submit(mnt, "prod", {"node": "n1", "outputs": ["big.bin"],
                             "cmd": f"head -c {size} /dev/urandom > big.bin"})
        wait(mnt, "prod")
        did = json.loads((mnt / "tasks" / "prod" / "info").read_text())["dispatch_id"]
        url = f"http://127.0.0.1:{agents[0].port}/api/node/tasks/{did}/files/big.bin"
        dest = agents[1].state / "curl-copy"
        curl_s, digest_s, ours_s, fetch_s, growth = [], [], [], [], []
        for run in range(args.runs):
            # curl between the two agents: n1 serves, the copy lands beside n2's state
            t0 = time.monotonic()
            subprocess.run(["curl", "-sS", "--fail", "-o", str(dest), "-H",
                            f"Authorization: Bearer {b.token}", url], check=True)
            curl_s.append(time.monotonic() - t0)
            assert dest.stat().st_size == size
            dest.unlink()
            # and with the digest we check (openssl: the same SHA instructions as ours)
            t0 = time.monotonic()
            subprocess.run(f"curl -sS --fail -H 'Authorization: Bearer {b.token}' '{url}' | "
                           f"tee '{dest}' | openssl dgst -sha256 > /dev/null", shell=True,
                           check=True)
            digest_s.append(time.monotonic() - t0)
            dest.unlink()
            # ours: the input of a task on n2
            base = rss_kb(daemon.pid)
            peak = [base]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], rss_kb(daemon.pid))
                    time.sleep(0.02)
            th = threading.Thread(target=sample)
            th.start()
            name = f"cons{run}"
            t0 = time.monotonic()
            submit(mnt, name, {"node": "n2", "inputs": {"big.bin": "prod/big.bin"},
                               "cmd": f"test $(stat -c %s big.bin) = {size}"})
            wait(mnt, name)
            ours_s.append(time.monotonic() - t0)
            logtext = (b.tmp / "agent-n2.log").read_text()
            m = re.findall(rf"staged input big.bin for \S*{name}\S*: \d+ bytes in ([0-9.]+) s",
                           logtext)
            fetch_s.append(float(m[-1]))
            done.set()
            th.join()
            growth.append((peak[0] - base) / 1024)
            log(f"run {run + 1}: curl {curl_s[-1]:.2f}s, input {ours_s[-1]:.2f}s "
                f"(the fetch itself {fetch_s[-1]:.2f}s), "
                f"daemon RSS +{growth[-1]:.1f} MB")
            for p in (agents[1].state / "tasks").glob(f"*{name}*/work/big.bin"):
                p.unlink()  # keep the disk for the next run
        mbs = lambda s: args.mb * 1.048576 / s  # noqa: E731  MB/s (10^6 bytes)
        best_curl, best_ours, best_fetch = min(curl_s), min(ours_s), min(fetch_s)
        ratio = best_curl / best_ours
        print(f"{'moving a ' + str(args.mb) + ' MiB output n1 -> n2':44} {'s (best)':>10} {'MB/s':>10}")
        print(f"{'curl between the agents (baseline)':44} {best_curl:10.2f} {mbs(best_curl):10.0f}")
        best_digest = min(digest_s)
        print(f"{'curl | tee FILE | openssl dgst -sha256':44} {best_digest:10.2f} "
              f"{mbs(best_digest):10.0f}")
        print(f"{'input of a task, submission to its end':44} {best_ours:10.2f} {mbs(best_ours):10.0f}")
        print(f"{'  of which the fetch n2 <- n1 (signed URL)':44} {best_fetch:10.2f} {mbs(best_fetch):10.0f}")
        print(f"ratio {ratio:.2f}x curl end to end, {best_curl / best_fetch:.2f}x for the fetch "
              f"(goal >= {GOAL_RATIO}); "
              f"{best_digest / best_fetch:.2f}x curl with a digest; daemon RSS growth "
              f"max {max(growth):.1f} MB (goal < {GOAL_RSS_MB})")
        return 0 if ratio >= GOAL_RATIO and max(growth) < GOAL_RSS_MB else 1
    finally:
        b.cleanup()


if __name__ == "__main__":
    sys.exit(main())
