"""The checkpoint ledger: served by an agent with --ledger, cached and queued by clusterfs."""
import json
import os
import sys
from pathlib import Path
import signal
import time
import urllib.request

import pytest

from conftest import Agent, Mount, make_config, wait_until


def ledger_cfg(tmp_path, agents_, token, ledger_agent):
    cfg = make_config(tmp_path / "hosts.json", agents_, token,
                      probe={"timeout_ms": 1000, "max_age_ms": 200, "interval_s": 1})
    d = json.loads(cfg.read_text())
    d["hosts"][ledger_agent.name]["services"]["ledger"] = {"port": ledger_agent.port,
                                                           "path": "/api/ledger"}
    cfg.write_text(json.dumps(d))
    return cfg


def record(m, entry):
    with open(m.path("ledger", "record"), "w") as f:
        f.write(json.dumps(entry))


def agent_entries(agent, token):
    req = urllib.request.Request(f"http://127.0.0.1:{agent.port}/api/ledger",
                                 headers={"Authorization": "Bearer " + token.read_text().strip()})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())["entries"]


@pytest.fixture
def trainer(tmp_path, token):
    a = Agent(tmp_path, "trainer", token, extra=("--ledger", str(tmp_path / "ledger.db")))
    yield a
    a.stop()


def test_record_best_summary(tmp_path, token, trainer, mount):
    m = mount(ledger_cfg(tmp_path, [trainer], token, trainer))
    assert m.json("ledger", "source")["state"] in ("live", "cached")
    for step, loss, acc in [(100, 0.9, 0.5), (200, 0.61, 0.7), (300, 0.65, 0.74)]:
        record(m, {"step": step, "metrics": {"val_loss": loss, "accuracy": acc},
                   "path": f"/ckpt/{step}"})
    wait_until(lambda: len(agent_entries(trainer, token)) == 3, what="delivery")
    wait_until(lambda: os.listdir(m.path("ledger", "entries")) == ["100", "200", "300"] and
               m.json("ledger", "summary")["pending"] == 0, what="entries")
    e = m.json("ledger", "entries", "200")
    assert e["path"] == "/ckpt/200" and e["metrics"]["val_loss"] == 0.61
    assert e["created_at"].endswith("Z")
    assert sorted(os.listdir(m.path("ledger", "best"))) == ["accuracy", "val_loss"]
    assert m.json("ledger", "best", "val_loss")["step"] == 200
    assert m.json("ledger", "best", "accuracy")["step"] == 300
    s = m.json("ledger", "summary")
    assert s["count"] == 3 and s["first_step"] == 100 and s["last_step"] == 300
    assert s["best"]["val_loss"] == {"step": 200, "value": 0.61, "direction": "lower"}
    assert s["best"]["accuracy"]["direction"] == "higher"
    src = m.json("ledger", "source")
    assert src["state"] == "live" and src["host"] == "trainer"
    # a bad record fails close() and is not kept
    with pytest.raises(OSError):
        record(m, {"step": "x", "metrics": {}, "path": ""})
    assert len(agent_entries(trainer, token)) == 3


def test_outage_cached_and_exactly_once(tmp_path, token, mount):
    trainer = Agent(tmp_path, "trainer", token, extra=("--ledger", str(tmp_path / "ledger.db")))
    try:
        cfg = ledger_cfg(tmp_path, [trainer], token, trainer)
        state = tmp_path / "state"
        m = mount(cfg, state=state)
        record(m, {"step": 1, "metrics": {"val_loss": 1.0}, "path": "/c/1"})
        wait_until(lambda: len(agent_entries(trainer, token)) == 1, what="first delivery")
        wait_until(lambda: m.json("ledger", "summary")["count"] == 1, what="copy")
        trainer.stop()
        time.sleep(0.3)
        # the host is away: cached answers, with their age, within the timeout
        t = time.monotonic()
        assert m.json("ledger", "entries", "1")["path"] == "/c/1"
        assert time.monotonic() - t < 2.0
        src = wait_until(lambda: (s := m.json("ledger", "source"))["state"] == "cached" and s,
                         what="cached state")
        assert src["age_s"] > 0 and src["error"]
        # a record written now is kept durably and shown as pending
        record(m, {"step": 2, "metrics": {"val_loss": 0.5}, "path": "/c/2"})
        e = m.json("ledger", "entries", "2")
        assert e["pending"] is True
        assert m.json("ledger", "best", "val_loss")["step"] == 2
        # even across a restart of clusterfs itself
        m.stop()
        m2 = mount(cfg, state=state)
        assert m2.json("ledger", "source")["pending_records"] == 1
        trainer2 = Agent(tmp_path, "trainer", token, port=trainer.port,
                         extra=("--ledger", str(tmp_path / "ledger.db")))
        try:
            wait_until(lambda: len(agent_entries(trainer2, token)) == 2, 15,
                       what="delivery after the outage")
            time.sleep(2)  # a second delivery would have happened by now
            steps = [e["step"] for e in agent_entries(trainer2, token)]
            assert steps == [1, 2]
            wait_until(lambda: m2.json("ledger", "source")["state"] == "live" and
                       m2.json("ledger", "source")["pending_records"] == 0, what="live again")
            assert "pending" not in m2.json("ledger", "entries", "2")
        finally:
            trainer2.stop()
    finally:
        trainer.stop()


