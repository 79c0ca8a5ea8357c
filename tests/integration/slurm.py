"""A real Slurm cluster on this machine, for tests: munged with its own key and socket,
slurmctld, one slurmd (node c1), slurmrestd with auth/jwt on loopback; every config, key,
spool, state and log in one temporary directory. A second node, c2, is configured DOWN and
never started. Everything is started and stopped by PID."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from conftest import free_port, wait_until, write_token

USER = "nobody"  # slurmrestd refuses tokens for root and SlurmUser; jobs run as this user
PARTITION = "gpu"


class Slurm:
    def __init__(self):
        # not pytest's 0700 tmp: the jobs run as `nobody` and write to out/
        self.dir = Path(tempfile.mkdtemp(prefix="clusterfs-slurm-"))
        os.chmod(self.dir, 0o755)
        self.out = self.dir / "out"
        self.out.mkdir()
        os.chmod(self.out, 0o1777)
        for d in ("state", "spool", "log"):
            (self.dir / d).mkdir()
        self.procs = {}
        self.ctld_port, self.slurmd_port, self.rest_port = free_port(), free_port(), free_port()
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for name, size in (("munge.key", 1024), ("jwt.key", 32)):
            p = self.dir / name
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, os.urandom(size))
            os.close(fd)
        host = socket.gethostname()
        d = self.dir
        self.conf.write_text(f"""ClusterName=cfstest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key={d}/jwt.key
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
KillWait=2
MinJobAge=600
SchedulerParameters=sched_min_interval=0
NodeName=c1 NodeHostname={host} NodeAddr=127.0.0.1 CPUs=16 RealMemory=4000 Gres= State=UNKNOWN
NodeName=c2 NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs=8 RealMemory=2000 State=DOWN Reason=never_started
PartitionName={PARTITION} Nodes=c1,c2 Default=YES MaxTime=INFINITE State=UP
""")
        os.chmod(self.conf, 0o644)
        try:
            self._spawn("munged", ["munged", "-F", f"--socket={d}/munge.sock",
                                   f"--key-file={d}/munge.key", f"--pid-file={d}/munged.pid",
                                   f"--log-file={d}/log/munged.log", f"--seed-file={d}/munge.seed"])
            wait_until(lambda: (d / "munge.sock").exists(), 10, what="munged's socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            wait_until(lambda: self.scontrol("ping").returncode == 0 and
                       "UP" in self.scontrol("ping").stdout, 20, step=0.2, what="slurmctld up")
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", "c1"])
            wait_until(lambda: "idle" in self.sinfo("c1"), 30, step=0.2, what="c1 idle")
            self.start_rest()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name, argv, env=None, **kw):
        log = open(self.dir / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=log,
                                            env=env or self.env, **kw)
        log.close()

    def scontrol(self, *args):
        return subprocess.run(["scontrol", *args], env=self.env, capture_output=True,
                              text=True, timeout=30)

    def sinfo(self, node):
        return subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], env=self.env,
                              capture_output=True, text=True, timeout=30).stdout

    def token(self, lifespan=7200):
        r = self.scontrol("token", f"username={USER}", f"lifespan={lifespan}")
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().split("=", 1)[1]

    def start_rest(self):
        # SLURM_JWT=daemon: slurmrestd takes each client's token (rest_quickstart)
        env = {**self.env, "SLURM_JWT": "daemon"}
        self._spawn("slurmrestd", ["slurmrestd", "-f", str(self.conf), "-a", "rest_auth/jwt",
                                   "-s", "openapi/v0.0.38", "-u", USER, "-g", "nogroup",
                                   f"127.0.0.1:{self.rest_port}"], env=env)
        tok = self.token()
        wait_until(lambda: self.rest("/slurm/v0.0.38/ping", tok) is not None, 20, step=0.1,
                   what="slurmrestd answering")

    def stop_rest(self):
        self._stop("slurmrestd")

    def rest(self, path, tok):
        req = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}{path}", headers={
            "X-SLURM-USER-NAME": USER, "X-SLURM-USER-TOKEN": tok})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def jobs(self):
        """Every job slurmctld knows: name, id, state (squeue, so not through our client)."""
        r = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%j|%i|%T"],
                           env=self.env, capture_output=True, text=True, timeout=30)
        return [tuple(line.split("|")) for line in r.stdout.splitlines() if line]

    def write_token_file(self, path, value=None):
        return write_token(path, value or self.token())

    def _stop(self, name):
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop(self):
        # jobs first: slurmd ends them as it stops (their processes are its children's)
        subprocess.run(["scancel", "-u", USER], env=self.env, capture_output=True, timeout=30)
        for name in ("slurmrestd", "slurmd", "slurmctld", "munged"):
            self._stop(name)
        shutil.rmtree(self.dir, ignore_errors=True)
