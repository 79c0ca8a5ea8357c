#!/usr/bin/env python3
"""Federated averaging over a clusterfs tree: the round driver, the trainer and the averager.

    fedavg.py drive --cluster /cluster --rounds 3 --name fl --shards n1=30,n2=90,n3=240
    fedavg.py train --shards ... [--epochs E --lr LR]     (a task; run by the driver)
    fedavg.py average [--plain]                          (a task; run by the driver)

The driver uses only the tree: it writes task specs into tasks/new/ and reads
tasks/ID/wait and tasks/ID/files/. Round K is a training task on every node
("node": "all"), each writing weights.npy and count.json, then an averaging task whose
inputs are every copy's outputs ("w/": "NAME-train-rK@*/weights.npy"), and round K+1's
training takes the aggregate as its input ("base.npy": "NAME-avg-rK/model.npy"). The
inputs make each task wait for the one before, so every round is submitted at once.

The model is linear regression on a synthetic data set: each node's shard is drawn from
the same true weights, with a seed from the node's name ($CLUSTERFS_NODE) and a size from
--shards, so the split is as uneven as the sizes say. Aggregation is federated averaging
(weighted by each node's sample count) or, with --plain, the plain mean. numpy only.
"""
import argparse
import json
import os
import sys
import time
import zlib

import numpy as np


# ---- the data and the model ----

def parse_shards(text):
    """"n1=30,n2=90" -> {"n1": 30, "n2": 90}"""
    shards = {}
    for part in text.split(","):
        node, _, n = part.partition("=")
        if not node or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"fedavg: --shards wants NODE=COUNT,..., not {text!r}")
        shards[node.strip()] = int(n)
    return shards


def true_weights(seed, dim):
    return np.random.default_rng(seed).normal(size=dim + 1)


def shard(node, samples, seed, dim):
    """The node's (X, y): the same true model everywhere, its own draws."""
    rng = np.random.default_rng([seed, zlib.crc32(node.encode())])
    w = true_weights(seed, dim)
    x = rng.normal(size=(samples, dim))
    y = x @ w[:dim] + w[dim] + 0.1 * rng.normal(size=samples)
    return x, y


def loss(w, x, y):
    r = x @ w[:-1] + w[-1] - y
    return float(np.mean(r * r))


def gradient(w, x, y):
    r = x @ w[:-1] + w[-1] - y
    return np.concatenate([2.0 * x.T @ r / len(y), [2.0 * np.mean(r)]])


def weighted_mean(weights, counts):
    """Federated averaging: sum(n_i * w_i) / sum(n_i)."""
    total = float(sum(counts))
    return sum(w * (n / total) for w, n in zip(weights, counts))


# ---- the tasks ----

def cmd_train(a):
    node = os.environ.get("CLUSTERFS_NODE")
    shards = parse_shards(a.shards)
    if node not in shards:
        raise SystemExit(f"fedavg: no shard for node {node!r} in --shards")
    x, y = shard(node, shards[node], a.seed, a.dim)
    w = np.load("base.npy") if os.path.exists("base.npy") else np.zeros(a.dim + 1)
    before = loss(w, x, y)
    for _ in range(a.epochs):
        w = w - a.lr * gradient(w, x, y)
    np.save("weights.npy", w)
    with open("count.json", "w") as f:
        json.dump({"node": node, "samples": len(y), "loss_before": before,
                   "loss_after": loss(w, x, y)}, f)
    print(f"{node}: {len(y)} samples, loss {before:.6f} -> {loss(w, x, y):.6f}")


def cmd_average(a):
    nodes = sorted(os.listdir("w"))
    weights, counts, workers, after = [], [], {}, 0.0
    for node in nodes:
        weights.append(np.load(os.path.join("w", node, "weights.npy")))
        with open(os.path.join("n", node, "count.json")) as f:
            c = json.load(f)
        counts.append(c["samples"])
        workers[node] = c["samples"]
        after += c["loss_after"] * c["samples"]
    model = (sum(weights) / len(weights)) if a.plain else weighted_mean(weights, counts)
    np.save("model.npy", model)
    with open("aggregate.json", "w") as f:
        json.dump({"method": "plain" if a.plain else "fedavg", "workers": workers,
                   "train_loss": after / sum(counts)}, f)
    print(f"averaged {len(nodes)} workers ({sum(counts)} samples)")


