"""The federated-averaging recipe (tools/fedavg): 3 rounds on 3 agents over an uneven split
of a synthetic linear-regression data set, driven through the tree only."""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import make_config

TOOLS = Path(__file__).resolve().parents[2] / "tools" / "fedavg"
sys.path.insert(0, str(TOOLS))
import fedavg  # noqa: E402  the recipe's own data and model, to check it against

SHARDS = {"n1": 30, "n2": 90, "n3": 240}


def test_three_rounds_average_by_samples_and_the_loss_falls(tmp_path, token, agents, mount):
    ags = agents(3)
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(TOOLS / "fedavg.py", shared / "fedavg.py")
    cfg = make_config(tmp_path / "hosts.json", ags, token, probe={"interval_s": 1},
                      artifacts={"inputs_root": str(shared)})
    m = mount(cfg)
    for a in ags:
        assert m.json("nodes", a.name, "health")["reachable"]
    shards = ",".join(f"{k}={v}" for k, v in SHARDS.items())
    run = subprocess.run(
        [sys.executable, str(TOOLS / "fedavg.py"), "drive", "--cluster", str(m.mnt),
         "--rounds", "3", "--name", "fl", "--shards", shards, "--stage-script",
         str(shared / "fedavg.py")],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [l.split(":")[0] for l in run.stdout.splitlines()] == ["round 1", "round 2", "round 3"]

    data = {n: fedavg.shard(n, c, 1, 4) for n, c in SHARDS.items()}
    x = np.concatenate([d[0] for d in data.values()])
    y = np.concatenate([d[1] for d in data.values()])
    losses = [fedavg.loss(np.zeros(5), x, y)]
    for r in (1, 2, 3):
        model = np.load(io.BytesIO(m.path("tasks", f"fl-avg-r{r}", "files", "model.npy")
                                   .read_bytes()))
        ws, ns = [], []
        for node in SHARDS:
            copy = f"fl-train-r{r}@{node}"
            assert m.read("tasks", copy, "node") == f"{node}\n"
            count = json.loads(m.read("tasks", copy, "files", "count.json"))
            assert count["samples"] == SHARDS[node]
            ws.append(np.load(io.BytesIO(m.path("tasks", copy, "files", "weights.npy")
                                         .read_bytes())))
            ns.append(count["samples"])
        want = sum(w * n for w, n in zip(ws, ns)) / sum(ns)
        assert np.max(np.abs(model - want)) <= 1e-9, (r, model, want)
        # weighted, not plain: with this uneven split the two differ
        assert np.max(np.abs(model - sum(ws) / 3)) > 1e-6
        agg = json.loads(m.read("tasks", f"fl-avg-r{r}", "files", "aggregate.json"))
        assert agg["workers"] == SHARDS and agg["method"] == "fedavg"
        losses.append(fedavg.loss(model, x, y))
    assert losses[0] > losses[1] > losses[2] > losses[3], losses
    # round 2 started from round 1's aggregate, staged as its input
    spec = m.json("tasks", "fl-train-r2", "spec")
    assert spec["inputs"]["base.npy"] == "fl-avg-r1/model.npy"
    assert "fl-avg-r1" in spec["after"]


def test_the_averager_weights_by_samples_or_not(tmp_path):
    """The averager as a task sees it: w/NODE/weights.npy and n/NODE/count.json."""
    ws = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, -2.0]), "c": np.array([0.5, 0.0])}
    ns = {"a": 1, "b": 3, "c": 6}
    for node in ws:
        (tmp_path / "w" / node).mkdir(parents=True)
        (tmp_path / "n" / node).mkdir(parents=True)
        np.save(tmp_path / "w" / node / "weights.npy", ws[node])
        (tmp_path / "n" / node / "count.json").write_text(
            json.dumps({"samples": ns[node], "loss_after": 1.0}))
    for plain, want in ((False, (ws["a"] * 1 + ws["b"] * 3 + ws["c"] * 6) / 10),
                        (True, (ws["a"] + ws["b"] + ws["c"]) / 3)):
        subprocess.run([sys.executable, str(TOOLS / "fedavg.py"), "average",
                        *(["--plain"] if plain else [])], cwd=tmp_path, check=True,
                       capture_output=True)
        assert np.max(np.abs(np.load(tmp_path / "model.npy") - want)) <= 1e-12
        agg = json.loads((tmp_path / "aggregate.json").read_text())
        assert agg["method"] == ("plain" if plain else "fedavg") and agg["workers"] == ns
