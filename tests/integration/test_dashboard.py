"""The dashboard is a file: /cluster/dashboard.html, served by a static web server
(python3 -m http.server) pointed at a real mount, loaded in headless Chromium from
Debian; the test reads the DOM the page built and saves a screenshot. Real agents, a
real Ollama fixture for the models column, a real browser."""
import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import ROOT, Agent, Mount, free_port, make_config, wait_until, write_token
from test_models import Ollama
from test_tasks import submit, wait_task

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed "
                                "(tools/install-deps.sh installs it)")
ARTIFACTS = Path(os.environ.get("CLUSTERFS_ARTIFACTS", ROOT / "build" / "test-artifacts"))


class Rows(HTMLParser):
    """The data-* attributes of the dashboard's node and task rows."""

    def __init__(self):
        super().__init__()
        self.nodes, self.tasks, self.body = {}, {}, {}
        self.cell = None
        self.text = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "tr" and a.get("class") == "node":
            self.nodes[a["data-node"]] = a
            self.cell = ("node", a["data-node"])
            self.text[self.cell] = ""
        elif tag == "tr" and a.get("class") == "task":
            self.tasks[a["data-task"]] = a
            self.cell = None
        elif tag == "tr":
            self.cell = None

    def handle_data(self, data):
        if self.cell:
            self.text[self.cell] += data


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    token = write_token(tmp / "token", "s3cret-" + os.urandom(8).hex())
    ags = [Agent(tmp, f"n{i}", token) for i in (1, 2)]
    ollama = Ollama(tmp, ["qwen3:8b", "llama3.2:1b"], loaded=["qwen3:8b"])
    cfg = make_config(tmp / "hosts.json", ags, token, probe={"interval_s": 1})
    d = json.loads(cfg.read_text())
    d["hosts"]["n1"]["services"]["ollama"] = {"port": ollama.port}
    cfg.write_text(json.dumps(d))
    m = Mount(tmp, cfg, state=tmp / "state")
    port = free_port()
    log = open(tmp / "http.log", "wb")
    srv = subprocess.Popen(["/usr/bin/python3", "-m", "http.server", "-b", "127.0.0.1",
                            "-d", str(m.mnt), str(port)], stdout=log, stderr=log)
    wait_until(lambda: b"Serving HTTP" in (tmp / "http.log").read_bytes(), what="http.server")
    yield {"m": m, "url": f"http://127.0.0.1:{port}/dashboard.html", "agents": ags,
           "tmp": tmp}
    srv.terminate()
    srv.wait()
    log.close()
    m.stop()
    ollama.stop()
    for a in ags:
        a.stop()


def chromium(tmp, url, *extra):
    """Headless Chromium that reaches nothing but loopback: no background services, every
    other host unresolvable, any proxy lookup dead."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp}/chromium", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--disable-default-apps", "--no-pings", "--disable-domain-reliability",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
            "--virtual-time-budget=8000", *extra, url]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def dom(served):
    rows = Rows()
    rows.feed(chromium(served["tmp"], served["url"], "--dump-dom"))
    assert rows.body.get("data-loaded") == "1", rows.body
    return rows


def test_page_is_self_contained(served):
    m = served["m"]
    page = m.read("dashboard.html")
    assert oct(os.stat(m.path("dashboard.html")).st_mode & 0o777) == "0o444"
    assert page.startswith("<!DOCTYPE html>")
    # inline CSS and JS, nothing fetched from elsewhere: the only URL is SVG's namespace
    assert not re.search(r"<script[^>]+src|<link|@import|url\(", page)
    assert re.findall(r"https?://[^\s'\"]+", page) == ["http://www.w3.org/2000/svg"]
    fetched = set(re.findall(r"load\('[^']+', '([^']+)'", page))
    assert fetched == {"topology.json", "stats", "recent-tasks.json", "alerts", "events"}
    for f in fetched:
        assert m.path(f).exists()


def test_recent_tasks_file(served):
    m = served["m"]
    submit(m, "listed", {"cmd": "true", "env": {"KEY": "secret-value"}})
    wait_task(m, "listed")
    doc = m.json("recent-tasks.json")
    assert doc["recent"][0]["id"] == "listed"
    assert doc["recent"][0]["state"] == "succeeded"
    assert set(doc["recent"][0]) == {"id", "state", "node", "exit_code", "parent",
                                     "submitted_at", "started_at", "finished_at"}
    assert "secret-value" not in m.read("recent-tasks.json")
    assert oct(os.stat(m.path("recent-tasks.json")).st_mode & 0o777) == "0o444"


def test_dashboard_in_a_browser(served):
    m = served["m"]
    os.listdir(m.path("models"))  # asks the model servers: the page shows what is known
    rows = dom(served)
    assert int(rows.body["data-refreshes"]) >= 2  # it refreshes itself
    assert set(rows.nodes) == {"n1", "n2"}
    assert {n["data-status"] for n in rows.nodes.values()} == {"healthy"}
    assert "qwen3:8b" in rows.text[("node", "n1")]
    assert "qwen3:8b" not in rows.text[("node", "n2")]

    # a task submitted now appears with its state and node
    submit(m, "dash-task", {"cmd": "true", "node": "n2"})
    assert wait_task(m, "dash-task") == "succeeded 0\n"
    rows = dom(served)
    assert rows.tasks["dash-task"]["data-state"] == "succeeded"

    # a stopped agent turns its row to unreachable
    served["agents"][1].stop()
    wait_until(lambda: m.json("nodes", "n2", "health")["reachable"] is False,
               what="n2 unreachable")
    rows = dom(served)
    assert rows.nodes["n2"]["data-status"] == "unreachable"
    assert rows.nodes["n1"]["data-status"] == "healthy"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    chromium(served["tmp"], served["url"], "--window-size=1280,900", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nscreenshot: {shot} ({shot.stat().st_size} bytes)")
