"""Integration tests for clusterfs-agent: each case starts its own agent on a free port
with its own token file and state directory, talks HTTP to it, and always stops it.

The binary is $CLUSTERFS_BUILD/tools/agent/clusterfs-agent (default: the
repository's build/); these tests build nothing themselves.
"""

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time

import pytest

from conftest import AGENT_BIN, AGENT_TOKEN, free_port

AGENT = str(AGENT_BIN)
TOKEN = AGENT_TOKEN
HEALTH_FIELDS = {
    "name", "hostname", "version", "time", "uptime_s", "cores", "cpu_percent", "load",
    "mem_total_mb", "mem_available_mb", "mem_percent", "disk_path", "disk_total_mb",
    "disk_free_mb", "disk_percent", "gpus", "tasks_running",
}
SYSTEM_FIELDS = {
    "name", "hostname", "version", "os", "kernel", "arch", "cores", "ram_mb", "disks",
    "gpus", "boot_time",
}



def write_token(path, token=TOKEN, mode=0o600):
    with open(path, "w") as f:
        f.write(token + "\n")
    os.chmod(path, mode)


def do_request(conn, method, path, token=TOKEN, body=None, headers=None):
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = "Bearer " + token
    conn.request(method, path, body=body, headers=h)
    resp = conn.getresponse()
    raw = resp.read()
    assert resp.getheader("Content-Type") == "application/json"
    assert raw.endswith(b"\n")
    return resp.status, resp, json.loads(raw)


def agent_cmd(tmp, token_file, port, extra=()):
    return [AGENT, "--listen", "127.0.0.1:%d" % port, "--token-file", token_file,
            "--state-dir", os.path.join(tmp, "state"), *extra]


@pytest.fixture
def tmpdir_path():
    with tempfile.TemporaryDirectory(prefix="clusterfs-agent-test-") as d:
        yield d


@pytest.fixture
def start_agent(tmpdir_path, agent_pool):
    """Starts agents (no --name, state in tmpdir_path/state) with the shared harness."""
    token_file = os.path.join(tmpdir_path, "token")

    def start(extra=(), env=None):
        if not os.path.exists(token_file):
            write_token(token_file)
        return agent_pool(tmpdir_path, name=None, token_file=token_file, extra=extra,
                          env=env, state=os.path.join(tmpdir_path, "state"))

    return start


@pytest.fixture
def agent(start_agent):
    return start_agent()


