#!/usr/bin/python3
"""Prompt task overhead: how much longer a prompt task takes, from close() of its spec in
MNT/tasks/new/ until a read of MNT/tasks/NAME/wait returns, than the same streaming
request sent straight to the model server (the Ollama fixture), read to its last line.
Both are measured in the same run, interleaved, against the same fixture.

Goal: the p50 of what the task adds under 5 ms (the dispatch goal of a command task). Not part of the test suite; see
tests/bench/README.md. Uses the Debian python (/usr/bin/python3), standard library only."""
import argparse
import http.client
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import ROOT, Bench, free_port, hosts, logger, pct, port_open, wait_until  # noqa: E402

GOAL_ADDED_MS = 5.0
MODEL = "qwen3:8b"

log = logger("prompt")


def direct(port, body):
    """One streaming generate request, read line by line to the end: ms."""
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST", "/api/generate", body=body,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        last = None
        for line in iter(r.readline, b""):
            last = line
        assert r.status == 200 and json.loads(last)["done"] is True, last
    finally:
        c.close()
    return (time.perf_counter() - t) * 1000.0


def task(mnt, name, spec):
    """Submits a prompt task and reads its wait file: ms from before the open to the end."""
    t = time.perf_counter()
    fd = os.open(os.path.join(mnt, "tasks", "new", name + ".json"),
                 os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, spec)
    finally:
        os.close(fd)
    with open(os.path.join(mnt, "tasks", name, "wait")) as f:
        out = f.read()
    ms = (time.perf_counter() - t) * 1000.0
    assert out == "succeeded 0\n", (name, out)
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100, help="requests of each kind (default 100)")
    ap.add_argument("--token-delay-ms", type=int, default=5,
                    help="the fixture's delay between tokens (default 5)")
    ap.add_argument("--build", default=os.environ.get("CLUSTERFS_BUILD", str(ROOT / "build")))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    build = Path(args.build)
    b = Bench(build, args.keep, "prompt")
    try:
        agent_port, ollama_port = free_port(), free_port()
        b.spawn("agent", [str(build / "tools/agent/clusterfs-agent"), "--listen",
                          f"127.0.0.1:{agent_port}", "--token-file", str(b.token_file),
                          "--state-dir", str(b.tmp / "agent"), "--name", "n1"])
        b.spawn("ollama", ["/usr/bin/python3", str(ROOT / "tests/fixtures/ollama_fixture.py"),
                           "--port", str(ollama_port), "--models", MODEL, "--loaded", MODEL,
                           "--token-delay-ms", str(args.token_delay_ms)])
        wait_until(lambda: port_open(agent_port) and port_open(ollama_port), 10, "servers")
        n1 = hosts({"n1": agent_port}, queue_depth=4)
        n1["n1"]["services"]["ollama"] = {"port": ollama_port}
        cfg = harness.write_config(b, "prompt", n1, {
            "interval_s": 30, "timeout_ms": 2000, "stale_after_s": 600,
            "offline_after_s": 1200, "unhealthy_after": 3}, tasks={"allow_root": True})
        mnt, _ = b.mount("prompt", cfg)
        wait_until(lambda: (mnt / "nodes/n1/status").read_text() == "healthy\n", 20,
                   "n1 healthy")
        wait_until(lambda: (mnt / "models" / MODEL / "loaded").read_text() == "n1\n", 10,
                   "model listed")

        prompt = "Why is the sky blue?"
        body = json.dumps({"model": MODEL, "prompt": prompt, "stream": True})
        spec = json.dumps({"model": MODEL, "prompt": prompt}).encode()
        for i in range(5):  # warm-up, untimed
            direct(ollama_port, body)
            task(str(mnt), f"warm{i}", spec)
        ds, ts = [], []
        for i in range(args.n):
            ds.append(direct(ollama_port, body))
            ts.append(task(str(mnt), f"p{i}", spec))
        added = [t - d for t, d in zip(ts, ds)]
        p50d, p50t = pct(ds, 50), pct(ts, 50)
        print(f"prompt tasks: {args.n} of each, fixture token delay {args.token_delay_ms} ms, "
              f"{len(prompt.split())}-word prompt, 11-token answer")
        print(f"{'':28}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}")
        for label, xs in (("direct streaming request", ds), ("prompt task, close->wait", ts),
                          ("added (pairwise)", added)):
            print(f"{label:28}{pct(xs, 50):10.2f}{pct(xs, 90):10.2f}{pct(xs, 99):10.2f}")
        print(f"added at p50: {p50t - p50d:.2f} ms (ratio task/direct {p50t / p50d:.2f}); "
              f"goal: under {GOAL_ADDED_MS:.0f} ms")
        return 0 if p50t - p50d < GOAL_ADDED_MS else 1
    finally:
        b.cleanup()


if __name__ == "__main__":
    sys.exit(main())
