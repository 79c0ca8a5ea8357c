"""Integration tests for the agent's checkpoint ledger (clusterfs-agent --ledger FILE):
each case starts its own agent on a free port with its own token, state directory and
ledger file, talks HTTP to it, and always stops it.

The binary is $CLUSTERFS_BUILD/tools/agent/clusterfs-agent (default: the
repository's build/); these tests build nothing themselves.
"""

import os
import re
import sqlite3
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import AGENT_BIN, AGENT_TOKEN, Agent, free_port

AGENT = str(AGENT_BIN)
TOKEN = AGENT_TOKEN
NO_LEDGER = "this agent serves no ledger (start it with --ledger FILE)"



class LedgerAgent(Agent):
    def request(self, method, path, body=None, token=TOKEN):
        """One request on a fresh connection: (status, parsed JSON body)."""
        status, _, doc = super().request(method, path, body, token)
        return status, doc

    def record(self, entry):
        return self.request("POST", "/api/ledger/record", entry)


@pytest.fixture
def tmpdir_path():
    with tempfile.TemporaryDirectory(prefix="clusterfs-ledger-test-") as d:
        yield d


@pytest.fixture
def ledger_file(tmpdir_path):
    return os.path.join(tmpdir_path, "ledger.db")


@pytest.fixture
def start_agent(tmpdir_path, agent_pool):
    """Starts agents (no --name, one state directory) with the shared harness."""
    token_file = os.path.join(tmpdir_path, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(token_file, 0o600)

    def start(extra=()):
        return agent_pool(tmpdir_path, LedgerAgent, name=None, token_file=token_file,
                          extra=extra, state=os.path.join(tmpdir_path, "state"))

    return start


@pytest.fixture
def agent(start_agent, ledger_file):
    return start_agent(["--ledger", ledger_file])


def entry(step, path=None, **metrics):
    return {"step": step, "metrics": metrics, "path": path or "/ckpt/step-%d" % step}


SAMPLE = [
    entry(300, val_loss=0.52, accuracy=0.81),
    entry(100, val_loss=0.90, accuracy=0.60),
    entry(200, val_loss=0.48, accuracy=0.79),
    entry(400, val_loss=0.55, accuracy=0.84, train_ppl=7.5),
]


def record_sample(agent):
    for e in SAMPLE:
        status, doc = agent.record(e)
        assert status == 201, doc


def rows(ledger_file, sql):
    db = sqlite3.connect("file:%s?mode=ro" % ledger_file, uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


# --- recording and reading -----------------------------------------------------------

def test_record_returns_the_entry_with_created_at(agent):
    before = time.time()
    status, doc = agent.record({"step": 5, "metrics": {"val_loss": 1.25}, "path": "/c/5",
                                "note": "warm-up", "tags": ["a", "b"]})
    assert status == 201
    e = doc["entry"]
    assert e["step"] == 5 and e["metrics"] == {"val_loss": 1.25} and e["path"] == "/c/5"
    assert e["note"] == "warm-up" and e["tags"] == ["a", "b"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["created_at"])
    stamp = time.mktime(time.strptime(e["created_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before - 2 <= stamp <= time.time() + 2
    assert "record_id" not in e


def test_given_created_at_is_kept(agent):
    for step, created in ((1, "2025-01-02T03:04:05Z"), (2, 1735787045.5)):
        status, doc = agent.record({**entry(step, loss=1.0), "created_at": created})
        assert status == 201
        assert doc["entry"]["created_at"] == created
        assert agent.request("GET", "/api/ledger/%d" % step)[1]["created_at"] == created


def test_list_is_sorted_by_step(agent):
    record_sample(agent)
    status, doc = agent.request("GET", "/api/ledger")
    assert status == 200
    assert [e["step"] for e in doc["entries"]] == [100, 200, 300, 400]
    assert doc["entries"][0]["metrics"] == {"val_loss": 0.90, "accuracy": 0.60}
    assert all("record_id" not in e and "created_at" in e for e in doc["entries"])


def test_empty_ledger(agent):
    assert agent.request("GET", "/api/ledger") == (200, {"entries": []})
    assert agent.request("GET", "/api/ledger/summary") == (
        200, {"count": 0, "first_step": None, "last_step": None, "best": {}})


def test_get_by_step(agent):
    record_sample(agent)
    status, doc = agent.request("GET", "/api/ledger/200")
    assert status == 200
    assert doc["step"] == 200 and doc["path"] == "/ckpt/step-200"
    assert doc["metrics"] == {"val_loss": 0.48, "accuracy": 0.79}


def test_get_missing_step_is_404(agent):
    record_sample(agent)
    assert agent.request("GET", "/api/ledger/250") == (
        404, {"error": "no checkpoint at step 250"})


@pytest.mark.parametrize("step", ["abc", "1.5", "-1", "12x", "99999999999999999999999"])
def test_get_non_integer_step_is_400(agent, step):
    status, doc = agent.request("GET", "/api/ledger/" + step)
    assert status == 400
    assert "step" in doc["error"]


def test_metric_values_come_back_exactly(agent):
    values = {"a": 0.1 + 0.2, "b": 1e-300, "c": 123456789.123456789, "d": 7, "e": -0.0,
              "f": 2.0, "g": 0.61}
    status, doc = agent.record({"step": 1, "metrics": values, "path": "/c"})
    assert status == 201
    raw_ok = doc["entry"]["metrics"]
    got = agent.request("GET", "/api/ledger/1")[1]["metrics"]
    for m in (raw_ok, got):
        assert m == values
        assert isinstance(m["d"], int) and isinstance(m["f"], float)


# --- best and summary ----------------------------------------------------------------

def test_best_loss_is_lowest(agent):
    record_sample(agent)
    status, doc = agent.request("GET", "/api/ledger/best?metric=val_loss")
    assert status == 200
    assert doc["step"] == 200
    assert doc["best_by"] == "val_loss" and doc["direction"] == "lower is better"
    assert doc["path"] == "/ckpt/step-200" and doc["metrics"]["val_loss"] == 0.48


def test_best_accuracy_is_highest(agent):
    record_sample(agent)
    status, doc = agent.request("GET", "/api/ledger/best?metric=accuracy")
    assert status == 200
    assert doc["step"] == 400
    assert doc["best_by"] == "accuracy" and doc["direction"] == "higher is better"


def test_best_direction_override(agent):
    record_sample(agent)
    status, doc = agent.request("GET", "/api/ledger/best?metric=accuracy&direction=lower")
    assert (status, doc["step"], doc["direction"]) == (200, 100, "lower is better")
    status, doc = agent.request("GET", "/api/ledger/best?metric=val_loss&direction=higher")
    assert (status, doc["step"], doc["direction"]) == (200, 100, "higher is better")


def test_best_default_direction_by_name(agent):
    agent.record(entry(1, train_ppl=9.0, test_error=0.2, perplexity_x=3.0, score=1.0))
    agent.record(entry(2, train_ppl=8.0, test_error=0.3, perplexity_x=4.0, score=2.0))
    for metric, step in (("train_ppl", 2), ("test_error", 1), ("perplexity_x", 1),
                         ("score", 2)):
        status, doc = agent.request("GET", "/api/ledger/best?metric=" + metric)
        assert (status, doc["step"]) == (200, step), metric


def test_best_ties_go_to_the_earliest_step(agent):
    for step in (30, 10, 20):
        agent.record(entry(step, val_loss=0.5))
    assert agent.request("GET", "/api/ledger/best?metric=val_loss")[1]["step"] == 10


def test_best_errors(agent):
    record_sample(agent)
    status, doc = agent.request("GET", "/api/ledger/best")
    assert status == 400 and "metric" in doc["error"]
    status, doc = agent.request("GET", "/api/ledger/best?metric=")
    assert status == 400 and "metric" in doc["error"]
    status, doc = agent.request("GET", "/api/ledger/best?metric=val_loss&direction=up")
    assert status == 400 and "direction" in doc["error"]
    assert agent.request("GET", "/api/ledger/best?metric=bleu") == (
        404, {"error": "no checkpoint has metric bleu"})


def test_summary(agent):
    record_sample(agent)
    status, doc = agent.request("GET", "/api/ledger/summary")
    assert status == 200
    assert doc == {
        "count": 4, "first_step": 100, "last_step": 400,
        "best": {
            "val_loss": {"step": 200, "value": 0.48, "direction": "lower"},
            "accuracy": {"step": 400, "value": 0.84, "direction": "higher"},
            "train_ppl": {"step": 400, "value": 7.5, "direction": "lower"},
        },
    }


# --- exactly once, conflicts, validation ---------------------------------------------

def test_duplicate_record_id_is_one_row(agent, ledger_file):
    first = {**entry(700, val_loss=0.3), "record_id": "host-a-1-deadbeef"}
    status, doc = agent.record(first)
    assert status == 201 and "duplicate" not in doc
    stored = doc["entry"]
    # a redelivery, even with a changed body, answers with what was stored
    again = {**entry(700, val_loss=0.9), "record_id": "host-a-1-deadbeef"}
    for body in (first, again):
        status, doc = agent.record(body)
        assert status == 200
        assert doc == {"entry": stored, "duplicate": True}
    assert [e["step"] for e in agent.request("GET", "/api/ledger")[1]["entries"]] == [700]
    assert rows(ledger_file, "SELECT count(*) FROM entries") == [(1,)]


def test_concurrent_redeliveries_store_once(agent, ledger_file):
    body = {**entry(9, val_loss=0.1), "record_id": "race-1"}
    results = []

    def post():
        results.append(agent.record(body)[0])

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * 7 + [201]
    assert rows(ledger_file, "SELECT count(*) FROM entries") == [(1,)]


def test_same_step_other_record_is_409(agent):
    assert agent.record({**entry(800, val_loss=0.3), "record_id": "r-1"})[0] == 201
    conflict = {"error": "step 800 is recorded already"}
    assert agent.record({**entry(800, val_loss=0.2), "record_id": "r-2"}) == (409, conflict)
    assert agent.record(entry(800, val_loss=0.2)) == (409, conflict)
    assert agent.request("GET", "/api/ledger/800")[1]["metrics"] == {"val_loss": 0.3}


def test_same_step_without_record_ids_is_409(agent):
    assert agent.record(entry(5, loss=1.0))[0] == 201
    assert agent.record(entry(5, loss=1.0)) == (409, {"error": "step 5 is recorded already"})


GOOD = {"step": 1, "metrics": {"val_loss": 0.5}, "path": "/c/1"}


@pytest.mark.parametrize("change, field", [
    ({"step": None}, "step"),
    ({"step": -1}, "step"),
    ({"step": 1.5}, "step"),
    ({"step": "1"}, "step"),
    ({"step": True}, "step"),
    ({"metrics": None}, "metrics"),
    ({"metrics": {}}, "metrics"),
    ({"metrics": [0.5]}, "metrics"),
    ({"metrics": {"val_loss": "0.5"}}, "val_loss"),
    ({"metrics": {"val_loss": True}}, "val_loss"),
    ({"metrics": {"": 1}}, "metrics"),
    ({"path": None}, "path"),
    ({"path": ""}, "path"),
    ({"path": 3}, "path"),
    ({"created_at": None}, "created_at"),
    ({"created_at": {}}, "created_at"),
    ({"record_id": 5}, "record_id"),
    ({"record_id": ""}, "record_id"),
    ({"record_id": "x" * 129}, "record_id"),
])
def test_invalid_entry_is_400_naming_the_field(agent, change, field):
    body = dict(GOOD)
    for k, v in change.items():
        if v is None and k != "created_at":
            del body[k]
        else:
            body[k] = v
    status, doc = agent.record(body)
    assert status == 400, doc
    assert '"%s"' % field in doc["error"], doc
    assert agent.request("GET", "/api/ledger") == (200, {"entries": []})


def test_record_id_of_128_characters_is_accepted(agent):
    assert agent.record({**GOOD, "record_id": "é" * 128})[0] == 201


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b"42",
                                  b'{"step": 1, "step": 2}', b'{"step": 1} trailing'])
def test_malformed_body_is_400(agent, body):
    status, doc = agent.request("POST", "/api/ledger/record", body)
    assert status == 400 and doc["error"]


def test_oversized_entry_is_413(agent):
    status, doc = agent.record({**GOOD, "blob": "x" * (64 * 1024)})
    assert status == 413 and "limit" in doc["error"]


def test_wrong_methods(agent):
    status, doc = agent.request("GET", "/api/ledger/record")
    assert status == 405
    status, doc = agent.request("POST", "/api/ledger", GOOD)
    assert status == 405


# --- access, configuration, durability -----------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/api/ledger"), ("GET", "/api/ledger/1"), ("GET", "/api/ledger/best?metric=x"),
    ("GET", "/api/ledger/summary"), ("POST", "/api/ledger/record"),
])
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_without_the_token_is_401(agent, ledger_file, method, path, token):
    body = GOOD if method == "POST" else None
    status, doc = agent.request(method, path, body, token=token)
    assert status == 401
    assert rows(ledger_file, "SELECT count(*) FROM entries") == [(0,)]


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/ledger"), ("GET", "/api/ledger/1"), ("GET", "/api/ledger/best?metric=x"),
    ("GET", "/api/ledger/summary"), ("POST", "/api/ledger/record"),
])
def test_without_ledger_option_is_404(start_agent, method, path):
    agent = start_agent()
    body = GOOD if method == "POST" else None
    assert agent.request(method, path, body) == (404, {"error": NO_LEDGER})