def run_refusing(args, timeout=10):
    """Runs an agent that is expected to exit by itself; returns (code, stderr)."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


# --- endpoints --------------------------------------------------------------------------

def test_health_fields(agent):
    status, _, doc = agent.request("GET", "/api/node/health")
    assert status == 200
    assert HEALTH_FIELDS <= set(doc)
    assert doc["version"] == "0.1.0"
    assert doc["name"] == doc["hostname"] == socket.gethostname()
    assert abs(doc["time"] - time.time()) < 60
    assert doc["uptime_s"] > 0
    assert doc["cores"] >= 1
    assert 0 <= doc["cpu_percent"] <= 100
    assert len(doc["load"]) == 3 and all(x >= 0 for x in doc["load"])
    assert doc["mem_total_mb"] > 0
    assert 0 <= doc["mem_available_mb"] <= doc["mem_total_mb"]
    assert 0 <= doc["mem_percent"] <= 100
    assert doc["disk_path"]
    assert doc["disk_total_mb"] > 0
    assert 0 <= doc["disk_free_mb"] <= doc["disk_total_mb"]
    assert 0 <= doc["disk_percent"] <= 100
    assert isinstance(doc["gpus"], list)
    assert doc["tasks_running"] == 0


def test_health_cpu_sampled_at_startup(agent):
    """The first request already sees a measured value, and it keeps being refreshed."""
    _, _, doc = agent.request("GET", "/api/node/health")
    assert isinstance(doc["cpu_percent"], (int, float))


def test_system_fields(agent):
    status, _, doc = agent.request("GET", "/api/node/system")
    assert status == 200
    assert SYSTEM_FIELDS <= set(doc)
    assert doc["version"] == "0.1.0"
    assert doc["kernel"] == os.uname().release
    assert doc["arch"] == os.uname().machine
    assert doc["cores"] >= 1
    assert doc["ram_mb"] > 0
    assert doc["disks"] and all(d["path"] and d["total_mb"] > 0 for d in doc["disks"])
    assert isinstance(doc["gpus"], list)
    assert 0 < doc["boot_time"] <= time.time()


def test_name_option(start_agent):
    agent = start_agent(extra=("--name", "node-7"))
    _, _, doc = agent.request("GET", "/api/node/system")
    assert doc["name"] == "node-7"
    assert "listening on 127.0.0.1:%d as node-7" % agent.port in agent.stderr()
    assert TOKEN not in agent.stderr()


def test_gpus_from_nvidia_smi(start_agent, tmpdir_path):
    bindir = os.path.join(tmpdir_path, "bin")
    os.mkdir(bindir)
    script = os.path.join(bindir, "nvidia-smi")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n"
                "echo '0, NVIDIA A100-SXM4-40GB, 37, 1024, 40960, 41'\n"
                "echo '1, Tesla T4, [N/A], 15, 15360, 38'\n")
    os.chmod(script, 0o755)
    env = dict(os.environ, PATH=bindir + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
    agent = start_agent(env=env)
    _, _, health = agent.request("GET", "/api/node/health")
    assert health["gpus"] == [
        {"index": 0, "name": "NVIDIA A100-SXM4-40GB", "util_percent": 37,
         "mem_used_mb": 1024, "mem_total_mb": 40960, "temp_c": 41},
        {"index": 1, "name": "Tesla T4", "util_percent": None,
         "mem_used_mb": 15, "mem_total_mb": 15360, "temp_c": 38},
    ]
    _, _, system = agent.request("GET", "/api/node/system")
    assert system["gpus"] == [
        {"index": 0, "name": "NVIDIA A100-SXM4-40GB", "mem_total_mb": 40960},
        {"index": 1, "name": "Tesla T4", "mem_total_mb": 15360},
    ]


def test_hung_nvidia_smi_does_not_block_requests(start_agent, tmpdir_path):
    bindir = os.path.join(tmpdir_path, "bin")
    os.mkdir(bindir)
    script = os.path.join(bindir, "nvidia-smi")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nexec sleep 60\n")
    os.chmod(script, 0o755)
    env = dict(os.environ, PATH=bindir + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
    agent = start_agent(env=env)
    t0 = time.monotonic()
    status, _, doc = agent.request("GET", "/api/node/health")
    assert status == 200 and doc["gpus"] == []
    assert time.monotonic() - t0 < 1.0
    assert "nvidia-smi did not answer" in agent.stderr()


# --- authentication and routing -----------------------------------------------------------

def test_no_token_is_401(agent):
    status, resp, doc = agent.request("GET", "/api/node/health", token=None)
    assert status == 401
    assert resp.getheader("WWW-Authenticate") == "Bearer"
    assert doc == {"error": "unauthorized: missing or invalid bearer token"}


def test_wrong_token_is_401(agent):
    for bad in ("wrong", TOKEN + "x", TOKEN[:-1], ""):
        status, resp, doc = agent.request("GET", "/api/node/health", token=bad)
        assert status == 401, bad
        assert resp.getheader("WWW-Authenticate") == "Bearer"
        assert "error" in doc


def test_unknown_path_without_token_is_401(agent):
    status, _, _ = agent.request("GET", "/x", token=None)
    assert status == 401


def test_unknown_path_is_404(agent):
    status, _, doc = agent.request("GET", "/x")
    assert status == 404
    assert doc == {"error": "no such endpoint: /x"}


def test_wrong_method_is_405(agent):
    status, resp, doc = agent.request("DELETE", "/api/node/health")
    assert status == 405
    assert resp.getheader("Allow") == "GET"
    assert "error" in doc


def test_keepalive_two_requests_one_connection(agent):
    conn = agent.connect()
    try:
        status, _, _ = do_request(conn, "GET", "/api/node/health")
        assert status == 200
        sock = conn.sock
        assert sock is not None
        status, _, _ = do_request(conn, "GET", "/api/node/system")
        assert status == 200
        assert conn.sock is sock, "the server closed the connection between requests"
        status, _, _ = do_request(conn, "GET", "/api/node/health", token="wrong")
        assert status == 401
        assert conn.sock is sock
    finally:
        conn.close()


# --- request bodies -------------------------------------------------------------------------

def test_oversized_body_with_content_length_is_413(agent):
    """Refused from the headers alone: the agent answers before any body byte is sent."""
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
        s.sendall(("POST /api/node/health HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n" % (TOKEN, 2 * 1024 * 1024)).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"content-type: application/json" in head.lower()
    assert body.endswith(b"\n")
    assert json.loads(body)["error"].startswith("request body too large")


def test_oversized_chunked_body_is_413(agent):
    def chunks():
        for _ in range(40):
            yield b"x" * 32768  # 1.25 MiB in total

    conn = agent.connect()
    try:
        conn.request("POST", "/api/node/health", body=chunks(), encode_chunked=True,
                     headers={"Authorization": "Bearer " + TOKEN})
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.status == 413
        assert json.loads(raw)["error"].startswith("request body too large")
    finally:
        conn.close()


def test_body_within_limit_is_accepted(agent):
    """A 1 MiB body is read completely and then routed (405: no POST routes yet)."""
    status, resp, _ = agent.request("POST", "/api/node/health", body=b"x" * (1024 * 1024))
    assert status == 405
    assert resp.getheader("Allow") == "GET"


# --- process lifecycle ------------------------------------------------------------------------

def test_sigterm_exits_zero_promptly(agent):
    agent.request("GET", "/api/node/health")
    t0 = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 3
    assert "shutting down" in agent.stderr()


def test_sigint_exits_zero(agent):
    agent.proc.send_signal(signal.SIGINT)
    assert agent.proc.wait(timeout=5) == 0


def test_state_dir_created_private(tmpdir_path, start_agent):
    start_agent()
    st = os.stat(os.path.join(tmpdir_path, "state"))
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o700


def test_unusable_state_dir_refused(tmpdir_path):
    token_file = os.path.join(tmpdir_path, "token")
    write_token(token_file)
    blocker = os.path.join(tmpdir_path, "a-file")
    open(blocker, "w").close()
    code, _, err = run_refusing([AGENT, "--listen", "127.0.0.1:%d" % free_port(),
                                 "--token-file", token_file,
                                 "--state-dir", os.path.join(blocker, "state")])
    assert code == 1
    assert "cannot create state directory" in err and "Not a directory" in err


def test_invalid_name_refused(tmpdir_path):
    token_file = os.path.join(tmpdir_path, "token")
    write_token(token_file)
    code, _, err = run_refusing(agent_cmd(tmpdir_path, token_file, free_port(),
                                          ("--name", "a/b")))
    assert code == 2
    assert "invalid node name" in err


def test_token_file_mode_0644_refused(tmpdir_path):
    token_file = os.path.join(tmpdir_path, "token")
    write_token(token_file, mode=0o644)
    code, _, err = run_refusing(agent_cmd(tmpdir_path, token_file, free_port()))
    assert code == 2
    assert "0644" in err and "mode" in err
    assert TOKEN not in err
    assert len(err.strip().splitlines()) == 1


def test_token_file_group_writable_refused(tmpdir_path):
    token_file = os.path.join(tmpdir_path, "token")
    write_token(token_file, mode=0o620)
    code, _, err = run_refusing(agent_cmd(tmpdir_path, token_file, free_port()))
    assert code == 2
    assert "0620" in err


def test_missing_token_file_refused(tmpdir_path):
    token_file = os.path.join(tmpdir_path, "no-such-token")
    code, _, err = run_refusing(agent_cmd(tmpdir_path, token_file, free_port()))
    assert code == 2
    assert "no-such-token" in err
    assert len(err.strip().splitlines()) == 1


def test_empty_token_file_refused(tmpdir_path):
    token_file = os.path.join(tmpdir_path, "token")
    write_token(token_file, token="")
    code, _, err = run_refusing(agent_cmd(tmpdir_path, token_file, free_port()))
    assert code == 2
    assert "empty" in err


def test_token_file_option_required(tmpdir_path):
    code, _, err = run_refusing([AGENT, "--state-dir", os.path.join(tmpdir_path, "s")])
    assert code == 2
    assert "--token-file" in err and "Usage:" in err


def test_bad_option_prints_usage(tmpdir_path):
    code, out, err = run_refusing([AGENT, "--no-such-option"])
    assert code == 2
    assert "Usage:" in err and out == ""


def test_bad_listen_address_refused(tmpdir_path):
    token_file = os.path.join(tmpdir_path, "token")
    write_token(token_file)
    for bad in ("nonsense", "127.0.0.1", "127.0.0.1:99999", "[::1]8768", "localhost:80"):
        code, _, err = run_refusing([AGENT, "--listen", bad, "--token-file", token_file,
                                     "--state-dir", os.path.join(tmpdir_path, "state")])
        assert code == 2, bad
        assert "--listen" in err, bad


def test_port_in_use_refused(tmpdir_path):
    token_file = os.path.join(tmpdir_path, "token")
    write_token(token_file)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code, _, err = run_refusing(agent_cmd(tmpdir_path, token_file, port))
    assert code == 1
    assert "cannot listen on 127.0.0.1:%d: Address already in use" % port in err


def test_help_lists_every_option():
    code, out, _ = run_refusing([AGENT, "--help"])
    assert code == 0
    for opt in ("--listen", "--token-file", "--state-dir", "--name", "--help", "--version",
                "0.0.0.0:8768"):
        assert opt in out


def test_version():
    code, out, _ = run_refusing([AGENT, "--version"])
    assert code == 0
    assert out == "clusterfs-agent 0.1.0\n"


def test_ipv6_listen(tmpdir_path):
    if not socket.has_ipv6:
        pytest.fail("no IPv6 support in this Python")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError as e:
        pytest.fail("cannot bind ::1 here: %s" % e)
    token_file = os.path.join(tmpdir_path, "token")
    write_token(token_file)
    proc = subprocess.Popen([AGENT, "--listen", "[::1]:%d" % port, "--token-file", token_file,
                             "--state-dir", os.path.join(tmpdir_path, "state")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 10
        while True:
            try:
                conn = http.client.HTTPConnection("::1", port, timeout=5)
                status, _, _ = do_request(conn, "GET", "/api/node/health")
                conn.close()
                break
            except ConnectionRefusedError:
                assert proc.poll() is None and time.monotonic() < end
                time.sleep(0.05)
        assert status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_half_sent_requests_do_not_lock_out_authenticated_clients(agent):
    """300 idle connections from loopback, each with half a request sent: an authenticated
    request from the same address is still answered within a probe timeout (1 s), and the
    idle ones are closed after the agent's idle timeout."""
    socks = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
            s.sendall(b"GET /api/node/health HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        time.sleep(0.2)
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=1.0)
        try:
            status, _, body = do_request(conn, "GET", "/api/node/health")
        finally:
            conn.close()
        assert status == 200 and "cores" in body
        assert time.monotonic() - t0 < 1.0
        # the idle ones are cut: reading one ends (EOF or reset) within the idle timeout
        s = socks[0]
        s.settimeout(10)
        t0 = time.monotonic()
        try:
            s.recv(1)
        except ConnectionResetError:
            pass
        assert time.monotonic() - t0 < 8
    finally:
        for s in socks:
            s.close()
