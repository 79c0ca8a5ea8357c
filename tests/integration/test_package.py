"""The Debian packages, as a Debian user gets them: dpkg-buildpackage on a copy of the tree,
apt-get install of the two .debs, systemd-analyze verify of the installed units, the
installed agent and daemon started by hand (clusterfs -f, mount -t fuse.clusterfs, an fstab
line), then apt-get purge, after which nothing of the packages is left but configuration.

It installs on this machine, so it refuses to run where clusterfs is installed already
(it would purge it). Every tool it needs is a failure when missing, never a skip."""
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

from conftest import ROOT, make_config, mounted, wait_until, write_token, free_port, wait_listening

PACKAGES = ("clusterfs", "clusterfs-agent")
UNITS = ("/lib/systemd/system/clusterfs.service", "/lib/systemd/system/clusterfs-agent.service")
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]


def sh(*args, timeout=300, check=True, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                       **kw)
    if check:
        assert r.returncode == 0, f"{' '.join(map(str, args))}: exit {r.returncode}\n" \
                                  f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def pkg_status(name):
    r = sh("dpkg-query", "-W", "-f=${db:Status-Status}", name, check=False)
    return r.stdout.strip() if r.returncode == 0 else "not-installed"


def copy_tree(dst):
    """The checkout without build directories and git metadata, so the build does not
    dirty it."""
    def keep(info):
        first = info.name.split("/")[1] if "/" in info.name else ""
        if first.startswith("build") or first.startswith("obj-") or first == ".git":
            return None
        return info
    tar = Path(dst).parent / "tree.tar"
    with tarfile.open(tar, "w") as t:
        t.add(ROOT, arcname=".", filter=keep)
    with tarfile.open(tar) as t:
        t.extractall(dst)
    tar.unlink()


def daemon_pids(mnt):
    """PIDs of clusterfs daemons serving mnt (a daemon that mount(8) started detaches)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"clusterfs") and str(mnt).encode() in argv:
            pids.append(int(p.name))
    return pids


def unmount(mnt):
    """umount(8) as a user would; waits for the daemon to end."""
    pids = daemon_pids(mnt)
    if os.path.ismount(mnt):
        sh("umount", mnt)
    wait_until(lambda: not any(alive(p) for p in pids), 15, what=f"the daemon of {mnt} to exit")


def alive(pid):
    """Running (a child of ours that exited is a zombie until waited for)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def check_mount(mnt):
    """The mount serves the agent's node, and a task runs through the installed supervisor."""
    health = mnt / "nodes" / "n1" / "health"
    h = wait_until(lambda: json.loads(health.read_text()) if health.exists() else None, 15,
                   what="health")
    assert h["reachable"] is True, h
    name = "pkg-" + os.urandom(4).hex()
    (mnt / "tasks" / "new" / f"{name}.json").write_text('{"cmd": "echo from-the-package"}')
    assert (mnt / "tasks" / name / "wait").read_text() == "succeeded 0\n"
    assert (mnt / "tasks" / name / "stdout").read_text() == "from-the-package\n"