def test_persists_across_restart(start_agent, ledger_file):
    agent = start_agent(["--ledger", ledger_file])
    record_sample(agent)
    assert agent.record({**entry(500, val_loss=0.4), "record_id": "r-500"})[0] == 201
    before = agent.request("GET", "/api/ledger")[1]
    agent.stop()
    assert agent.proc.returncode == 0

    agent = start_agent(["--ledger", ledger_file])
    assert agent.request("GET", "/api/ledger")[1] == before
    assert agent.request("GET", "/api/ledger/best?metric=val_loss")[1]["step"] == 500
    # the record_id is remembered too: a redelivery after the restart is no second row
    status, doc = agent.record({**entry(500, val_loss=0.4), "record_id": "r-500"})
    assert status == 200 and doc["duplicate"] is True
    assert agent.request("GET", "/api/ledger/summary")[1]["count"] == 5


def test_recorded_entry_survives_kill_9(start_agent, ledger_file):
    agent = start_agent(["--ledger", ledger_file])
    assert agent.record(entry(42, val_loss=0.42))[0] == 201
    agent.kill9()
    agent.proc.wait()
    agent = start_agent(["--ledger", ledger_file])
    assert agent.request("GET", "/api/ledger/42")[1]["metrics"] == {"val_loss": 0.42}


def test_file_is_wal_with_schema_version(agent, ledger_file):
    agent.record(GOOD)
    assert rows(ledger_file, "PRAGMA journal_mode") == [("wal",)]
    assert rows(ledger_file, "PRAGMA user_version") == [(1,)]


def test_file_that_is_not_a_ledger_is_refused(tmpdir_path, start_agent):
    other = os.path.join(tmpdir_path, "other.db")
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    token_file = os.path.join(tmpdir_path, "token")
    proc = subprocess.run([AGENT, "--listen", "127.0.0.1:%d" % free_port(), "--token-file",
                           token_file, "--state-dir", os.path.join(tmpdir_path, "state"),
                           "--ledger", other],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1
    assert "not a checkpoint ledger" in proc.stderr


def test_help_mentions_ledger():
    proc = subprocess.run([AGENT, "--help"], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0
    assert "--ledger FILE" in proc.stdout
    assert "serve the checkpoint ledger kept in FILE (sqlite; created if missing)" in proc.stdout
