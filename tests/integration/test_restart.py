"""Nothing forgotten on restart: events and drains are kept in the store (real daemon,
real agents, real sqlite), and the events beyond events.keep are dropped."""
import sqlite3
import subprocess

from conftest import DAEMON_BIN, make_config, wait_until


def test_events_and_drain_survive_restart(tmp_path, token, agents, mount):
    ags = agents(2)
    cfg = make_config(tmp_path / "hosts.json", ags, token, events={"keep": 100})
    state = tmp_path / "state"
    m = mount(cfg, state=state)
    wait_until(lambda: m.read("nodes", "n1", "status") == "healthy\n", what="n1 healthy")
    m.path("nodes", "n2", "ctl").write_text("drain\n")
    assert m.read("nodes", "n2", "status") == "draining\n"
    before = m.read("events")
    assert "drain: takes no new work" in before
    m.stop()

    # the store holds them (written by the loop, or at the latest on unmount)
    db = sqlite3.connect(state / "clusterfs.db")
    assert db.execute("PRAGMA user_version").fetchone() == (5,)
    assert db.execute("SELECT node FROM drains").fetchall() == [("n2",)]
    kept = "".join(r[0] for r in db.execute("SELECT line FROM events ORDER BY seq"))
    db.close()
    assert kept == before

    m2 = mount(cfg, state=state)
    after = m2.read("events")
    # the file starts with what was there before the restart, then the new start
    assert after.startswith(before)
    rest = after[len(before):]
    assert "n2 drain: kept from before the restart" in rest
    assert "started with 2 nodes" in rest
    wait_until(lambda: m2.read("nodes", "n2", "status") == "draining\n", what="n2 draining")
    wait_until(lambda: m2.read("nodes", "n1", "status") == "healthy\n", what="n1 healthy")

    # resume is kept too
    m2.path("nodes", "n2", "ctl").write_text("resume\n")
    m2.stop()
    db = sqlite3.connect(state / "clusterfs.db")
    assert db.execute("SELECT count(*) FROM drains").fetchone() == (0,)
    db.close()
    m3 = mount(cfg, state=state)
    wait_until(lambda: m3.read("nodes", "n2", "status") == "healthy\n", what="n2 healthy")
    assert "resume: takes work again" in m3.read("events")


def test_events_retention(tmp_path, token, agents, mount):
    """events.keep bounds the store: after many events only the newest are kept, and the
    events file after a restart starts with the oldest of them."""
    ags = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ags, token, events={"keep": 100})
    state = tmp_path / "state"
    m = mount(cfg, state=state)
    ctl = m.path("nodes", "n1", "ctl")
    for i in range(80):  # 160 events: drain and resume
        ctl.write_text("drain\n")
        ctl.write_text("resume\n")
    total = m.read("events").splitlines(keepends=True)
    assert len(total) > 160
    m.stop()
    db = sqlite3.connect(state / "clusterfs.db")
    kept = [r[0] for r in db.execute("SELECT line FROM events ORDER BY seq")]
    db.close()
    assert len(kept) == 100
    # the newest: the last resume is among them, the first drains are not
    assert "resume: takes work again\n" in "".join(kept[-3:])
    assert total[0] not in kept
    m2 = mount(cfg, state=state)
    lines = m2.read("events").splitlines(keepends=True)
    assert lines[:100] == kept


def test_events_keep_is_checked(tmp_path, token, agents, mount):
    ags = agents(1)
    cfg = make_config(tmp_path / "hosts.json", ags, token, events={"keep": 5})
    r = subprocess.run([str(DAEMON_BIN), "-f", "-c", str(cfg), "-s", str(tmp_path / "s"),
                        str(tmp_path)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 5
    assert "events.keep must be an integer from 100 to 10000000, not 5" in r.stderr
