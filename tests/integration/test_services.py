"""Generic REST-as-files services from the config's "services"."""
import errno
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import make_config, wait_until


class Training(BaseHTTPRequestHandler):
    """A stand-in for a training host's status and control API (a third-party service)."""
    state = {"state": "running", "step": 1200}
    posts = []

    def log_message(self, *a):
        pass

    def _send(self, code, doc):
        body = (json.dumps(doc) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/api/training/status":
            self._send(200, self.state)
        elif self.path == "/api/training/slow":
            time.sleep(5)
            self._send(200, {})
        else:
            self._send(404, {"error": "no such thing"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/api/training/control":
            return self._send(404, {"error": "no such thing"})
        try:
            cmd = json.loads(body)
        except ValueError:
            return self._send(400, {"error": "control wants JSON like {\"action\": \"pause\"}"})
        if cmd.get("action") not in ("pause", "resume", "stop"):
            return self._send(422, {"error": f"unknown action {cmd.get('action')!r}"})
        Training.posts.append(cmd)
        Training.state["state"] = {"pause": "paused", "resume": "running",
                                   "stop": "stopped"}[cmd["action"]]
        self._send(200, {"ok": True, "state": Training.state["state"]})


@pytest.fixture
def training():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Training)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    Training.posts = []
    Training.state = {"state": "running", "step": 1200}
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_service_get_post_and_errors(tmp_path, token, agents, mount, training):
    ags = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ags, token, probe={"timeout_ms": 1000},
                      services={"training": {"host": "n1", "port": training, "files": {
                          "status": {"get": "/api/training/status"},
                          "slow": {"get": "/api/training/slow"},
                          "control": {"post": "/api/training/control"}}}})
    m = mount(cfg)
    assert sorted(os.listdir(m.path("services"))) == ["training"]
    assert sorted(os.listdir(m.path("services", "training"))) == ["control", "slow", "status"]
    assert m.json("services", "training", "status") == {"state": "running", "step": 1200}
    assert os.stat(m.path("services", "training", "status")).st_mode & 0o777 == 0o444
    assert os.stat(m.path("services", "training", "control")).st_mode & 0o777 == 0o644
    # a write and close POSTs
    with open(m.path("services", "training", "control"), "w") as f:
        f.write('{"action": "pause"}')
    assert Training.posts == [{"action": "pause"}]
    assert m.json("services", "training", "status")["state"] == "paused"
    # a non-2xx answer fails close() and says why in the alerts
    with pytest.raises(OSError) as e:
        with open(m.path("services", "training", "control"), "w") as f:
            f.write('{"action": "dance"}')
    assert e.value.errno == errno.EINVAL
    alerts = m.read("alerts")
    assert "service training/control: HTTP 422: unknown action 'dance'" in alerts
    assert "HTTP 422" in m.log_path.read_text()
    # a read-only file refuses writes
    with pytest.raises(PermissionError):
        open(m.path("services", "training", "status"), "w")
    # a slow endpoint fails at the deadline, not later
    t = time.monotonic()
    with pytest.raises(OSError) as e:
        m.read("services", "training", "slow")
    assert e.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - t < 1.0 + 1.0
    # and the rest of the mount did not wait meanwhile: success clears the alert
    with open(m.path("services", "training", "control"), "w") as f:
        f.write('{"action": "resume"}')
    assert "training/control" not in m.read("alerts")


def test_services_reload_live(tmp_path, token, agents, mount, training):
    ags = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ags, token)
    m = mount(cfg)
    assert os.listdir(m.path("services")) == []
    make_config(cfg, ags, token, services={"oracle": {"host": "n1", "port": training, "files": {
        "status": {"get": "/api/training/status"}}}})
    wait_until(lambda: os.listdir(m.path("services")) == ["oracle"], what="service added")
    assert m.json("services", "oracle", "status")["step"] == 1200


def test_service_host_down(tmp_path, token, agents, mount):
    ags = agents(1)
    from conftest import free_port
    cfg = make_config(tmp_path / "hosts.json", ags, token, services={
        "gone": {"host": "n1", "port": free_port(), "files": {"status": {"get": "/x"}}}})
    m = mount(cfg)
    with pytest.raises(OSError) as e:
        m.read("services", "gone", "status")
    assert e.value.errno == errno.ECONNREFUSED
    assert "service gone/status" in m.read("alerts")