def test_debian_packages(tmp_path):
    for tool in ("dpkg-buildpackage", "dh", "dpkg-deb", "dpkg-query", "apt-get",
                 "systemd-analyze", "scdoc", "man", "meson", "mount.fuse3", "umount",
                 "lintian"):
        assert shutil.which(tool), f"{tool} is missing: run tools/install-deps.sh"
    assert os.geteuid() == 0, "the package test installs packages: run it as root"
    for p in PACKAGES:
        assert pkg_status(p) == "not-installed", \
            f"{p} is installed on this machine ({pkg_status(p)}): the test would purge it"
    etc_before = Path("/etc/clusterfs").exists()
    token_before = Path("/etc/clusterfs/agent.token").exists()

    # build the .debs from a copy (without debug symbol packages; the unit programs run in
    # the suite already)
    work = Path(tempfile.mkdtemp(prefix="clusterfs-pkg-"))
    try:
        src = work / "src"
        src.mkdir()
        copy_tree(src)
        env = {**os.environ, "DEB_BUILD_OPTIONS": "nocheck noddebs parallel=2"}
        sh("dpkg-buildpackage", "-us", "-uc", "-b", cwd=src, env=env, timeout=900)
        debs = {p: work / f"{p}_0.1.0_{sh('dpkg', '--print-architecture').stdout.strip()}.deb"
                for p in PACKAGES}
        for d in debs.values():
            assert d.exists(), sorted(os.listdir(work))
        assert not (ROOT / "debian" / ".debhelper").exists(), "the build dirtied the checkout"
        # Debian policy, as lintian checks it: no error and no warning
        r = sh("lintian", "--tag-display-limit", "0", "--fail-on", "error,warning",
               next(work.glob("clusterfs_*.changes")), check=False, timeout=300)
        assert r.returncode == 0 and "E: " not in r.stdout and "W: " not in r.stdout, r.stdout

        # meson install puts the same files in the same places as the packages
        dest = work / "destdir"
        builddir = next(src.glob("obj-*"))
        sh("meson", "install", "-C", builddir, "--destdir", dest, "--quiet")
        meson_files = sorted("/" + str(p.relative_to(dest)) for p in dest.rglob("*")
                             if not p.is_dir() or p.is_symlink())
        deb_files = []
        for d in debs.values():
            for line in sh("dpkg-deb", "-c", d).stdout.splitlines():
                path = line.split(None, 5)[5].split(" -> ")[0].lstrip(".")
                if line.startswith("d") or path.startswith("/usr/share/doc/"):
                    continue
                deb_files.append(path[:-3] if path.startswith("/usr/share/man/") else path)
        assert meson_files == sorted(deb_files)

        sh(*APT, "install", *debs.values(), cwd=work)
        try:
            run_installed(tmp_path, token_before)
        finally:
            listed = sh("dpkg", "-L", *PACKAGES, check=False).stdout.split("\n")
            sh(*APT, "purge", *PACKAGES)
        for p in PACKAGES:
            assert pkg_status(p) == "not-installed", p
        left = [f for f in listed if f and os.path.lexists(f) and not os.path.isdir(f)]
        assert left == [], f"files of the packages left after purge: {left}"
        for d in ("/var/lib/clusterfs", "/var/lib/clusterfs-agent",
                  "/var/lib/clusterfs-agent-knowledge", "/usr/libexec/clusterfs",
                  "/usr/share/clusterfs"):
            assert not os.path.lexists(d), f"{d} left after purge"
        assert not list(Path("/etc/systemd/system").rglob("clusterfs*")), "unit links left"
        if not etc_before:
            assert not Path("/etc/clusterfs").exists(), "/etc/clusterfs left (empty) after purge"
        # what stays is configuration: the clusterfs group (Debian leaves system groups)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_installed(tmp_path, token_before):
    # maintainer scripts: state directories 0700, the group, no token made behind our back
    for d in ("/var/lib/clusterfs", "/var/lib/clusterfs-agent"):
        st = os.stat(d)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0, (d, oct(st.st_mode))
    assert sh("getent", "group", "clusterfs").stdout.startswith("clusterfs:")
    assert Path("/etc/clusterfs/agent.token").exists() == token_before, \
        "the package created a token"
    assert os.path.islink("/usr/bin/clusterfs-agent")
    assert os.access("/usr/libexec/clusterfs/clusterfs-agent-supervise", os.X_OK)

    # the installed units call the installed programs
    r = sh("systemd-analyze", "verify", *UNITS)
    assert r.stdout + r.stderr == "", r.stdout + r.stderr
    for u in UNITS:
        for line in Path(u).read_text().splitlines():
            if line.startswith("ExecStart"):
                prog = line.split("=", 1)[1].lstrip("-").split()[0]
                assert os.access(prog, os.X_OK), line

    # the installed man pages
    for page in ("man8/clusterfs.8.gz", "man8/clusterfs-agent.8.gz", "man7/clusterfs-tree.7.gz",
                 "man5/hosts.json.5.gz"):
        r = sh("man", "--warnings", "-l", f"/usr/share/man/{page}",
               env={**os.environ, "MANWIDTH": "80"})
        assert r.stderr == "", (page, r.stderr)
        assert "SEE ALSO" in re.sub(".\b", "", r.stdout), r.stdout

    # the installed agent, by hand
    token = write_token(tmp_path / "token", "pkg-" + os.urandom(8).hex())
    port = free_port()
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        agent = subprocess.Popen(
            ["/usr/bin/clusterfs-agent", "--listen", f"127.0.0.1:{port}", "--token-file",
             str(token), "--state-dir", str(tmp_path / "agent-state"), "--name", "n1"],
            stdout=log, stderr=log)
    try:
        assert wait_listening(agent, log_path), log_path.read_text()

        class A:
            name = "n1"
        A.port = port
        cfg = make_config(tmp_path / "hosts.json", [A], token)
        mnt = Path(tempfile.mkdtemp(prefix="clusterfs-pkg-mnt-"))
        os.chmod(mnt, 0o755)
        try:
            # 1. the daemon by hand, in the foreground
            dlog = open(tmp_path / "clusterfs.log", "wb")
            d = subprocess.Popen(["/usr/bin/clusterfs", "-f", "-c", str(cfg), "-s",
                                  str(tmp_path / "state"), str(mnt)], stdout=dlog, stderr=dlog)
            try:
                wait_until(lambda: d.poll() is None and os.path.ismount(mnt), 15, what="mount")
                check_mount(mnt)
            finally:
                unmount(mnt)
                assert d.wait(15) == 0
                dlog.close()
            # 2. mount(8), which runs mount.fuse3, which runs /usr/bin/clusterfs
            sh("mount", "-t", "fuse.clusterfs", "none", mnt, "-o",
               f"config={cfg},state_dir={tmp_path / 'state'}")
            try:
                assert os.path.ismount(mnt)
                check_mount(mnt)
                assert "fuse.clusterfs" in sh("findmnt", "-n", "-o", "FSTYPE", mnt).stdout
            finally:
                unmount(mnt)
            # 3. the README's fstab line (with this test's mountpoint and state)
            fstab = tmp_path / "fstab"
            fstab.write_text(f"none {mnt} fuse.clusterfs config={cfg},"
                             f"state_dir={tmp_path / 'state'},_netdev 0 0\n")
            sh("mount", "-T", fstab, mnt)
            try:
                assert os.path.ismount(mnt)
                check_mount(mnt)
            finally:
                unmount(mnt)
        finally:
            if mounted(mnt):  # a dead mount too, which os.path.ismount() misses
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
            for pid in daemon_pids(mnt):
                os.kill(pid, 15)
            try:
                mnt.rmdir()
            except OSError:
                pass
    finally:
        agent.terminate()
        agent.wait(10)