def test_record_waits_through_404_until_the_ledger_is_served(tmp_path, token, mount):
    """An agent without --ledger answers 404 to records: they must wait, not be dropped,
    and arrive once the agent serves the ledger."""
    plain = Agent(tmp_path, "trainer", token)
    port = plain.port
    try:
        m = mount(ledger_cfg(tmp_path, [plain], token, plain))
        record(m, {"step": 7, "metrics": {"val_loss": 0.5}, "path": "/ckpt/7"})
        time.sleep(3)  # several delivery attempts, each answered 404
        assert m.json("ledger", "source")["pending_records"] == 1
        assert "refused" not in m.json("ledger", "source")
    finally:
        plain.stop()
    served = Agent(tmp_path, "trainer", token, port=port,
                   extra=("--ledger", str(tmp_path / "ledger.db")))
    try:
        wait_until(lambda: [e["step"] for e in agent_entries(served, token)] == [7], 20,
                   what="the record delivered")
        wait_until(lambda: m.json("ledger", "source")["pending_records"] == 0, 10,
                   what="the outbox empty")
    finally:
        served.stop()


def test_record_refused_is_dropped_with_the_reason(tmp_path, token, trainer, mount):
    """A record the ledger refuses for what it is (409: the step exists) is dropped, with
    the reason in alerts and in ledger/source."""
    m = mount(ledger_cfg(tmp_path, [trainer], token, trainer))
    record(m, {"step": 1, "metrics": {"val_loss": 0.5}, "path": "/ckpt/1"})
    wait_until(lambda: len(agent_entries(trainer, token)) == 1, what="delivery")
    record(m, {"step": 1, "metrics": {"val_loss": 0.4}, "path": "/ckpt/1b"})
    wait_until(lambda: "refused" in m.json("ledger", "source"), 10, what="the refusal")
    assert "recorded already" in m.json("ledger", "source")["refused"]
    assert m.json("ledger", "source")["pending_records"] == 0
    assert "recorded already" in m.read("alerts")


def test_metric_names_from_the_ledger_become_valid_file_names(tmp_path, token, mount):
    """A ledger host is remote: metric names "", ".", "..", "a/b", "50%" or with an ESC
    byte never become such entries of ledger/best/; encodable ones are encoded reversibly
    (like model names), the rest are left out with an alert."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_hostile import Hostile
    ledger = Hostile("ledgernames")
    try:
        cfg = make_config(tmp_path / "hosts.json", [ledger], token,
                          probe={"timeout_ms": 1000, "interval_s": 1})
        d = json.loads(cfg.read_text())
        d["hosts"]["hostile"]["services"]["ledger"] = {"port": ledger.port,
                                                       "path": "/api/ledger"}
        cfg.write_text(json.dumps(d))
        m = mount(cfg)
        names = wait_until(lambda: sorted(os.listdir(m.path("ledger", "best"))), 10,
                           what="ledger/best listed")
        assert names == ["50%25", "a%2Fb", "ok"], names
        assert m.json("ledger", "best", "a%2Fb")["best_by"] == "a/b"
        assert m.json("ledger", "best", "50%25")["best_by"] == "50%"
        assert m.json("ledger", "best", "ok")["best_by"] == "ok"
        alerts = m.read("alerts")
        assert "left out of ledger/best/" in alerts and '"esc\\x1bname"' in alerts, alerts
        assert "\x1b" not in alerts
    finally:
        ledger.stop()
