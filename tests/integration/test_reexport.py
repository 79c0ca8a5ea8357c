"""The mount re-exported: nfs-ganesha (VFS FSAL, NFSv4) read with libnfs's nfs-cat and
nfs-ls, Samba read with smbclient and libsmbclient, over a tree with 3 agents, tasks in
every state, models, a ledger and a REST service, while probes run every second.

Every read is bounded by a timeout; a failure names the file, the client, the round and
what came back (a hang, a short document, an error)."""
import ctypes
import json
import os
import re
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, Agent, Mount, free_port, make_config, wait_until, write_token
from reexport import Ganesha, LibNfs, Samba, SmbReader, smb_name

OLLAMA = ROOT / "tests" / "fixtures" / "ollama_fixture.py"
PROBE_TIMEOUT_S = 1.0
READ_BOUND_S = PROBE_TIMEOUT_S + 0.5
ROUNDS = 20


def submit(m, name, spec):
    with open(m.path("tasks", "new", f"{name}.json"), "w") as f:
        f.write(json.dumps(spec))


def status(m, name):
    return m.read("tasks", name, "status").strip()


def cancel_and_wait(m, name):
    with open(m.path("tasks", name, "ctl"), "w") as f:
        f.write("cancel\n")
    wait_until(lambda: status(m, name) == "cancelled", 15, what=f"{name} cancelled")


