"""Self-test of tests/fixtures/ollama_fixture.py: the Ollama REST API stand-in.

Each test starts its own fixture process on a free port (--port 0, the port is read from
the "listening on HOST:PORT" line) and always stops it, so a failure cannot leak a server.
Standard library HTTP only (http.client), so NDJSON streams are read line by line as the
chunks arrive."""
import hashlib
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ollama_fixture.py"
PYTHON = "/usr/bin/python3"

TAGS_KEYS = {"name", "model", "modified_at", "size", "digest", "details"}
DETAILS_KEYS = {"parent_model", "format", "family", "families", "parameter_size",
                "quantization_level"}
PS_KEYS = {"name", "model", "size", "digest", "details", "expires_at", "size_vram",
           "context_length"}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def ts(s):
    assert RFC3339.match(s), s
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


class Fixture:
    def __init__(self, *args):
        self.proc = subprocess.Popen([PYTHON, str(FIXTURE), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if ready else ""
        m = re.match(r"^listening on (\S+):(\d+)\n$", line)
        if not m:
            self.stop()
            raise AssertionError("fixture did not start: %r %r" % (line, self.proc.stderr.read()))
        self.host, self.port = m.group(1), int(m.group(2))

    def conn(self, timeout=10):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, raw=None, headers=None):
        """(status, headers, body bytes). body is JSON-encoded; raw is sent as is."""
        c = self.conn()
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body))
            c.request(method, path, body=data, headers=headers or {})
            r = c.getresponse()
            return r.status, r.headers, r.read()
        finally:
            c.close()

    def json(self, method, path, body=None, expect=200):
        status, hdrs, data = self.request(method, path, body)
        assert status == expect, (status, data)
        if data:
            assert hdrs["Content-Type"].startswith("application/json"), hdrs["Content-Type"]
        return json.loads(data)

    def stream(self, path, body):
        """Yields (arrival time, decoded object) for each NDJSON line as it arrives."""
        c = self.conn()
        try:
            c.request("POST", path, body=json.dumps(body))
            r = c.getresponse()
            assert r.status == 200, (r.status, r.read())
            assert r.headers["Content-Type"] == "application/x-ndjson"
            assert r.headers["Transfer-Encoding"] == "chunked"
            assert r.headers["Content-Length"] is None
            while True:
                line = r.readline()
                if not line:
                    break
                assert line.endswith(b"\n"), line
                yield time.monotonic(), json.loads(line)
        finally:
            c.close()

    def names(self, path="/api/tags"):
        return [m["name"] for m in self.json("GET", path)["models"]]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()
        return self.proc.returncode


@pytest.fixture
def start():
    started = []

    def go(*args):
        f = Fixture(*args)
        started.append(f)
        return f

    yield go
    for f in started:
        f.stop()


@pytest.fixture
def fx(start):
    return start("--models", "qwen3:8b,llama3.2:1b", "--loaded", "qwen3:8b",
                 "--pull-steps", "4", "--pull-delay-ms", "10", "--openai")


# ------------------------------------------------------------------------ process

def test_runs_under_system_python_with_the_shebang():
    assert FIXTURE.read_text().startswith("#!/usr/bin/python3\n")
    assert os.access(FIXTURE, os.X_OK)


def test_sigterm_exits_cleanly(start):
    f = start()
    assert f.request("GET", "/")[0] == 200
    t0 = time.monotonic()
    assert f.stop() == 0
    assert time.monotonic() - t0 < 3


def test_sigterm_during_a_streaming_pull_exits_cleanly(start):
    f = start("--pull-steps", "50", "--pull-delay-ms", "100")
    gen = f.stream("/api/pull", {"model": "slow:1b"})
    next(gen)
    assert f.stop() == 0
    gen.close()


