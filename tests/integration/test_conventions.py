"""What Debian users expect of a daemon: man pages without groff warnings, /cluster/metrics
that promtool accepts, journald priority prefixes under systemd, and mounting through
mount.fuse3 (what mount(8) and fstab run) with -o config=,state_dir=."""
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import BUILD, DAEMON_BIN, AGENT_BIN, Mount, make_config, mounted, wait_until, free_port

MAN_PAGES = ("clusterfs.8", "clusterfs-agent.8", "clusterfs-tree.7", "hosts.json.5")


def need(tool):
    path = shutil.which(tool)
    assert path, f"{tool} is missing: run tools/install-deps.sh"
    return path


def test_man_pages_have_no_warnings():
    need("scdoc")
    need("man")
    for page in MAN_PAGES:
        f = BUILD / "doc" / page
        assert f.exists(), f"{f} was not built (meson -Dman=enabled needs scdoc)"
        r = subprocess.run(["man", "--warnings", "-l", str(f)], capture_output=True,
                           text=True, timeout=30, env={**os.environ, "MANWIDTH": "80"})
        assert r.returncode == 0 and r.stderr == "", (page, r.stderr)
        r = subprocess.run(["groff", "-ww", "-man", "-z", str(f)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0 and r.stderr == "", (page, r.stderr)
    # the fstab line, the env override and every README tree file are in the man pages
    text = rendered("clusterfs.8")
    assert "none /cluster fuse.clusterfs config=/etc/clusterfs/hosts.json,_netdev 0 0" in text
    assert "CLUSTERFS_DEFAULT_AGENT" in text
    tree = rendered("clusterfs-tree.7")
    for name in ("README", "config", "stats", "alerts", "events", "metrics", "topology.json",
                 "topology.dot", "status", "health", "info", "address", "role", "tier",
                 "capabilities", "reliability", "ctl", "models/ctl", "tasks/new/", "spec",
                 "node", "exit_code", "stdout", "stderr", "wait", "queued/", "models/MODEL/nodes",
                 "loaded", "ledger/entries/STEP", "ledger/best/METRIC", "ledger/summary",
                 "ledger/record", "ledger/source", "services/NAME/FILE", "1777", "0400", "0666"):
        assert name in tree, name


def rendered(page):
    r = subprocess.run(["man", "-l", str(BUILD / "doc" / page)], capture_output=True,
                       text=True, timeout=30, env={**os.environ, "MANWIDTH": "250"})
    return re.sub(".\b", "", r.stdout)


def test_metrics_pass_promtool(tmp_path, token, agents, mount):
    promtool = need("promtool")
    (a,) = agents(1)
    m = mount(make_config(tmp_path / "hosts.json", [a], token))
    wait_until(lambda: "clusterfs_node_cpu_cores{" in m.read("metrics"), what="metrics")
    m.path("tasks", "new", "p1.json").write_text('{"cmd": "true"}')
    assert m.read("tasks", "p1", "wait") == "succeeded 0\n"
    text = m.read("metrics")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), text
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    helps = re.findall(r"^# HELP (\S+) ", text, re.M)
    assert [f for f, _ in families] == helps
    for name, _ in families:
        assert name.startswith("clusterfs_") and not re.search(r"_(ms|percent|mb)$", name)
    # the probe latency is a histogram: cumulative buckets up to +Inf, which is the count
    assert ("clusterfs_node_probe_latency_seconds", "histogram") in families
    buckets = [int(v) for v in re.findall(
        r'^clusterfs_node_probe_latency_seconds_bucket\{node="n1",le="[^"]+"\} (\d+)$',
        text, re.M)]
    count = re.search(r'^clusterfs_node_probe_latency_seconds_count\{node="n1"\} (\d+)$',
                      text, re.M)
    assert len(buckets) == 11 and buckets == sorted(buckets) and buckets[-1] >= 1
    assert count and int(count.group(1)) == buckets[-1]
    assert 'clusterfs_tasks{state="succeeded"} 1\n' in text
    assert 'clusterfs_tasks{state="queued"} 0\n' in text
    assert 'clusterfs_node_tasks{node="n1",state="succeeded"} 1\n' in text
    mem = re.search(r'^clusterfs_node_memory_total_bytes\{node="n1"\} (\d+)$', text, re.M)
    assert mem and int(mem.group(1)) > 1 << 20


def journal_env(path):
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_journal_priority_prefixes(tmp_path, token):
    # the agent: its stderr is "the journal"
    log = tmp_path / "agent.log"
    log.write_bytes(b"")
    port = free_port()
    with open(log, "ab") as f:
        agent = subprocess.Popen(
            [str(AGENT_BIN), "--listen", f"127.0.0.1:{port}", "--token-file", str(token),
             "--state-dir", str(tmp_path / "agent-state"), "--name", "n1"],
            stdout=f, stderr=f, env={**os.environ, **journal_env(log)})
    try:
        wait_until(lambda: "listening on " in log.read_text(), what="agent listening")
        class A:
            name = "n1"
        A.port = port
        cfg = make_config(tmp_path / "hosts.json", [A], token)
        d = tmp_path / "m"
        d.mkdir()
        (d / "clusterfs.log").write_bytes(b"")  # Mount appends to it: its stderr
        m = Mount(d, cfg, env=journal_env(d / "clusterfs.log"))
        try:
            cfg.write_text("{ not json")  # an error: rejected reload
            wait_until(lambda: "config reload rejected" in (d / "clusterfs.log").read_text(),
                       what="the rejected reload in the log")
        finally:
            m.stop()
    finally:
        agent.terminate()
        agent.wait(10)
    for path in (log, d / "clusterfs.log"):
        lines = path.read_text().splitlines()
        assert lines, path
        for line in lines:
            assert re.match(r"<[0-7]>\S", line), (path, line)
        # no timestamp: journald adds its own
        assert not any(re.match(r"<\d>\d{4}-\d\d-\d\dT", l) for l in lines)
    daemon = (d / "clusterfs.log").read_text()
    assert re.search(r"^<3>config reload rejected", daemon, re.M), daemon
    assert re.search(r"^<6>mounted ", daemon, re.M), daemon
    assert token.read_text().strip() not in daemon + log.read_text()
    assert re.search(r"^<6>.*listening on ", log.read_text(), re.M)


def test_journal_startup_error(tmp_path):
    """An error before the daemon's log starts (here: an invalid config) is an error too."""
    (tmp_path / "mnt").mkdir()
    bad = tmp_path / "hosts.json"
    bad.write_text('{"hosts": {"a": {"host": "x", "port": 99999}}}')
    err = tmp_path / "stderr"
    err.write_bytes(b"")
    with open(err, "ab") as f:
        r = subprocess.run([str(DAEMON_BIN), "-f", "-c", str(bad), "-s", str(tmp_path / "s"),
                            str(tmp_path / "mnt")], stdout=f, stderr=f, timeout=20,
                           env={**os.environ, **journal_env(err)})
    assert r.returncode == 5
    assert re.match(r"<3>clusterfs: invalid config: .*port", err.read_text()), err.read_text()


def test_no_prefixes_when_stderr_is_not_the_journal(tmp_path, token):
    """A JOURNAL_STREAM inherited from a parent whose stderr was the journal does not
    apply to a process whose stderr is a file."""
    d = tmp_path / "m"
    d.mkdir()
    m = Mount(d, None, env={"JOURNAL_STREAM": "1:1", "CLUSTERFS_TOKEN_FILE": str(token),
                            "CLUSTERFS_DEFAULT_AGENT": f"127.0.0.1:{free_port()}"})
    m.stop()
    lines = (d / "clusterfs.log").read_text().splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\dT\S+ clusterfs\[\d+\] \w+: ", l)
                         for l in lines), lines


