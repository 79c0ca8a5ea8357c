"""Numbers from the network are range-checked before they are converted: a node that
claims 1e300 cores, or an Ollama pull whose total is 1e-300, yields sensible files."""
from conftest import make_config, wait_until
from test_hostile import Hostile
from test_models import config_with_models, ollamas  # noqa: F401 (fixture)


def test_absurd_health_numbers_leave_stats_sensible(tmp_path, token, agents, mount):
    good = agents(1)[0]
    liar = Hostile("numbers")
    try:
        m = mount(make_config(tmp_path / "hosts.json", [good, liar], token,
                              probe={"interval_s": 1, "timeout_ms": 1000}))
        wait_until(lambda: m.json("nodes", "hostile", "health")["reachable"], 10,
                   what="the liar probed")
        good_cores = m.json("nodes", good.name, "health")["cores"]
        cap = m.json("stats")["capacity"]
        assert cap["cores"] == good_cores, cap
        assert 0 <= cap["cores_busy"] <= good_cores, cap
        assert cap["ram_mb"] >= 0, cap
        assert m.read("nodes", "hostile", "tier") in ("light\n", "standard\n", "powerhouse\n",
                                                      "unknown\n")
    finally:
        liar.stop()


def test_pull_progress_with_absurd_totals(tmp_path, token, agents, mount, ollamas):
    ags = agents(1)
    o = ollamas(["qwen3:8b"], steps=4, delay_ms=200)
    o.stop()
    # the same fixture, with a total of 1e-300 in every progress line
    from test_models import Ollama
    import subprocess
    o.proc = subprocess.Popen(
        ["/usr/bin/python3", str(Ollama.__init__.__globals__["FIXTURE"]), "--port",
         str(o.port), "--models", "qwen3:8b", "--pull-steps", "4", "--pull-delay-ms", "200",
         "--pull-total", "1e-300", "--pull-completed", "1"],
        stdout=subprocess.PIPE, text=True)
    assert "listening" in o.proc.stdout.readline()
    m = mount(config_with_models(tmp_path, ags, token, {"n1": {"ollama": {"port": o.port}}}))
    with open(m.path("nodes", "n1", "models", "ctl"), "w") as f:
        f.write("pull llama3.2:1b\n")
    seen = []

    def done():
        seen.append(m.read("nodes", "n1", "models", "ctl"))
        return "success" in seen[-1] or "failed" in seen[-1]

    wait_until(done, 15, step=0.02, what="the pull done")
    progress = [c for c in seen if "pulling " in c]
    assert progress, seen
    for c in seen:
        assert "-2147483648" not in c and "inf" not in c, c
