"""Models across nodes, from Ollama servers (the fixture speaks Ollama's documented API)
and an OpenAI-compatible server."""
import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port, make_config, wait_until

FIXTURE = ROOT / "tests" / "fixtures" / "ollama_fixture.py"


class Ollama:
    def __init__(self, tmp, models, loaded=(), openai=False, steps=5, delay_ms=200):
        self.port = free_port()
        args = ["/usr/bin/python3", str(FIXTURE), "--port", str(self.port),
                "--models", ",".join(models), "--pull-steps", str(steps),
                "--pull-delay-ms", str(delay_ms)]
        if loaded:
            args += ["--loaded", ",".join(loaded)]
        if openai:
            args.append("--openai")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert "listening" in line, line

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def ollamas(tmp_path):
    started = []

    def start(*a, **kw):
        o = Ollama(tmp_path, *a, **kw)
        started.append(o)
        return o

    yield start
    for o in started:
        o.stop()


def config_with_models(tmp_path, ags, token, servers):
    cfg = make_config(tmp_path / "hosts.json", ags, token, probe={"timeout_ms": 1500})
    d = json.loads(cfg.read_text())
    for name, svcs in servers.items():
        d["hosts"][name]["services"].update(svcs)
    cfg.write_text(json.dumps(d))
    return cfg


def test_models_across_three_nodes(tmp_path, token, agents, mount, ollamas):
    ags = agents(3)
    o1 = ollamas(["qwen3:8b", "llama3.2:1b"], loaded=["qwen3:8b"])
    o2 = ollamas(["qwen3:8b", "myorg/phi4:14b"])
    o3 = ollamas(["gpt-oss:20b"], openai=True)
    cfg = config_with_models(tmp_path, ags, token, {
        "n1": {"ollama": {"port": o1.port}},
        "n2": {"ollama": {"port": o2.port}},
        "n3": {"vllm": {"port": o3.port, "path": "/v1", "type": "openai"}},
    })
    m = mount(cfg)
    assert sorted(os.listdir(m.path("models"))) == [
        "gpt-oss:20b", "llama3.2:1b", "myorg%2Fphi4:14b", "qwen3:8b"]
    assert m.read("models", "qwen3:8b", "nodes") == "n1\nn2\n"
    assert m.read("models", "qwen3:8b", "loaded") == "n1\n"
    assert m.read("models", "llama3.2:1b", "loaded") == ""
    assert m.read("models", "gpt-oss:20b", "nodes") == "n3\n"
    assert sorted(os.listdir(m.path("nodes", "n1", "models"))) == ["ctl", "llama3.2:1b",
                                                                   "qwen3:8b"]
    d = m.json("nodes", "n1", "models", "qwen3:8b")
    assert d["loaded"] is True and d["size"] > 0 and d["digest"]
    assert d["family"] and d["parameter_size"] and d["quantization"]
    assert m.json("nodes", "n2", "models", "myorg%2Fphi4:14b")["name"] == "myorg/phi4:14b"
    assert m.json("nodes", "n3", "models", "gpt-oss:20b")["server"] == "openai"
    info = m.json("models", "qwen3:8b", "info")
    assert sorted(info["nodes"]) == ["n1", "n2"]


def test_pull_with_progress_and_delete(tmp_path, token, agents, mount, ollamas):
    ags = agents(1)
    o = ollamas(["qwen3:8b"], steps=8, delay_ms=250)
    m = mount(config_with_models(tmp_path, ags, token, {"n1": {"ollama": {"port": o.port}}}))
    assert os.listdir(m.path("nodes", "n1", "models")) == ["ctl", "qwen3:8b"]
    with open(m.path("nodes", "n1", "models", "ctl"), "w") as f:
        f.write("pull llama3.2:1b\n")
    # progress is readable while it runs
    seen = wait_until(lambda: (c := m.read("nodes", "n1", "models", "ctl")) and "%" in c and c,
                      what="progress")
    assert "pull llama3.2:1b" in seen
    wait_until(lambda: "success" in m.read("nodes", "n1", "models", "ctl"), 15, what="done")
    wait_until(lambda: "llama3.2:1b" in os.listdir(m.path("nodes", "n1", "models")),
               what="pulled model listed")
    assert "pulled" in m.read("events")
    with open(m.path("nodes", "n1", "models", "ctl"), "w") as f:
        f.write("delete llama3.2:1b\n")
    wait_until(lambda: "llama3.2:1b" not in os.listdir(m.path("nodes", "n1", "models")),
               what="deleted")
    # errors come back as errors
    with pytest.raises(OSError) as e:
        with open(m.path("nodes", "n1", "models", "ctl"), "w") as f:
            f.write("delete nope:1b\n")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        with open(m.path("nodes", "n1", "models", "ctl"), "w") as f:
            f.write("fetch qwen3:8b\n")
    assert e.value.errno == errno.EINVAL


def test_model_server_down(tmp_path, token, agents, mount, ollamas):
    ags = agents(1)
    cfg = config_with_models(tmp_path, ags, token, {"n1": {"ollama": {"port": free_port()}}})
    m = mount(cfg)
    t = time.monotonic()
    assert os.listdir(m.path("nodes", "n1", "models")) == ["ctl"]
    assert time.monotonic() - t < 1.5 + 1.0
    assert "models n1" in m.read("alerts")
