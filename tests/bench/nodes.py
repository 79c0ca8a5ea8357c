#!/usr/bin/python3
"""Warm-path benchmark at 1,000 nodes: `cat` of the cluster-wide files (stats,
topology.json, metrics) and of every nodes/*/status, each beside the same bytes copied to
tmpfs in the same run, and libfuse's hello_ll per-file time beside the status glob.

Goals (issue 10): a single file within 2x tmpfs; `cat nodes/*/status` within 1.3 x
(N x hello_ll's per-file time). Not part of the test suite; see tests/bench/README.md.

Uses the Debian python (/usr/bin/python3), standard library only."""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import ROOT, Bench, hosts, logger, start_sim, wait_reachable, wait_until  # noqa: E402

HELLO_SRC = Path("/usr/share/doc/libfuse3-dev/examples/hello_ll.c")
FILES = ("stats", "topology.json", "metrics")

log = logger("nodes")


def write_config(b, ports):
    """Data that never goes stale during the run: no open or stat waits for a probe, so
    what is timed is the FUSE path and the rendering."""
    return harness.write_config(b, "nodes", hosts(ports, "n{:04d}"), {
        "interval_s": 3600, "timeout_ms": 5000, "stale_after_s": 7200,
        "offline_after_s": 7200, "unhealthy_after": 3, "max_age_ms": 3600000},
        thresholds=None)


def mount_hello(b):
    """libfuse's hello_ll example, compiled for this run."""
    src = b.tmp / "hello_ll.c"
    shutil.copy(HELLO_SRC, src)
    exe = b.tmp / "hello_ll"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                           capture_output=True, text=True).stdout.split()
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)] + flags, check=True)
    mnt = b.tmp / "hello"
    mnt.mkdir()
    p = b.spawn("hello_ll", [str(exe), "-f", str(mnt)])
    b.mounts.append(mnt)
    wait_until(lambda: p.poll() is None and os.path.ismount(mnt), 10, "the hello_ll mount")
    return mnt, p


def ms_of(args):
    t = time.monotonic()
    r = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ms = (time.monotonic() - t) * 1000.0
    if r.returncode != 0:
        raise RuntimeError(f"{args[:3]}... failed: {r.stderr.decode()[:200]}")
    return ms


def sh_ms(script, arg):
    return ms_of(["/bin/sh", "-c", script, str(arg)])


STATUS = 'exec cat "$0"/nodes/*/status'


def hello_cat(mnt, n):
    """One cat of hello_ll's one file, n times over (one process, as the glob's cat)."""
    return ms_of(["cat"] + [str(mnt / "hello")] * n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.environ.get("CLUSTERFS_BUILD", ROOT / "build"),
                    type=Path, help="meson build directory (default: %(default)s)")
    ap.add_argument("-n", "--nodes", type=int, default=1000,
                    help="simulated nodes (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=15, help="runs per figure (default: 15)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    for exe in ("daemon/clusterfs", "tools/clusterfs-agent-sim"):
        if not (args.build / exe).exists():
            sys.exit(f"nodes: {args.build / exe} is missing; run: ninja -C {args.build}")
    for tool in ("fusermount3", "cc", "pkg-config"):
        if not shutil.which(tool):
            sys.exit(f"nodes: {tool} is not installed")
    if not HELLO_SRC.exists():
        sys.exit(f"nodes: {HELLO_SRC} is missing; install libfuse3-dev")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        sys.exit("nodes: cannot use /dev/fuse")

    b = Bench(args.build.resolve(), args.keep, "nodes")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    shm = Path(tempfile.mkdtemp(prefix="clusterfs-bench-nodes-", dir="/dev/shm"))
    n = args.nodes
    res = {}
    try:
        ports = start_sim(b, n, 0)
        mnt, _ = b.mount("nodes", write_config(b, ports), timeout=20)
        hello, _ = mount_hello(b)
        wait_reachable(mnt, n, 60)
        # the same bytes on tmpfs
        for f in FILES:
            (shm / f).write_bytes((mnt / f).read_bytes())
        for d in sorted((mnt / "nodes").iterdir()):
            (shm / "nodes" / d.name).mkdir(parents=True)
            (shm / "nodes" / d.name / "status").write_bytes((d / "status").read_bytes())
        sh_ms(STATUS, mnt)  # warm: names and attributes cached, data fresh
        figures = {f"cat {f}": [] for f in FILES}
        figures.update({f"tmpfs {f}": [] for f in FILES})
        figures.update({"cat nodes/*/status": [], "tmpfs nodes/*/status": [],
                        "hello_ll x N": []})
        for _ in range(args.repeat):
            # interleaved, so that the machine's load falls on both sides alike
            for f in FILES:
                figures[f"cat {f}"].append(ms_of(["cat", str(mnt / f)]))
                figures[f"tmpfs {f}"].append(ms_of(["cat", str(shm / f)]))
            figures["cat nodes/*/status"].append(sh_ms(STATUS, mnt))
            figures["tmpfs nodes/*/status"].append(sh_ms(STATUS, shm))
            figures["hello_ll x N"].append(hello_cat(hello, n))
        res = {k: statistics.median(v) for k, v in figures.items()}
        res["sizes"] = {f: (mnt / f).stat().st_size for f in FILES}
    finally:
        b.cleanup()
        shutil.rmtree(shm, ignore_errors=True)

    ok = True
    print(f"warm reads at {n} simulated nodes, median of {args.repeat} runs (wall ms, "
          f"including starting cat)")
    print(f"{'file':<20} {'bytes':>9} {'clusterfs':>10} {'tmpfs':>8} {'ratio':>6}  goal")
    for f in FILES:
        ratio = res[f"cat {f}"] / res[f"tmpfs {f}"]
        met = ratio <= 2.0
        ok &= met
        print(f"{f:<20} {res['sizes'][f]:>9} {res[f'cat {f}']:>10.2f} "
              f"{res[f'tmpfs {f}']:>8.2f} {ratio:>6.2f}  <= 2x tmpfs: "
              f"{'met' if met else 'NOT met'}")
    st, tm, hl = res["cat nodes/*/status"], res["tmpfs nodes/*/status"], res["hello_ll x N"]
    ratio = st / hl
    met = ratio <= 1.3
    ok &= met
    print(f"{'nodes/*/status':<20} {n:>9} {st:>10.2f} {tm:>8.2f} {st / tm:>6.2f}  "
          f"<= 1.3 x hello_ll x N ({hl:.2f} ms, {hl * 1000 / n:.0f} us a file): "
          f"{ratio:.2f}, {'met' if met else 'NOT met'}")
    print("bytes: the file's size (for nodes/*/status: the number of files). hello_ll x N: "
          "one cat of\nhello_ll's /hello named N times, the per-file floor of a FUSE "
          "open/read/close.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