# ---- the driver ----

def submit(cluster, name, spec):
    with open(os.path.join(cluster, "tasks", "new", f"{name}.json"), "w") as f:
        json.dump(spec, f)


def wait(cluster, name):
    with open(os.path.join(cluster, "tasks", name, "wait")) as f:
        state = f.read().split()[0]
    if state != "succeeded":
        with open(os.path.join(cluster, "tasks", name, "info")) as f:
            reason = json.load(f).get("reason")
        raise SystemExit(f"fedavg: {name} {state}: {reason}")


def cmd_drive(a):
    shards = parse_shards(a.shards)  # checked here, before anything is submitted
    if a.stage_script:
        script, inputs = "fedavg.py", {"fedavg.py": os.path.abspath(a.stage_script)}
    else:
        script, inputs = os.path.abspath(__file__), {}
    common = ["--shards", ",".join(f"{k}={v}" for k, v in shards.items()),
              "--seed", str(a.seed), "--dim", str(a.dim)]
    for r in range(1, a.rounds + 1):
        train, avg = f"{a.name}-train-r{r}", f"{a.name}-avg-r{r}"
        tin = dict(inputs)
        if r > 1:
            tin["base.npy"] = f"{a.name}-avg-r{r - 1}/model.npy"
        submit(a.cluster, train, {
            "node": "all", "inputs": tin, "outputs": ["weights.npy", "count.json"],
            "cmd": [a.python, script, "train", *common, "--epochs", str(a.epochs),
                    "--lr", str(a.lr)]})
        submit(a.cluster, avg, {
            "inputs": {**inputs, "w/": f"{train}@*/weights.npy", "n/": f"{train}@*/count.json"},
            "outputs": ["model.npy", "aggregate.json"],
            "cmd": [a.python, script, "average", *(["--plain"] if a.plain else [])]})
    for r in range(1, a.rounds + 1):
        avg = f"{a.name}-avg-r{r}"
        started = time.monotonic()
        wait(a.cluster, avg)
        with open(os.path.join(a.cluster, "tasks", avg, "files", "aggregate.json")) as f:
            agg = json.load(f)
        print(f"round {r}: {len(agg['workers'])} workers, train loss "
              f"{agg['train_loss']:.6f} ({time.monotonic() - started:.1f}s)", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="fedavg.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--shards", required=True, help="NODE=SAMPLES,... (the uneven split)")
    data.add_argument("--seed", type=int, default=1)
    data.add_argument("--dim", type=int, default=4)
    t = sub.add_parser("train", parents=[data], help="one local round (a task)")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--lr", type=float, default=0.05)
    av = sub.add_parser("average", help="the aggregation (a task)")
    av.add_argument("--plain", action="store_true", help="the plain mean, not weighted")
    d = sub.add_parser("drive", parents=[data], help="submit the rounds and follow them")
    d.add_argument("--cluster", default="/cluster", help="the mount (default /cluster)")
    d.add_argument("--rounds", type=int, default=3)
    d.add_argument("--name", default="fedavg", help="prefix of the task names")
    d.add_argument("--epochs", type=int, default=5)
    d.add_argument("--lr", type=float, default=0.05)
    d.add_argument("--plain", action="store_true")
    d.add_argument("--python", default="python3", help="the nodes' python (with numpy)")
    d.add_argument("--stage-script", metavar="PATH",
                   help="send this copy of fedavg.py (beneath artifacts.inputs_root) to the "
                        "nodes as an input, rather than running the one at this path there")
    a = p.parse_args(argv)
    {"train": cmd_train, "average": cmd_average, "drive": cmd_drive}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
