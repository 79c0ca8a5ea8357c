"""Prompt tasks: a spec with "model" and "prompt" (or "messages") is placed on a node whose
model server has the model and run by clusterfs as a streaming request to that server (the
fixture speaks Ollama's and OpenAI's documented streaming formats)."""
import errno
import http.client
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import ROOT, Mount, free_port, make_config, wait_until

FIXTURE = ROOT / "tests" / "fixtures" / "ollama_fixture.py"


class Ollama:
    """The fixture, with its side door for delays, failures, models and the requests seen."""

    def __init__(self, models, loaded=(), openai=False, delay_ms=0):
        self.port = free_port()
        args = ["/usr/bin/python3", str(FIXTURE), "--port", str(self.port),
                "--models", ",".join(models), "--pull-steps", "3", "--pull-delay-ms", "50",
                "--token-delay-ms", str(delay_ms)]
        if loaded:
            args += ["--loaded", ",".join(loaded)]
        if openai:
            args.append("--openai")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert "listening" in line, line

    def call(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request(method, path, body=None if body is None else json.dumps(body))
            r = c.getresponse()
            data = r.read()
            assert r.status == 200, (r.status, data)
            return json.loads(data)
        finally:
            c.close()

    def configure(self, **kw):
        return self.call("POST", "/_fixture/config", kw)

    def install(self, model):
        return self.call("POST", "/_fixture/install", {"model": model})

    def requests(self):
        return self.call("GET", "/_fixture/requests")["requests"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def ollamas():
    started = []

    def start(*a, **kw):
        o = Ollama(*a, **kw)
        started.append(o)
        return o

    yield start
    for o in started:
        o.stop()


def config(tmp_path, ags, token, servers, **overrides):
    cfg = make_config(tmp_path / "hosts.json", ags, token,
                      probe={"interval_s": 1, "timeout_ms": 1500}, **overrides)
    d = json.loads(cfg.read_text())
    for name, svcs in servers.items():
        d["hosts"][name]["services"].update(svcs)
    cfg.write_text(json.dumps(d))
    return cfg


def submit(m, name, spec):
    with open(m.path("tasks", "new", f"{name}.json"), "w") as f:
        f.write(spec if isinstance(spec, str) else json.dumps(spec))


def wait_task(m, name, timeout=30):
    out = {}

    def reader():
        out["v"] = m.read("tasks", name, "wait")

    t = threading.Thread(target=reader)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"wait for {name} did not return within {timeout}s"
    return out["v"]


def canned(model):
    return "This is a canned reply from the clusterfs fixture for %s." % model


def healthy(m, *nodes):
    for n in nodes:
        wait_until(lambda: m.read("nodes", n, "status") == "healthy\n", what=f"{n} healthy")


def test_ollama_generate_and_chat_and_openai_chat(tmp_path, token, agents, mount, ollamas):
    ags = agents(2)
    o1 = ollamas(["qwen3:8b"], loaded=["qwen3:8b"])
    o2 = ollamas(["gpt-oss:20b"], openai=True)
    m = mount(config(tmp_path, ags, token, {
        "n1": {"ollama": {"port": o1.port}},
        "n2": {"vllm": {"port": o2.port, "type": "openai"}}}))
    healthy(m, "n1", "n2")
    submit(m, "gen", {"model": "qwen3:8b", "prompt": "Why is the sky blue?"})
    submit(m, "chat", {"model": "qwen3:8b", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
    submit(m, "oai", {"model": "gpt-oss:20b", "prompt": "Hello there"})
    for name in ("gen", "chat", "oai"):
        assert wait_task(m, name) == "succeeded 0\n", m.json("tasks", name, "info")
    assert m.read("tasks", "gen", "stdout") == canned("qwen3:8b")
    assert m.read("tasks", "chat", "stdout") == canned("qwen3:8b")
    assert m.read("tasks", "oai", "stdout") == canned("gpt-oss:20b")
    assert m.read("tasks", "gen", "node") == "n1\n"
    assert m.read("tasks", "oai", "node") == "n2\n"

    r = m.json("tasks", "gen", "result")
    assert r["text"] == canned("qwen3:8b") and r["node"] == "n1" and r["model"] == "qwen3:8b"
    assert r["server"] == "ollama" and r["endpoint"] == "/api/generate"
    assert r["done_reason"] == "stop" and r["error"] is None
    assert r["prompt_tokens"] == 5 and r["completion_tokens"] == len(canned("qwen3:8b").split())
    t = r["timings"]
    assert t["total_ms"] > 0 and t["first_token_ms"] is not None
    assert t["eval_ms"] == r["completion_tokens"] * 1.0 and t["load_ms"] == 1.0
    assert r["tokens_per_s"] > 0
    assert m.json("tasks", "chat", "result")["endpoint"] == "/api/chat"
    ro = m.json("tasks", "oai", "result")
    assert ro["server"] == "openai" and ro["endpoint"] == "/v1/chat/completions"
    assert ro["completion_tokens"] == len(canned("gpt-oss:20b").split())
    assert ro["prompt_tokens"] == 2 and ro["done_reason"] == "stop"

    # what the servers were sent: the documented streaming requests
    g, c = [json.loads(x["body"]) for x in o1.requests()]
    assert g == {"model": "qwen3:8b", "prompt": "Why is the sky blue?", "stream": True}
    assert c["stream"] is True and c["messages"][1] == {"role": "user", "content": "Hi"}
    (oa,) = [json.loads(x["body"]) for x in o2.requests()]
    assert oa["stream"] is True and oa["stream_options"] == {"include_usage": True}
    assert oa["messages"] == [{"role": "user", "content": "Hello there"}]
    # result, like stdout, is the submitter's alone
    assert os.stat(m.path("tasks", "gen", "result")).st_mode & 0o777 == 0o600
    # a command task has an empty result
    submit(m, "cmd", {"cmd": "true", "node": "n1"})
    assert wait_task(m, "cmd") == "succeeded 0\n"
    assert m.read("tasks", "cmd", "result") == ""


def test_stdout_grows_while_streaming(tmp_path, token, agents, mount, ollamas):
    ags = agents(1)
    o = ollamas(["qwen3:8b"], delay_ms=250)
    m = mount(config(tmp_path, ags, token, {"n1": {"ollama": {"port": o.port}}}))
    healthy(m, "n1")
    submit(m, "slow", {"model": "qwen3:8b", "prompt": "go"})
    full = canned("qwen3:8b")
    # a prefix is there while the task still runs
    part = wait_until(lambda: (s := m.read("tasks", "slow", "stdout")) and s, 20,
                      what="first tokens")
    assert m.read("tasks", "slow", "status") == "running\n"
    assert full.startswith(part) and len(part) < len(full)
    # and tail -f sees the rest arrive
    tail = subprocess.Popen(["tail", "-c", "+1", "-f", str(m.path("tasks", "slow", "stdout"))],
                            stdout=subprocess.PIPE)
    try:
        assert wait_task(m, "slow") == "succeeded 0\n"
        got = b""
        deadline = time.monotonic() + 10
        while len(got) < len(full) and time.monotonic() < deadline:
            got += os.read(tail.stdout.fileno(), 4096)
        assert got.decode() == full
    finally:
        tail.kill()
        tail.wait()
    assert m.read("tasks", "slow", "result").count("\n") > 5  # indented JSON


def test_cancel_aborts_the_request(tmp_path, token, agents, mount, ollamas):
    ags = agents(1)
    o = ollamas(["qwen3:8b"], delay_ms=400)
    m = mount(config(tmp_path, ags, token, {"n1": {"ollama": {"port": o.port}}}))
    healthy(m, "n1")
    submit(m, "long", {"model": "qwen3:8b", "messages": [{"role": "user", "content": "x"}]})
    wait_until(lambda: m.read("tasks", "long", "stdout"), 20, what="streaming")
    with open(m.path("tasks", "long", "ctl"), "w") as f:
        f.write("cancel\n")
    assert wait_task(m, "long").startswith("cancelled"), m.json("tasks", "long", "info")
    # the server saw the connection close before its answer was done
    wait_until(lambda: o.requests()[0]["outcome"] != "open", 10, what="fixture notices")
    req = o.requests()[0]
    assert req["outcome"] == "client gone", req
    assert req["tokens_sent"] < len(canned("qwen3:8b").split())
    assert "aborted" in m.json("tasks", "long", "info")["reason"]


def test_timeout(tmp_path, token, agents, mount, ollamas):
    ags = agents(1)
    o = ollamas(["qwen3:8b"], delay_ms=500)
    m = mount(config(tmp_path, ags, token, {"n1": {"ollama": {"port": o.port}}}))
    healthy(m, "n1")
    submit(m, "late", {"model": "qwen3:8b", "prompt": "x", "timeout_s": 1})
    assert wait_task(m, "late").startswith("timed_out"), m.json("tasks", "late", "info")
    r = m.json("tasks", "late", "result")
    assert r["error"] and canned("qwen3:8b").startswith(r["text"]) and r["text"]


def test_missing_model_waits_then_runs(tmp_path, token, agents, mount, ollamas):
    ags = agents(2)
    o1 = ollamas(["qwen3:8b"])
    o2 = ollamas(["llama3.2:1b"])
    m = mount(config(tmp_path, ags, token, {"n1": {"ollama": {"port": o1.port}},
                                            "n2": {"ollama": {"port": o2.port}}}))
    healthy(m, "n1", "n2")
    submit(m, "later", {"model": "phi4:14b", "prompt": "x"})
    reason = wait_until(lambda: (r := m.json("tasks", "later", "info")["reason"]) and
                        "lacks model phi4:14b" in r and r, 10, what="reason")
    assert "n1 lacks model phi4:14b" in reason and "n2 lacks model phi4:14b" in reason
    assert m.read("tasks", "later", "status") == "queued\n"
    o2.install("phi4:14b")
    assert wait_task(m, "later") == "succeeded 0\n"
    assert m.read("tasks", "later", "node") == "n2\n"
    assert m.read("tasks", "later", "stdout") == canned("phi4:14b")


def test_pull_first_when_asked(tmp_path, token, agents, mount, ollamas):
    ags = agents(1)
    o = ollamas(["qwen3:8b"])
    m = mount(config(tmp_path, ags, token, {"n1": {"ollama": {"port": o.port}}}))
    healthy(m, "n1")
    submit(m, "pulled", {"model": "llama3.2:1b", "prompt": "x", "pull": True})
    assert wait_task(m, "pulled") == "succeeded 0\n", m.json("tasks", "pulled", "info")
    assert "llama3.2:1b" in os.listdir(m.path("nodes", "n1", "models"))
    assert "pull llama3.2:1b" in m.read("nodes", "n1", "models", "ctl")
    assert m.read("tasks", "pulled", "stdout") == canned("llama3.2:1b")
    assert "pulling on n1 for a prompt task" in m.read("events")
    # a pull the server refuses: the task waits, saying why
    submit(m, "nope", {"model": "missingthing:1b", "prompt": "x", "pull": True})
    reason = wait_until(lambda: (r := m.json("tasks", "nope", "info")["reason"] or "") and
                        "failed" in r and r, 15, what="refusal")
    assert "the pull of missingthing:1b on n1 failed (pull model manifest: file does not " \
           "exist); asking again in" in reason, reason
    assert m.read("tasks", "nope", "status") == "queued\n"


def test_node_all_asks_every_node_with_the_model(tmp_path, token, agents, mount, ollamas):
    ags = agents(3)
    o1 = ollamas(["qwen3:8b"])
    o2 = ollamas(["qwen3:8b"])
    o3 = ollamas(["llama3.2:1b"])
    m = mount(config(tmp_path, ags, token, {"n1": {"ollama": {"port": o1.port}},
                                            "n2": {"ollama": {"port": o2.port}},
                                            "n3": {"ollama": {"port": o3.port}}}))
    healthy(m, "n1", "n2", "n3")
    wait_until(lambda: m.read("models", "qwen3:8b", "nodes") == "n1\nn2\n", what="models")
    submit(m, "batch", {"model": "qwen3:8b", "prompt": "solve", "node": "all"})
    assert wait_task(m, "batch") == "succeeded 0\n"
    info = m.json("tasks", "batch", "info")
    assert sorted(info["children"]) == ["batch@n1", "batch@n2"]
    assert "n3 lacks model qwen3:8b" in info["placement"]
    for n in ("n1", "n2"):
        r = m.json("tasks", f"batch@{n}", "result")
        assert r["node"] == n and r["text"] == canned("qwen3:8b")
    assert len(o1.requests()) == 1 and len(o2.requests()) == 1 and not o3.requests()


def test_failing_node_retries_on_another_with_the_model(tmp_path, token, agents, mount,
                                                        ollamas):
    ags = agents(2)
    o1 = ollamas(["qwen3:8b"], loaded=["qwen3:8b"])  # loaded: placement's first choice
    o2 = ollamas(["qwen3:8b"])
    o1.configure(fail_status=500)
    m = mount(config(tmp_path, ags, token, {"n1": {"ollama": {"port": o1.port}},
                                            "n2": {"ollama": {"port": o2.port}}}))
    healthy(m, "n1", "n2")
    wait_until(lambda: m.read("models", "qwen3:8b", "loaded") == "n1\n", what="loaded")
    submit(m, "flaky", {"model": "qwen3:8b", "prompt": "x", "retries": 1})
    assert wait_task(m, "flaky") == "succeeded 0\n", m.json("tasks", "flaky", "info")
    assert m.read("tasks", "flaky", "node") == "n2\n"
    info = m.json("tasks", "flaky", "info")
    assert info["attempts"] == 2
    assert [r["outcome"] for r in o1.requests()] == ["failed on demand"]
    assert m.json("tasks", "flaky", "result")["node"] == "n2"
    # without retries the failure and the server's sentence are the task's
    submit(m, "once", {"model": "qwen3:8b", "prompt": "x", "node": "n1"})
    assert wait_task(m, "once") == "failed 1\n"
    reason = m.json("tasks", "once", "info")["reason"]
    assert "HTTP 500" in reason and "llama runner process has terminated" in reason
    assert "llama runner" in m.json("tasks", "once", "result")["error"]


def test_options_pass_through(tmp_path, token, agents, mount, ollamas):
    ags = agents(2)
    o1 = ollamas(["qwen3:8b"])
    o2 = ollamas(["gpt-oss:20b"], openai=True)
    m = mount(config(tmp_path, ags, token, {
        "n1": {"ollama": {"port": o1.port}},
        "n2": {"vllm": {"port": o2.port, "type": "openai"}}}))
    healthy(m, "n1", "n2")
    opts = {"temperature": 0.2, "num_ctx": 8192, "num_predict": 3}
    submit(m, "o", {"model": "qwen3:8b", "prompt": "x", "options": opts})
    submit(m, "p", {"model": "gpt-oss:20b", "prompt": "x",
                    "options": {"temperature": 0.7, "max_tokens": 2}})
    assert wait_task(m, "o") == "succeeded 0\n"
    assert wait_task(m, "p") == "succeeded 0\n"
    assert json.loads(o1.requests()[0]["body"])["options"] == opts
    body = json.loads(o2.requests()[0]["body"])
    assert body["temperature"] == 0.7 and body["max_tokens"] == 2
    # the servers honoured them: num_predict and max_tokens cut the answers
    r = m.json("tasks", "o", "result")
    assert r["completion_tokens"] == 3 and r["done_reason"] == "length"
    assert m.json("tasks", "p", "result")["done_reason"] == "length"


@pytest.mark.parametrize("spec,needle", [
    ({"cmd": "true", "model": "qwen3:8b", "prompt": "x"}, "not both"),
    ({"model": "qwen3:8b", "messages": "hello"}, 'field "messages" must be a non-empty list'),
    ({"model": "qwen3:8b"}, 'needs "prompt"'),
    ({"prompt": "x"}, 'belongs to a prompt task, which needs "model"'),
    ({"model": "qwen3:8b", "prompt": "x", "options": "hot"}, 'field "options" must be an object'),
    ({"model": "qwen3:8b", "prompt": "x", "cwd": "/tmp"}, 'field "cwd" is for commands'),
])
def test_bad_specs_are_refused(tmp_path, token, agents, mount, spec, needle):
    ags = agents(1)
    m = mount(make_config(tmp_path / "hosts.json", ags, token))
    with pytest.raises(OSError) as e:
        submit(m, "bad", spec)
    assert e.value.errno == errno.EINVAL
    assert needle in m.read("tasks", "new", "bad.error")
    assert not os.path.exists(m.path("tasks", "bad"))


def test_restart_asks_again(tmp_path, token, agents, ollamas):
    """clusterfs killed while a prompt streams: the next start asks again (no side
    effects), and the result comes from the second request."""
    ags = agents(1)
    o = ollamas(["qwen3:8b"], delay_ms=300)
    cfg = config(tmp_path, ags, token, {"n1": {"ollama": {"port": o.port}}})
    state = tmp_path / "state"
    (tmp_path / "a").mkdir()
    m = Mount(tmp_path / "a", cfg, state=state)
    try:
        healthy(m, "n1")
        submit(m, "again", {"model": "qwen3:8b", "prompt": "x"})
        wait_until(lambda: m.read("tasks", "again", "stdout"), 20, what="streaming")
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(10)
    finally:
        m.stop()
    o.configure(token_delay_ms=0)
    (tmp_path / "b").mkdir()
    m2 = Mount(tmp_path / "b", cfg, state=state)
    try:
        assert wait_task(m2, "again") == "succeeded 0\n"
        assert m2.read("tasks", "again", "stdout") == canned("qwen3:8b")
        assert len(o.requests()) == 2
        assert m2.json("tasks", "again", "info")["attempts"] == 2
    finally:
        m2.stop()
    # the result is kept in the store
    (tmp_path / "c").mkdir()
    m3 = Mount(tmp_path / "c", cfg, state=state)
    try:
        assert m3.json("tasks", "again", "result")["text"] == canned("qwen3:8b")
        assert m3.read("tasks", "again", "stdout") == canned("qwen3:8b")
    finally:
        m3.stop()


def test_placement_ranks_by_model(tmp_path, token, agents, mount, ollamas):
    ags = agents(3)
    o1 = ollamas(["qwen3:8b"])
    o2 = ollamas(["qwen3:8b"], loaded=["qwen3:8b"])
    m = mount(config(tmp_path, ags, token, {"n1": {"ollama": {"port": o1.port}},
                                            "n2": {"ollama": {"port": o2.port}}}))
    healthy(m, "n1", "n2", "n3")
    wait_until(lambda: m.read("models", "qwen3:8b", "loaded") == "n2\n", what="loaded")
    with open(m.path("placement"), "r+") as f:
        f.write(json.dumps({"model": "qwen3:8b"}))  # no prompt needed to ask
        f.seek(0)
        doc = json.loads(f.read())
    # loaded first, then present; a node without a model server is not eligible
    assert doc["placed"] == ["n2"] and "model qwen3:8b loaded" in doc["why"]
    by = {n["node"]: n for n in doc["nodes"]}
    assert by["n2"]["rank"] == 1 and by["n2"]["model"] == "loaded"
    assert by["n1"]["rank"] == 2 and by["n1"]["model"] == "present"
    assert by["n3"]["eligible"] is False and by["n3"]["reason"] == "has no model server"
    assert doc["spec"]["model"] == "qwen3:8b" and "cmd" not in doc["spec"]
    assert "prompt" not in doc["spec"]


def test_routing_and_requires_apply(tmp_path, token, agents, mount, ollamas):
    ags = agents(2)
    o1 = ollamas(["qwen3:8b"], loaded=["qwen3:8b"])
    o2 = ollamas(["qwen3:8b"])
    m = mount(config(tmp_path, ags, token, {"n1": {"ollama": {"port": o1.port}},
                                            "n2": {"ollama": {"port": o2.port}}},
                     routing={"deep_reasoning": {"hosts": ["n2"]}}))
    healthy(m, "n1", "n2")
    wait_until(lambda: m.read("models", "qwen3:8b", "loaded") == "n1\n", what="loaded")
    # the type's hosts win over the loaded model elsewhere
    submit(m, "deep", {"model": "qwen3:8b", "prompt": "think", "type": "deep_reasoning"})
    assert wait_task(m, "deep") == "succeeded 0\n"
    assert m.read("tasks", "deep", "node") == "n2\n"
    # a capability no node has: it waits, and says why
    submit(m, "gpu", {"model": "qwen3:8b", "prompt": "x", "requires": ["gpu"]})
    wait_until(lambda: "lacks capability gpu" in (m.json("tasks", "gpu", "info")["reason"]
                                                   or ""), what="reason")
    assert m.read("tasks", "gpu", "status") == "queued\n"
    with open(m.path("tasks", "gpu", "ctl"), "w") as f:
        f.write("cancel")
    assert wait_task(m, "gpu").startswith("cancelled")


def test_result_and_stdout_read_back_after_eviction(tmp_path, token, agents, mount, ollamas):
    """With no finished task kept in memory, a prompt's stdout and result come back from
    the store, the same bytes as the prompt's own."""
    ags = agents(1)
    o = ollamas(["qwen3:8b"], loaded=["qwen3:8b"])
    m = mount(config(tmp_path, ags, token, {"n1": {"ollama": {"port": o.port}}},
                     tasks={"finished_cached": 0}))
    healthy(m, "n1")
    submit(m, "p1", {"model": "qwen3:8b", "prompt": "One?"})
    assert wait_task(m, "p1") == "succeeded 0\n"
    submit(m, "p2", {"model": "qwen3:8b", "prompt": "Two?"})  # pushes p1 out of memory
    assert wait_task(m, "p2") == "succeeded 0\n"
    for name in ("p1", "p2"):
        assert m.read("tasks", name, "stdout") == canned("qwen3:8b")
        r = m.json("tasks", name, "result")
        assert r["text"] == canned("qwen3:8b") and r["node"] == "n1"