def test_explicit_port_and_host(start):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([PYTHON, str(FIXTURE), "--port", str(port), "--host", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready
        assert proc.stdout.readline().decode() == "listening on 127.0.0.1:%d\n" % port
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("args", [["--loaded", "other:1b"], ["--models", "bad name!"],
                                  ["--pull-steps", "0"]])
def test_bad_command_line_is_refused(args):
    r = subprocess.run([PYTHON, str(FIXTURE), "--port", "0", *args], capture_output=True,
                       timeout=10)
    assert r.returncode == 2
    assert b"listening" not in r.stdout


# ------------------------------------------------------------------------ list endpoints

def test_root_and_version(fx):
    status, hdrs, body = fx.request("GET", "/")
    assert (status, body) == (200, b"Ollama is running")
    assert isinstance(fx.json("GET", "/api/version")["version"], str)
    status, hdrs, body = fx.request("HEAD", "/api/tags")
    assert status == 200 and body == b"" and int(hdrs["Content-Length"]) > 0


def test_tags_shape_and_determinism(fx, start):
    models = fx.json("GET", "/api/tags")["models"]
    assert sorted(m["name"] for m in models) == ["llama3.2:1b", "qwen3:8b"]
    for m in models:
        assert set(m) == TAGS_KEYS
        assert m["model"] == m["name"]
        assert m["digest"] == hashlib.sha256(m["name"].encode()).hexdigest()
        assert isinstance(m["size"], int) and not isinstance(m["size"], bool) and m["size"] > 0
        ts(m["modified_at"])
        d = m["details"]
        assert set(d) == DETAILS_KEYS
        assert d["parent_model"] == "" and d["format"] == "gguf"
        assert d["families"] == [d["family"]]
        assert re.match(r"^\d+(\.\d)?[BM]$", d["parameter_size"])
        assert isinstance(d["quantization_level"], str)
    # most recently modified first, as ListHandler sorts
    times = [ts(m["modified_at"]) for m in models]
    assert times == sorted(times, reverse=True)
    # a second instance reports the same records
    other = start("--models", "llama3.2:1b,qwen3:8b")
    assert other.json("GET", "/api/tags")["models"] == models


def test_empty_model_list(start):
    f = start("--models", "")
    assert f.json("GET", "/api/tags") == {"models": []}
    assert f.json("GET", "/api/ps") == {"models": []}


def test_ps_shape(fx):
    models = fx.json("GET", "/api/ps")["models"]
    assert [m["name"] for m in models] == ["qwen3:8b"]
    m = models[0]
    assert set(m) == PS_KEYS
    assert set(m["details"]) == DETAILS_KEYS
    tag = [t for t in fx.json("GET", "/api/tags")["models"] if t["name"] == "qwen3:8b"][0]
    assert (m["model"], m["digest"], m["size"]) == ("qwen3:8b", tag["digest"], tag["size"])
    assert isinstance(m["size_vram"], int) and 0 < m["size_vram"] <= m["size"]
    assert isinstance(m["context_length"], int)
    assert ts(m["expires_at"]) > datetime.now(timezone.utc)


# ------------------------------------------------------------------------ show

def test_show(fx):
    r = fx.json("POST", "/api/show", {"model": "qwen3:8b"})
    for key in ("modelfile", "parameters", "template", "details", "model_info",
                "capabilities", "modified_at", "license"):
        assert key in r, key
    assert all(isinstance(r[k], str) for k in ("modelfile", "parameters", "template", "license"))
    assert set(r["details"]) == DETAILS_KEYS
    assert r["model_info"]["general.architecture"] == r["details"]["family"]
    assert isinstance(r["model_info"]["general.parameter_count"], int)
    assert r["capabilities"] == ["completion"]
    assert "FROM " in r["modelfile"]
    # the deprecated "name" field, and names given without the default tag / namespace
    assert fx.json("POST", "/api/show", {"name": "qwen3:8b"}) == r
    assert fx.json("POST", "/api/show", {"model": "library/QWEN3:8b"}) == r


def test_show_errors(fx):
    assert fx.json("POST", "/api/show", {"model": "nope:1b"}, expect=404) == \
        {"error": "model 'nope:1b' not found"}
    assert fx.json("POST", "/api/show", {}, expect=400) == {"error": "model is required"}
    assert fx.json("POST", "/api/show", {"model": 3}, expect=400)["error"]
    for raw in (b"{bad", b"[1]", b""):
        status, hdrs, body = fx.request("POST", "/api/show", raw=raw)
        assert status == 400, raw
        assert hdrs["Content-Type"].startswith("application/json")
        assert isinstance(json.loads(body)["error"], str)


# ------------------------------------------------------------------------ pull

def test_streaming_pull_line_by_line(start):
    steps, delay = 4, 0.15
    f = start("--models", "qwen3:8b", "--pull-steps", str(steps),
              "--pull-delay-ms", str(int(delay * 1000)))
    lines = list(f.stream("/api/pull", {"model": "llama3.2:1b"}))
    events = [ev for _, ev in lines]
    assert events[0] == {"status": "pulling manifest"}
    progress = events[1:1 + steps]
    assert events[1 + steps:] == [{"status": "verifying sha256 digest"},
                                  {"status": "writing manifest"}, {"status": "success"}]
    digest = progress[0]["digest"]
    assert re.match(r"^sha256:[0-9a-f]{64}$", digest)
    total = progress[0]["total"]
    done = [p["completed"] for p in progress]
    for p in progress:
        assert set(p) == {"status", "digest", "total", "completed"}
        assert p["status"] == "pulling " + digest[7:19]
        assert p["digest"] == digest and p["total"] == total
        assert all(isinstance(p[k], int) for k in ("total", "completed"))
    assert done == sorted(done) and 0 < done[0] and done[-1] == total
    # lines are delivered as they are produced, not buffered to the end
    t_progress = [t for t, _ in lines[1:1 + steps]]
    assert t_progress[-1] - t_progress[0] >= (steps - 1) * delay * 0.8
    assert lines[-1][0] - lines[0][0] >= (steps - 1) * delay * 0.8
    # afterwards the model is installed, with the size the pull announced
    tag = [t for t in f.json("GET", "/api/tags")["models"] if t["name"] == "llama3.2:1b"]
    assert tag and tag[0]["size"] == total
    assert ts(tag[0]["modified_at"]) > datetime.now(timezone.utc).replace(year=2025)


def test_pull_is_not_installed_before_it_finishes(start):
    f = start("--models", "", "--pull-steps", "3", "--pull-delay-ms", "300")
    gen = f.stream("/api/pull", {"model": "gemma3:4b"})
    _, first = next(gen)
    assert first == {"status": "pulling manifest"}
    assert f.names() == []                    # other requests are served meanwhile
    assert [ev["status"] for _, ev in gen][-1] == "success"
    assert f.names() == ["gemma3:4b"]


def test_pull_without_stream(fx):
    t0 = time.monotonic()
    status, hdrs, body = fx.request("POST", "/api/pull", {"model": "phi3:3.8b", "stream": False})
    assert status == 200
    assert hdrs["Content-Type"].startswith("application/json")
    assert hdrs["Transfer-Encoding"] is None
    assert json.loads(body) == {"status": "success"}
    assert time.monotonic() - t0 >= 0.02          # (4-1) steps x 10 ms
    assert "phi3:3.8b" in fx.names()


def test_pull_legacy_name_and_default_tag(fx):
    assert fx.json("POST", "/api/pull", {"name": "tinyllama", "stream": False}) == \
        {"status": "success"}
    assert "tinyllama:latest" in fx.names()
    # pulling an installed model again succeeds and keeps one entry
    assert fx.json("POST", "/api/pull", {"model": "tinyllama:latest", "stream": False}) == \
        {"status": "success"}
    assert fx.names().count("tinyllama:latest") == 1


def test_pull_missing_model_streaming(fx):
    events = [ev for _, ev in fx.stream("/api/pull", {"model": "missing-model:1b"})]
    assert events == [{"status": "pulling manifest"},
                      {"error": "pull model manifest: file does not exist"}]
    assert "missing-model:1b" not in fx.names()


def test_pull_missing_model_without_stream(fx):
    assert fx.json("POST", "/api/pull", {"model": "missing-model:1b", "stream": False},
                   expect=500) == {"error": "pull model manifest: file does not exist"}
    assert "missing-model:1b" not in fx.names()


def test_pull_bad_requests(fx):
    assert fx.json("POST", "/api/pull", {}, expect=400) == {"error": "invalid model name"}
    assert fx.json("POST", "/api/pull", {"model": "a b"}, expect=400) == \
        {"error": "invalid model name"}
    assert fx.json("POST", "/api/pull", {"model": "x:1b", "stream": "yes"}, expect=400)["error"]
    status, _, body = fx.request("POST", "/api/pull", raw=b'{"model": ')
    assert status == 400 and "error" in json.loads(body)


def test_client_disconnect_cancels_pull(start):
    f = start("--models", "", "--pull-steps", "20", "--pull-delay-ms", "50")
    body = json.dumps({"model": "dropped:1b"}).encode()
    with socket.create_connection((f.host, f.port), timeout=5) as s:
        s.sendall(b"POST /api/pull HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        got = b""
        while b"pulling manifest" not in got:
            data = s.recv(4096)
            assert data, got
            got += data
    time.sleep(20 * 0.05 + 0.5)
    assert f.names() == []


# ------------------------------------------------------------------------ delete

def test_delete(fx):
    status, hdrs, body = fx.request("DELETE", "/api/delete", {"model": "llama3.2:1b"})
    assert (status, body) == (200, b"")
    assert hdrs["Content-Length"] == "0"
    assert fx.names() == ["qwen3:8b"]
    assert fx.json("DELETE", "/api/delete", {"model": "llama3.2:1b"}, expect=404) == \
        {"error": "model 'llama3.2:1b' not found"}
    assert fx.request("DELETE", "/api/delete", {"name": "qwen3:8b"})[0] == 200
    assert fx.names() == []


def test_delete_bad_requests(fx):
    assert fx.json("DELETE", "/api/delete", {}, expect=400) == {"error": 'name "" is invalid'}
    status, _, body = fx.request("DELETE", "/api/delete", raw=b"not json")
    assert status == 400 and "error" in json.loads(body)
    assert fx.request("POST", "/api/delete", {"model": "qwen3:8b"})[0] == 405
    assert "qwen3:8b" in fx.names()


# ------------------------------------------------------------------------ load / unload

def test_generate_load_and_unload(fx):
    assert fx.names("/api/ps") == ["qwen3:8b"]
    r = fx.json("POST", "/api/generate", {"model": "llama3.2:1b"})
    assert set(r) == {"model", "created_at", "response", "done", "done_reason"}
    assert (r["model"], r["response"], r["done"], r["done_reason"]) == \
        ("llama3.2:1b", "", True, "load")
    ts(r["created_at"])
    assert sorted(fx.names("/api/ps")) == ["llama3.2:1b", "qwen3:8b"]
    loaded = [m for m in fx.json("GET", "/api/ps")["models"] if m["name"] == "llama3.2:1b"][0]
    left = (ts(loaded["expires_at"]) - datetime.now(timezone.utc)).total_seconds()
    assert 240 < left <= 300                   # the default keep_alive, 5m

    r = fx.json("POST", "/api/generate", {"model": "llama3.2:1b", "keep_alive": 0})
    assert (r["response"], r["done"], r["done_reason"]) == ("", True, "unload")
    assert fx.names("/api/ps") == ["qwen3:8b"]
    r = fx.json("POST", "/api/generate", {"model": "qwen3:8b", "keep_alive": "0s"})
    assert r["done_reason"] == "unload"
    assert fx.names("/api/ps") == []


def test_chat_load_and_unload(fx):
    r = fx.json("POST", "/api/chat", {"model": "llama3.2:1b", "messages": []})
    assert r == {"model": "llama3.2:1b", "created_at": r["created_at"],
                 "message": {"role": "assistant", "content": ""},
                 "done_reason": "load", "done": True}
    assert "llama3.2:1b" in fx.names("/api/ps")
    r = fx.json("POST", "/api/chat", {"model": "llama3.2:1b", "messages": [], "keep_alive": 0})
    assert (r["message"], r["done_reason"]) == ({"role": "assistant", "content": ""}, "unload")
    assert "llama3.2:1b" not in fx.names("/api/ps")


def test_keep_alive_values(fx):
    def left(keep_alive):
        fx.json("POST", "/api/generate", {"model": "llama3.2:1b", "keep_alive": keep_alive})
        m = [m for m in fx.json("GET", "/api/ps")["models"] if m["name"] == "llama3.2:1b"][0]
        return (ts(m["expires_at"]) - datetime.now(timezone.utc)).total_seconds()

    assert 590 < left("10m") <= 600
    assert 50 < left(60) <= 60
    assert left(-1) > 100 * 365 * 86400
    assert left("-1m") > 100 * 365 * 86400
    for bad in ("forever", "10", True, [1]):
        assert fx.json("POST", "/api/generate", {"model": "llama3.2:1b", "keep_alive": bad},
                       expect=400)["error"]


def test_expired_models_leave_ps(fx):
    fx.json("POST", "/api/generate", {"model": "llama3.2:1b", "keep_alive": 1})
    assert "llama3.2:1b" in fx.names("/api/ps")
    time.sleep(1.2)
    assert "llama3.2:1b" not in fx.names("/api/ps")


def test_generate_and_chat_errors(fx):
    for path in ("/api/generate", "/api/chat"):
        assert fx.json("POST", path, {"model": "nope:1b"}, expect=404) == \
            {"error": "model 'nope:1b' not found"}
        assert fx.json("POST", path, {}, expect=400) == {"error": "model is required"}
        assert fx.request("POST", path, raw=b"{")[0] == 400
    assert fx.names("/api/ps") == ["qwen3:8b"]


def test_generate_with_prompt(fx):
    r = fx.json("POST", "/api/generate", {"model": "llama3.2:1b", "prompt": "hi", "stream": False})
    assert r["done"] is True and r["done_reason"] == "stop" and r["response"]
    for k in ("total_duration", "load_duration", "prompt_eval_count", "eval_count"):
        assert isinstance(r[k], int)
    assert "llama3.2:1b" in fx.names("/api/ps")
    events = [ev for _, ev in fx.stream("/api/generate", {"model": "qwen3:8b", "prompt": "hi"})]
    assert all(ev["done"] is False for ev in events[:-1]) and events[-1]["done"] is True
    assert "".join(ev["response"] for ev in events) == r["response"].replace("llama3.2:1b",
                                                                            "qwen3:8b")
    chat = [ev for _, ev in fx.stream("/api/chat", {
        "model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}]})]
    assert chat[-1]["done"] is True and chat[-1]["done_reason"] == "stop"
    assert all(ev["message"]["role"] == "assistant" for ev in chat)


# ------------------------------------------------------------------------ OpenAI, routing

def test_openai_models(fx):
    r = fx.json("GET", "/v1/models")
    assert r["object"] == "list"
    tags = {t["name"]: t for t in fx.json("GET", "/api/tags")["models"]}
    assert sorted(d["id"] for d in r["data"]) == sorted(tags)
    for d in r["data"]:
        assert set(d) == {"id", "object", "created", "owned_by"}
        assert d["object"] == "model" and d["owned_by"] == "library"
        assert d["created"] == int(ts(tags[d["id"]]["modified_at"]).timestamp())
    one = fx.json("GET", "/v1/models/qwen3:8b")
    assert one in r["data"]
    err = fx.json("GET", "/v1/models/nope", expect=404)["error"]
    assert isinstance(err["message"], str) and err["type"] == "not_found_error"


def test_openai_models_needs_the_flag(start):
    f = start()
    assert f.request("GET", "/v1/models")[0] == 404


def test_unknown_path_and_wrong_method(fx):
    status, hdrs, body = fx.request("GET", "/api/nope")
    assert (status, body) == (404, b"404 page not found")
    assert fx.request("POST", "/nope", {"model": "x"})[0] == 404
    assert fx.request("GET", "/api/pull")[0] == 405
    assert fx.request("POST", "/api/tags", {})[0] == 405


def test_keep_alive_connection_reuse_and_chunked_request_body(fx):
    c = fx.conn()
    try:
        for _ in range(3):
            c.request("GET", "/api/tags")
            r = c.getresponse()
            assert r.status == 200 and json.loads(r.read())["models"]
        c.request("POST", "/api/show", body=iter([b'{"model":', b' "qwen3:8b"}']),
                  encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["details"]["format"] == "gguf"
    finally:
        c.close()


def test_concurrent_requests_during_pulls(fx):
    results = []

    def pull(name):
        results.append([ev for _, ev in fx.stream("/api/pull", {"model": name})][-1])

    threads = [threading.Thread(target=pull, args=("m%d:1b" % i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in range(5):
        assert fx.request("GET", "/api/ps")[0] == 200
    for t in threads:
        t.join(10)
    assert results == [{"status": "success"}] * 4
    assert {"m0:1b", "m1:1b", "m2:1b", "m3:1b"} <= set(fx.names())


# ------------------------------------------------------------------------ inference

def sse_events(fx, body):
    """The data: payloads of a /v1/chat/completions stream, as they arrive."""
    c = fx.conn()
    try:
        c.request("POST", "/v1/chat/completions", body=json.dumps(body))
        r = c.getresponse()
        assert r.status == 200, (r.status, r.read())
        assert r.headers["Content-Type"] == "text/event-stream"
        out = []
        while True:
            line = r.readline()
            if not line:
                break
            if line == b"\n":
                continue
            assert line.startswith(b"data: ") and line.endswith(b"\n"), line
            assert r.readline() == b"\n"  # one blank line ends each event
            payload = line[6:-1]
            out.append(payload if payload == b"[DONE]" else json.loads(payload))
        return out
    finally:
        c.close()


def test_openai_chat_completions(fx):
    msgs = [{"role": "user", "content": "hello there"}]
    r = fx.json("POST", "/v1/chat/completions", {"model": "qwen3:8b", "messages": msgs})
    assert r["object"] == "chat.completion" and r["model"] == "qwen3:8b"
    assert r["id"].startswith("chatcmpl-") and isinstance(r["created"], int)
    (choice,) = r["choices"]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    text = choice["message"]["content"]
    assert "qwen3:8b" in text
    u = r["usage"]
    assert u["prompt_tokens"] == 2 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]

    events = sse_events(fx, {"model": "qwen3:8b", "messages": msgs, "stream": True,
                             "stream_options": {"include_usage": True}})
    assert events[-1] == b"[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"]
               for c in chunks)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == u
    deltas = [c["choices"][0] for c in chunks[:-1]]
    assert all(d["finish_reason"] is None for d in deltas[:-1])
    assert deltas[-1]["finish_reason"] == "stop" and deltas[-1]["delta"]["content"] == ""
    assert "".join(d["delta"]["content"] for d in deltas) == text
    # without include_usage: no usage chunk
    plain = sse_events(fx, {"model": "qwen3:8b", "messages": msgs, "stream": True})
    assert plain[-1] == b"[DONE]" and all("usage" not in c for c in plain[:-1])


def test_openai_chat_completions_errors_and_limits(fx, start):
    err = fx.json("POST", "/v1/chat/completions", {"messages": [{"role": "user"}]},
                  expect=400)["error"]
    assert err == {"message": "model is required", "type": "invalid_request_error",
                   "param": None, "code": None}
    err = fx.json("POST", "/v1/chat/completions", {"model": "nope:1b", "messages": [
        {"role": "user", "content": "x"}]}, expect=404)["error"]
    assert err["type"] == "not_found_error" and "try pulling it first" in err["message"]
    assert fx.json("POST", "/v1/chat/completions", {"model": "qwen3:8b", "messages": []},
                   expect=400)["error"]["type"] == "invalid_request_error"
    r = fx.json("POST", "/v1/chat/completions", {"model": "qwen3:8b", "max_tokens": 2,
                                                 "messages": [{"role": "user", "content": "x"}]})
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 2
    # without --openai the path does not exist
    assert start().request("POST", "/v1/chat/completions", {"model": "qwen3:8b"})[0] == 404


def test_options_num_predict(fx):
    r = fx.json("POST", "/api/generate", {"model": "qwen3:8b", "prompt": "hi", "stream": False,
                                          "options": {"num_predict": 3, "temperature": 0.1}})
    assert r["done_reason"] == "length" and r["eval_count"] == 3
    chat = [ev for _, ev in fx.stream("/api/chat", {
        "model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_predict": 2}})]
    assert len(chat) == 3 and chat[-1]["done_reason"] == "length"


def test_token_delay_streams_token_by_token(start):
    f = start("--models", "qwen3:8b", "--token-delay-ms", "300", "--openai")
    c = f.conn()
    try:
        c.request("POST", "/api/generate", body=json.dumps({"model": "qwen3:8b", "prompt": "hi"}))
        r = c.getresponse()
        first = json.loads(r.readline())
        assert first["done"] is False and first["response"] == "This"
        # the next token is not there yet: it comes after the delay
        assert select.select([c.sock], [], [], 0)[0] == []
        rest = [json.loads(line) for line in iter(r.readline, b"")]
        assert rest[-1]["done"] is True
    finally:
        c.close()


@pytest.mark.parametrize("path,body", [
    ("/api/generate", {"model": "qwen3:8b", "prompt": "hi"}),
    ("/api/chat", {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": "qwen3:8b", "stream": True,
                              "messages": [{"role": "user", "content": "hi"}]}),
])
def test_failures_on_demand(start, path, body):
    # mid-stream: two tokens, then the connection drops without the final chunk and
    # without the chunked body's end ("0\r\n\r\n"): read what a client gets, raw
    f = start("--models", "qwen3:8b", "--fail-after-tokens", "2", "--openai")
    payload = json.dumps(body).encode()
    with socket.create_connection((f.host, f.port), timeout=10) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(payload), payload))
        raw = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            raw += data
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert b"Transfer-Encoding: chunked" in head
    assert not chunked.endswith(b"0\r\n\r\n")
    lines = [ln for ln in chunked.split(b"\n") if ln.startswith((b"{", b"data: "))]
    assert len(lines) == 2, lines
    assert all(b"[DONE]" not in ln and b'"done":true' not in ln.replace(b" ", b"")
               for ln in lines)
    # by status: what Ollama answers when its runner fails
    g = start("--models", "qwen3:8b", "--fail-status", "500", "--openai")
    status, _, data = g.request("POST", path, body)
    assert status == 500
    err = json.loads(data)["error"]
    msg = err["message"] if isinstance(err, dict) else err
    assert "llama runner process has terminated" in msg
    if path.startswith("/v1/"):
        assert err["type"] == "api_error"


def test_control_changes_delays_and_failures_at_run_time(start):
    f = start("--models", "qwen3:8b", "--openai")
    body = {"model": "qwen3:8b", "prompt": "hi"}
    assert f.request("POST", "/api/generate", body)[0] == 200
    # a failure on demand, then none again
    assert f.json("POST", "/_fixture/config", {"fail_status": 503})["fail_status"] == 503
    status, _, data = f.request("POST", "/api/generate", body)
    assert status == 503 and "runner" in json.loads(data)["error"]
    f.json("POST", "/_fixture/config", {"fail_status": 0, "token_delay_ms": 300})
    c = f.conn()
    try:
        c.request("POST", "/api/generate", body=json.dumps(body))
        r = c.getresponse()
        assert json.loads(r.readline())["done"] is False
        # the delay is in force now: the next token is not there yet
        assert select.select([c.sock], [], [], 0)[0] == []
    finally:
        c.close()
    assert f.request("POST", "/_fixture/config", {"fail_status": "x"})[0] == 400


def test_control_installs_models_and_records_requests(start):
    f = start("--models", "qwen3:8b", "--token-delay-ms", "100")
    assert f.request("POST", "/api/generate", {"model": "phi4:14b", "prompt": "x"})[0] == 404
    assert f.json("POST", "/_fixture/install", {"model": "phi4:14b"})["installed"] == "phi4:14b"
    assert "phi4:14b" in f.names()
    body = {"model": "phi4:14b", "prompt": "x", "options": {"temperature": 0.25}}
    assert f.request("POST", "/api/generate", body)[0] == 200
    # a client that goes away mid-stream is seen going
    c = f.conn()
    c.request("POST", "/api/chat", body=json.dumps(
        {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}]}))
    r = c.getresponse()
    r.readline()
    c.close()
    wait_for = time.monotonic() + 10
    while True:
        reqs = f.json("GET", "/_fixture/requests")["requests"]
        if reqs[-1]["outcome"] != "open" or time.monotonic() > wait_for:
            break
        time.sleep(0.05)
    assert [r["path"] for r in reqs] == ["/api/generate", "/api/generate", "/api/chat"]
    assert json.loads(reqs[1]["body"])["options"] == {"temperature": 0.25}
    assert reqs[1]["outcome"] == "complete"
    assert reqs[2]["outcome"] == "client gone" and reqs[2]["tokens_sent"] < 5