class Cluster:
    pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster()
    tmp = c.tmp = tmp_path_factory.mktemp("reexport")
    token = write_token(tmp / "token", "s3cret-" + os.urandom(8).hex())
    started = []  # (stop function) in start order; stopped in reverse
    try:
        # a generic REST service (a training host's status API): its own process, as
        # libsmbclient's binding holds this one's GIL while it reads
        www = tmp / "www" / "api" / "training"
        www.mkdir(parents=True)
        (www / "status").write_text('{"state": "running", "step": 1200}\n')
        rest_port = free_port()
        rest = subprocess.Popen(["/usr/bin/python3", "-m", "http.server", "--bind",
                                 "127.0.0.1", "--directory", str(tmp / "www"),
                                 str(rest_port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        started.append(lambda: (rest.terminate(), rest.wait(10)))
        ollama = subprocess.Popen(
            ["/usr/bin/python3", str(OLLAMA), "--port", "0", "--models",
             "qwen3:8b,myorg/phi4:14b", "--loaded", "qwen3:8b"],
            stdout=subprocess.PIPE, text=True)
        started.append(lambda: (ollama.terminate(), ollama.wait(10)))
        line = ollama.stdout.readline()
        assert "listening on" in line, line
        ollama_port = int(line.rsplit(":", 1)[1])
        ags = []
        for name in ("n1", "n2", "n3"):
            extra = ("--ledger", str(tmp / "ledger.db")) if name == "n1" else ()
            a = Agent(tmp, name, token, extra=extra)
            started.append(a.stop)
            ags.append(a)
        cfg = c.cfg = make_config(
            tmp / "hosts.json", ags, token,
            probe={"interval_s": 1, "timeout_ms": int(PROBE_TIMEOUT_S * 1000)},
            services={"training": {"host": "n2", "port": rest_port, "files": {
                "status": {"get": "/api/training/status"}}}})
        d = json.loads(cfg.read_text())
        d["hosts"]["n1"]["services"]["ledger"] = {"port": ags[0].port, "path": "/api/ledger"}
        d["hosts"]["n2"]["services"]["ollama"] = {"port": ollama_port}
        cfg.write_text(json.dumps(d))
        # a mountpoint that outlives a restart of clusterfs (Mount.stop removes its own)
        c.mnt = Path(tempfile.mkdtemp(prefix="clusterfs-reexport-"))
        c.state = tmp / "m" / "state"
        (tmp / "m").mkdir()
        c.m = Mount(tmp / "m", cfg, state=c.state, mnt=c.mnt)
        started.append(lambda: c.m.stop())
        m = c.m
        for a in ags:
            wait_until(lambda: m.json("nodes", a.name, "health")["reachable"], what="probe")

        # tasks in every state: succeeded, failed, cancelled, running, queued (drained node)
        submit(m, "ok", {"cmd": "echo hello", "node": "n1"})
        submit(m, "bad", {"cmd": "echo oops >&2; exit 3", "node": "n2"})
        submit(m, "gone", {"cmd": "sleep 300", "node": "n2"})
        submit(m, "busy", {"cmd": "sleep 600", "node": "n1"})
        # a task's supervisor outlives its agent by design: end it before the agents stop
        started.append(lambda: cancel_and_wait(c.m, "busy"))
        with open(m.path("nodes", "n3", "ctl"), "w") as f:
            f.write("drain\n")
        submit(m, "later", {"cmd": "true", "node": "n3"})
        wait_until(lambda: status(m, "gone") == "running", 30, what="gone running")
        with open(m.path("tasks", "gone", "ctl"), "w") as f:
            f.write("cancel\n")
        wait_until(lambda: status(m, "busy") == "running", 30, what="busy running")
        for name, want in (("ok", "succeeded"), ("bad", "failed"), ("gone", "cancelled")):
            wait_until(lambda: status(m, name) == want, 30, what=f"{name} {want}")
        assert status(m, "later") == "queued"

        # ledger entries, delivered to the ledger host
        for step, loss in ((100, 0.9), (200, 0.6)):
            with open(m.path("ledger", "record"), "w") as f:
                f.write(json.dumps({"step": step, "metrics": {"val_loss": loss},
                                    "path": f"/ckpt/{step}"}))
        wait_until(lambda: os.listdir(m.path("ledger", "entries")) == ["100", "200"] and
                   m.json("ledger", "summary")["pending"] == 0, 20, what="ledger entries")
        assert sorted(os.listdir(m.path("models"))) == ["myorg%2Fphi4:14b", "qwen3:8b"]

        c.nfs = Ganesha(tmp / "ganesha", c.mnt)
        started.append(lambda: c.nfs.stop())
        c.smb = Samba(tmp / "samba", c.mnt)
        started.append(lambda: c.smb.stop())
        yield c
    finally:
        for stop in reversed(started):
            try:
                stop()
            except Exception as e:  # keep stopping the rest
                print("teardown:", e)


# ---- what a file should look like ----

def regular_files(m):
    """Every regular file of the tree, relative paths, but the `wait` files of unfinished
    tasks (a read of those blocks until the task ends, by design) and backup/state.db
    (its copy is made at open, so a stat cannot know its size: it is for cp on the
    control plane, README "Backup")."""
    out = []
    for d, dirs, files in os.walk(m.mnt):
        for f in files:
            p = os.path.join(d, f)
            if not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            rel = os.path.relpath(p, m.mnt)
            if rel == "backup/state.db":
                continue
            if f == "wait" and rel.startswith("tasks/") and \
                    Path(d, "status").read_text().strip() in ("queued", "running"):
                continue
            out.append(rel)
    return sorted(out)


def direct_read(m, rel):
    r = subprocess.run(["cat", str(m.path(rel))], capture_output=True, timeout=5)
    return r.stdout if r.returncode == 0 else None


def series(text):
    return {ln.split("{")[0].split(" ")[0] for ln in text.splitlines()
            if ln and not ln.startswith("#")}


def shape(data):
    """What must match between a direct read and a re-exported one: JSON keys, the
    metric names of the Prometheus text, or (one-value and text files) a final newline."""
    try:
        doc = json.loads(data)
        return ("json", sorted(doc) if isinstance(doc, dict) else type(doc).__name__)
    except ValueError:
        pass
    text = data.decode(errors="replace")
    if "# TYPE " in text:
        return ("metrics", sorted(series(text)), text.endswith("\n"))
    return ("text", bool(data), data.endswith(b"\n") if data else None)


def check(rel, want, got):
    """None when GOT is complete and valid beside WANT, else what is wrong with it."""
    have = shape(got)
    if have == want:
        return None
    if want[0] == have[0] == "text" and have[1] and (not want[1] or have[2] == want[2]):
        return None  # a text file that was empty and is not now (alerts, stderr)
    if want[0] == "json" and have[0] != "json":
        try:
            json.loads(got)
        except ValueError as e:
            return f"not JSON ({e}; {len(got)} bytes, ends {got[-30:]!r})"
    return f"expected {want}, got {have} ({len(got)} bytes)"


def nfs_read(c, rel):
    t = time.monotonic()
    try:
        r = subprocess.run(["nfs-cat", c.nfs.url(rel)], capture_output=True,
                           timeout=READ_BOUND_S)
    except subprocess.TimeoutExpired as e:
        return None, f"hung: no end of file within {READ_BOUND_S}s " \
                     f"({len(e.stdout or b'')} bytes so far)", time.monotonic() - t
    el = time.monotonic() - t
    if r.returncode != 0:
        return None, "error: " + r.stderr.decode(errors="replace").strip()[-200:], el
    return r.stdout, None, el


def read_all(c, files, wants, reader, client, rounds):
    """Reads every file ROUNDS times through READER; returns the failures, one line each,
    and the slowest read."""
    failures, slowest = [], (0.0, None)
    for rnd in range(rounds):
        for rel in files:
            data, err, el = reader(rel)
            slowest = max(slowest, (el, rel), key=lambda x: x[0])
            if err is None:
                err = check(rel, wants[rel], data)
            if err is None and el > READ_BOUND_S:
                err = f"slow: {el:.2f}s > {READ_BOUND_S}s"
            if err:
                failures.append(f"{client} round {rnd + 1}: {rel}: {err}")
    return failures, slowest


def failed_file(line):
    return line.split(": ", 1)[1].split(": ", 1)[0]


def report(failures):
    files = sorted({failed_file(f) for f in failures})
    return (f"{len(failures)} failed reads over {len(files)} files: {files}\n"
            + "\n".join(failures[:60]))


def judge(failures):
    """Every read complete and valid: documents hold still between changes of their data
    (nothing in them moves with the clock alone), so the size a client saw is the size
    it reads."""
    assert not failures, report(failures)


# ---- the tests ----

def test_listing_matches_through_nfs_and_smb(cluster):
    c = cluster
    want = sorted(os.listdir(c.mnt))
    r = subprocess.run(["nfs-ls", c.nfs.url()], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert sorted(ln.split()[-1] for ln in r.stdout.splitlines()) == want
    r = subprocess.run(["nfs-ls", c.nfs.url("tasks")], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0, r.stderr
    assert {"ok", "bad", "gone", "busy", "later", "new", "done", "failed"} <= \
        {ln.split()[-1] for ln in r.stdout.splitlines()}
    # numeric owners as the mount has them (Only_Numeric_Owners): a task's files are
    # its submitter's
    line = [ln for ln in r.stdout.splitlines() if ln.split()[-1] == "ok"][0]
    assert line.split()[2] == str(os.stat(c.m.path("tasks", "ok")).st_uid)
    r = c.smb.smbclient("ls nodes\\*")
    assert r.returncode == 0, r.stderr
    assert {"n1", "n2", "n3"} <= set(r.stdout.decode().split())


@pytest.fixture(scope="module")
def tree(cluster):
    """Every regular file and the shape a direct read of it has."""
    files = regular_files(cluster.m)
    # the tree the issue asks for is all there
    for rel in ("stats", "metrics", "topology.json", "nodes/n1/health", "tasks/ok/info",
                "tasks/bad/stderr", "tasks/busy/stdout", "tasks/later/info",
                "tasks/gone/info", "models/qwen3:8b/info", "nodes/n2/models/qwen3:8b",
                "ledger/entries/200", "ledger/summary", "services/training/status"):
        assert rel in files, rel
    wants = {}
    for rel in files:
        data = direct_read(cluster.m, rel)
        assert data is not None, f"direct read of {rel} failed"
        wants[rel] = shape(data)
    return files, wants


def probed(c, before):
    """The probes ran meanwhile (interval_s 1): health documents changed under the reads."""
    return c.m.json("nodes", "n1", "health")["checked_at"] != before


def test_every_file_complete_through_nfs(cluster, tree):
    c = cluster
    files, wants = tree
    before = c.m.json("nodes", "n1", "health")["checked_at"]
    failures, slowest = read_all(c, files, wants, lambda r: nfs_read(c, r), "nfs-cat",
                                 ROUNDS)
    assert probed(c, before), "no probe ran"
    print(f"{len(files)} files x {ROUNDS} rounds; slowest nfs-cat {slowest[0]:.3f}s "
          f"({slowest[1]})")
    judge(failures)


def test_every_file_complete_through_smb(cluster, tree):
    c = cluster
    files, wants = tree
    before = c.m.json("nodes", "n1", "health")["checked_at"]
    smb = SmbReader(c.smb, READ_BOUND_S)
    try:
        # the worker's start-up and session setup are not a read
        assert smb.read("README")[1] is None
        failures, slowest = read_all(c, files, wants, smb.read, "libsmbclient", ROUNDS)
    finally:
        smb.close()
    # and the CLI once over every file
    for rel in files:
        r = c.smb.smbclient(f'get "{smb_name(rel)}" -', timeout=10)
        if r.returncode != 0:
            err = "error: " + r.stdout.decode(errors="replace").strip()[-200:]
        else:
            # `get F -` prints the file on stdout, the "getting file" line on stderr
            err = check(rel, wants[rel], r.stdout)
        if err:
            failures.append(f"smbclient round 1: {rel}: {err}")
    assert probed(c, before), "no probe ran"
    print(f"{len(files)} files x {ROUNDS} rounds; slowest libsmbclient {slowest[0]:.3f}s "
          f"({slowest[1]})")
    judge(failures)


def test_submit_through_smb(cluster):
    c = cluster
    spec = c.tmp / "viasmb.json"
    spec.write_text(json.dumps({"cmd": "echo via-smb", "node": "n2"}) + "\n")
    r = c.smb.smbclient(f'put "{spec}" tasks/new/viasmb.json')
    assert r.returncode == 0, (r.stdout, r.stderr)
    wait_until(lambda: c.m.path("tasks", "viasmb").exists(), 10, what="task accepted")
    wait_until(lambda: status(c.m, "viasmb") == "succeeded", 30, what="task ran")
    assert c.m.read("tasks", "viasmb", "stdout") == "via-smb\n"
    # and its output reads back through SMB
    r = c.smb.smbclient("get tasks/viasmb/stdout -")
    assert r.returncode == 0 and r.stdout.startswith(b"via-smb\n"), r


# ---- handles across a restart ----

class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]


libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def name_to_handle(path):
    fh = FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(AT_FDCWD, str(path).encode(), ctypes.byref(fh),
                              ctypes.byref(mount_id), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    return fh


def open_by_handle(mnt, fh):
    mfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), os.O_RDONLY)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        with os.fdopen(fd, "rb") as f:
            return f.read()
    finally:
        os.close(mfd)


def restart(c, between=None):
    """Restarts clusterfs (same mountpoint, same state dir) and ganesha after it, as
    ganesha's export holds the old connection's root (NFS4ERR_SERVERFAULT otherwise);
    BETWEEN runs while clusterfs is down."""
    c.nfs.stop()
    c.m.stop()
    c.mnt.mkdir(exist_ok=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    if between:
        between()
    c.m = Mount(c.tmp / "m", c.cfg, state=c.state, mnt=c.mnt)
    c.nfs.start()
    wait_until(lambda: c.m.json("nodes", "n1", "health")["reachable"], what="probe")


def present_all(c, wire):
    """The NFS handles WIRE (path: bytes) presented to ganesha in a new session: what
    did not resolve."""
    client = LibNfs(c.nfs)
    try:
        return [f"NFS handle {rel}: {err}" for rel, raw in wire.items()
                if (err := client.present(client.open("README"), raw))]
    finally:
        client.close()


HANDLE_FILES = ("stats", "nodes/n1/health", "tasks/ok/info", "tasks/ok/stdout",
                "ledger/entries/100", "services/training/status")
# names under models/ come from the model servers, which a restarted daemon has not asked
# yet when the first handle arrives
MODEL_HANDLE_FILES = ("models/qwen3:8b/info", "nodes/n2/models/qwen3:8b")


def test_handles_resolve_after_drop_caches_and_restart(cluster):
    """ganesha's VFS FSAL turns an NFS handle into name_to_handle_at's handle and back with
    open_by_handle_at: those handles must resolve after the kernel forgot the inodes and
    after clusterfs restarted (same mountpoint, same state dir), and so must the NFS
    handles a client got from ganesha before, presented to the restarted ganesha."""
    c = cluster
    handles = {rel: name_to_handle(c.m.path(rel)) for rel in HANDLE_FILES}
    model_handles = {rel: name_to_handle(c.m.path(rel)) for rel in MODEL_HANDLE_FILES}
    model_wants = {rel: shape(c.m.path(rel).read_bytes()) for rel in MODEL_HANDLE_FILES}
    dir_handles = {rel: name_to_handle(c.m.path(rel)) for rel in ("tasks/ok", "nodes/n3")}
    wants = {rel: shape(c.m.path(rel).read_bytes()) for rel in HANDLE_FILES}
    for rel in HANDLE_FILES:
        assert nfs_read(c, rel)[1] is None
    # an NFS client's handles: ganesha's wire handles, from a libnfs session
    client = LibNfs(c.nfs)
    wire = {rel: client.wire(client.open(rel)) for rel in HANDLE_FILES}
    client.close()
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    bad = []
    for rel, fh in handles.items():
        try:
            err = check(rel, wants[rel], open_by_handle(c.mnt, fh))
        except OSError as e:
            err = f"after drop_caches: {e}"
        if err:
            bad.append(f"{rel}: {err}")
    assert not bad, bad

    # a restart of clusterfs under the same mountpoint: ganesha's export holds the old
    # connection's root (it would answer NFS4ERR_SERVERFAULT), so it restarts with it
    dev = os.stat(c.mnt).st_dev
    restart(c)
    same_dev = os.stat(c.mnt).st_dev == dev
    for rel, fh in handles.items():
        try:
            err = check(rel, wants[rel], open_by_handle(c.mnt, fh))
        except OSError as e:
            err = f"after restart: {e}"
        if err:
            bad.append(f"handle {rel}: {err}")
    # models: recorded for test_model_handles_resolve_after_restart, then whether the
    # handle resolves once its directory was listed
    c.model_handle_errors = []
    for rel, fh in model_handles.items():
        try:
            err = check(rel, model_wants[rel], open_by_handle(c.mnt, fh))
        except OSError as e:
            os.listdir(c.m.path(os.path.dirname(rel)))
            try:
                again = check(rel, model_wants[rel], open_by_handle(c.mnt, fh)) or "resolves"
            except OSError as e2:
                again = str(e2)
            err = f"after restart: {e}; after listing {os.path.dirname(rel)}: {again}"
        if err:
            c.model_handle_errors.append(f"handle {rel}: {err}")
    for rel, fh in dir_handles.items():
        mfd = os.open(c.mnt, os.O_RDONLY | os.O_DIRECTORY)
        fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), os.O_RDONLY | os.O_DIRECTORY)
        os.close(mfd)
        if fd < 0:
            bad.append(f"dir handle {rel}: {os.strerror(ctypes.get_errno())}")
        else:
            os.close(fd)
    # the restarted ganesha over the restarted clusterfs takes the handles a client got
    # from the old ones, in a new session (no ESTALE) -- when the new mount got the old
    # one's device number, which ganesha's handles carry (see the test after this one);
    # another mount made meanwhile on this machine can take it
    c.wire, c.wire_dev = wire, os.minor(dev)
    if same_dev:
        bad += present_all(c, wire)
    else:
        print("the restarted mount has another device number: NFS handles not checked")
    for rel in HANDLE_FILES:
        data, err, el = nfs_read(c, rel)
        if err is None:
            err = check(rel, wants[rel], data)
        if err:
            bad.append(f"nfs-cat {rel}: {err}")
        smb = SmbReader(c.smb, READ_BOUND_S)
        data, err, el = smb.read(rel)
        smb.close()
        if err is None:
            err = check(rel, wants[rel], data)
        if err:
            bad.append(f"smb {rel}: {err}")
    assert not bad, "\n".join(bad)


def test_model_handles_resolve_after_restart(cluster):
    errors = getattr(cluster, "model_handle_errors", None)
    assert errors is not None, "test_handles_resolve_after_drop_caches_and_restart did not run"
    assert not errors, "\n".join(errors)


@pytest.mark.xfail(strict=True, reason="ganesha's VFS handles carry the FUSE mount's device "
                   "number (FUSE reports no f_fsid), which a remount may change")
def test_nfs_handles_resolve_after_a_restart_with_a_new_device_number(cluster):
    """A restart while another mount takes the old device number (a tmpfs here; any
    FUSE mount, container or automount on a real machine)."""
    c = cluster
    wire = getattr(c, "wire", None)
    assert wire, "test_handles_resolve_after_drop_caches_and_restart did not run"
    hold = Path(tempfile.mkdtemp(prefix="clusterfs-reexport-hold-"))
    try:
        restart(c, lambda: subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                           str(hold)], check=True))
    finally:
        if os.path.ismount(hold):
            subprocess.run(["umount", str(hold)], check=False)
        hold.rmdir()
    # a handle as ganesha 4.3 sends it: 43 00 0001 (version, flags, export 1), 16 (length),
    # 44 (VFS: fsid of two u32), 00000000 0000002d (the device's major and minor), 81 (the
    # kernel's FUSE handle type), the node id (8 bytes), the generation (4)
    assert os.minor(os.stat(c.mnt).st_dev) != c.wire_dev, "the mount got the old number"
    bad = present_all(c, wire)
    assert not bad, "\n".join(bad)