def daemon_pids(mnt):
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"clusterfs") and str(mnt).encode() in argv:
                pids.append(int(p.name))
    return pids


def test_mount_fuse3_helper(tmp_path, token, agents):
    """mount -t fuse.clusterfs runs mount.fuse3, which runs "clusterfs none MNT -o OPTS"
    from PATH; _netdev is mount(8)'s, config= and state_dir= are ours, ro is FUSE's."""
    helper = need("mount.fuse3")
    (a,) = agents(1)
    cfg = make_config(tmp_path / "hosts.json", [a], token)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "clusterfs").symlink_to(DAEMON_BIN)
    mnt = Path(tempfile.mkdtemp(prefix="clusterfs-mnt-"))
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    try:
        r = subprocess.run([helper, "none", str(mnt), "-t", "clusterfs", "-o",
                            f"config={cfg},state_dir={tmp_path / 'state'},_netdev,ro"],
                           capture_output=True, text=True, timeout=30, env=env)
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mnt)
        pids = daemon_pids(mnt)
        assert len(pids) == 1
        health = mnt / "nodes" / "n1" / "health"
        wait_until(lambda: json.loads(health.read_text())["reachable"], what="health")
        opts = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", str(mnt)],
                              capture_output=True, text=True).stdout
        assert opts.startswith("fuse.clusterfs ") and "ro," in opts, opts
        try:
            (mnt / "tasks" / "new" / "x.json").write_text("{}")
            raise AssertionError("a ro mount accepted a write")
        except OSError as e:
            assert e.errno == 30  # EROFS
        assert (tmp_path / "state").is_dir()  # state_dir= was used
        r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in pids),
                   what="the daemon to exit after umount")
    finally:
        if mounted(mnt):  # a dead mount too, which os.path.ismount() misses
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        for p in daemon_pids(mnt):
            os.kill(p, 15)
        mnt.rmdir()


def test_source_argument_and_o_options(tmp_path, token, agents):
    """clusterfs SOURCE MOUNTPOINT -o config=,state_dir= by hand, in the foreground."""
    (a,) = agents(1)
    cfg = make_config(tmp_path / "hosts.json", [a], token)
    m = Mount(tmp_path, None, state=tmp_path / "unused",
              extra=["-o", f"config={cfg},state_dir={tmp_path / 'st'}", "none"])
    try:
        assert os.listdir(m.path("nodes")) == ["n1"]
        assert (tmp_path / "st").is_dir()
    finally:
        m.stop()
