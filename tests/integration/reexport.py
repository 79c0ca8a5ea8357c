"""nfs-ganesha (VFS FSAL, NFSv4 only) and Samba exporting a directory, each with its own
configuration, state, logs and pid under a directory of the caller's, on loopback only.

Shared by tests/integration/test_reexport.py and tests/bench/reexport.sh (which runs this
file as a program). The configurations are the ones README's "Re-exporting over NFS and
SMB" section shows; keep them in step."""
import base64
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

GANESHA_CONF = """\
NFS_CORE_PARAM {{
	# NFSv4 only: v3 needs its MOUNT program registered with rpcbind, and ganesha
	# exits when it cannot register it
	Protocols = 4;
	NFS_Port = {port};
	Bind_addr = 127.0.0.1;
	Enable_NLM = false;
	Enable_RQUOTA = false;
	Enable_UDP = false;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
NFSV4 {{
	RecoveryBackend = fs;
	RecoveryRoot = {dir}/recovery;
	Graceless = true;
	Only_Numeric_Owners = true;
}}
EXPORT {{
	Export_Id = 1;
	Path = {path};
	Pseudo = /export;
	Access_Type = {access};
	Squash = No_Root_Squash;
	Protocols = 4;
	Transports = TCP;
	SecType = sys;
	# ganesha's own attribute cache would keep a size the next render no longer has
	Attr_Expiration_Time = 0;
	FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""

SMB_CONF = """\
[global]
	server role = standalone server
	interfaces = 127.0.0.1
	bind interfaces only = yes
	smb ports = {port}
	disable netbios = yes
	server min protocol = SMB2
	private dir = {dir}/private
	lock directory = {dir}/lock
	state directory = {dir}/state
	cache directory = {dir}/cache
	pid directory = {dir}/pid
	ncalrpc dir = {dir}/ncalrpc
	log file = {dir}/log.%m
	logging = file
	passdb backend = tdbsam:{dir}/private/passdb.tdb
	load printers = no
	printing = bsd
	printcap name = /dev/null
	disable spoolss = yes
	map to guest = Never
[export]
	path = {path}
	read only = {read_only}
	# NTFS-illegal characters in names (':' in model names) map to the private-use
	# characters Windows and macOS use for them (Services for Mac); without it a name
	# with ':' is a stream name to the client and fails with EINVAL
	vfs objects = catia
	catia:mappings = 0x22:0xf020,0x2a:0xf021,0x3a:0xf022,0x3c:0xf023,0x3e:0xf024,0x3f:0xf025,0x5c:0xf026,0x7c:0xf027
	# clusterfs keeps no xattrs, takes no locks and has no leases: ask for none
	ea support = no
	store dos attributes = no
	map archive = no
	map readonly = no
	kernel share modes = no
	kernel oplocks = no
	oplocks = no
	level2 oplocks = no
	posix locking = no
	strict allocate = no
"""

SMB_USER = "root"
SMB_MAP = {c: chr(0xf020 + i) for i, c in enumerate('"*:<>?\\|')}


def smb_name(rel):
    """The name an SMB client uses for REL under catia's mapping, '/' as '\\'."""
    return "".join(SMB_MAP.get(ch, ch) for ch in rel)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(proc, port, log, what, deadline_s=20.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: "
                               + Path(log).read_text(errors="replace")[-2000:])
        if _listening(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {deadline_s}s")


def _stop(proc, timeout=20):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Ganesha:
    """ganesha.nfsd -F exporting PATH as nfs://127.0.0.1:PORT/export (NFSv4)."""

    def __init__(self, d, path, port=None, access="RW"):
        self.dir = Path(d)
        (self.dir / "recovery").mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self.port = port or free_port()
        self.conf = self.dir / "ganesha.conf"
        self.conf.write_text(GANESHA_CONF.format(port=self.port, dir=self.dir,
                                                 path=self.path, access=access))
        self.log = self.dir / "ganesha.log"
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["ganesha.nfsd", "-F", "-L", str(self.log), "-f", str(self.conf), "-p",
             str(self.dir / "ganesha.pid")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)
        _wait(self.proc, self.port, self.log, "ganesha.nfsd")

    def url(self, rel=""):
        return f"nfs://127.0.0.1/export/{rel}?version=4&nfsport={self.port}"

    def stop(self):
        _stop(self.proc)


class Samba:
    """smbd -F serving PATH as //127.0.0.1/export on PORT, to SMB_USER with a password
    kept in its own private dir."""

    def __init__(self, d, path, port=None, read_only="no"):
        self.dir = Path(d)
        for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "private", 0o700)
        self.path = Path(path)
        self.port = port or free_port()
        self.conf = self.dir / "smb.conf"
        self.conf.write_text(SMB_CONF.format(port=self.port, dir=self.dir, path=self.path,
                                             read_only=read_only))
        self.password = "pw-" + os.urandom(6).hex()
        # smbpasswd -s reads the new password twice from stdin
        subprocess.run(["smbpasswd", "-c", str(self.conf), "-s", "-a", SMB_USER],
                       input=f"{self.password}\n{self.password}\n", text=True, check=True,
                       capture_output=True)
        self.log = self.dir / "smbd.out"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["smbd", "-F", "--no-process-group", "-s", str(self.conf), "--debug-stdout",
                 "-d", "1"], stdout=out, stderr=subprocess.STDOUT,
                # smbd signals its whole process group when it exits: its own group
                start_new_session=True)
        _wait(self.proc, self.port, self.log, "smbd")

    def smbclient(self, command, timeout=10):
        """smbclient -c COMMAND against the share; returns the CompletedProcess."""
        auth = self.dir / "auth"
        if not auth.exists():
            fd = os.open(auth, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, f"username={SMB_USER}\npassword={self.password}\n".encode())
            os.close(fd)
        return subprocess.run(["smbclient", "-s", str(self.conf), "-p", str(self.port),
                               "-A", str(auth), "//127.0.0.1/export", "-c", command],
                              capture_output=True, timeout=timeout)

    def url(self, rel=""):
        from urllib.parse import quote
        return f"smb://127.0.0.1:{self.port}/export/{quote(smb_name(rel))}"

    def stop(self):
        _stop(self.proc)


def smbc_context(samba):
    """A libsmbclient context (python3-smbc) logged in as SMB_USER: one session for many
    reads, so that each read can be timed on its own."""
    import smbc
    ctx = smbc.Context()
    ctx.functionAuthData = lambda srv, share, wg, user, pw: ("WORKGROUP", SMB_USER,
                                                             samba.password)
    return ctx


class LibNfs:
    """One libnfs (libnfs13) NFSv4 session through ctypes: what a client keeps between
    calls, its file handles. nfs-cat looks every path up afresh; this keeps the handles
    and presents them again after a restart. libnfs 4.0 does not reconnect a v4 session,
    so wire() takes the handle's bytes out of a struct nfsfh and present() puts them into
    one of a new session (libnfs-private.h: struct nfsfh begins with struct nfs_fh
    {int len; char *val;}), then asks for its attributes (PUTFH + GETATTR: no open
    state is involved, so what is checked is the handle alone)."""

    class _Url(ctypes.Structure):
        _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p),
                    ("file", ctypes.c_char_p)]

    class _Fh(ctypes.Structure):
        _fields_ = [("len", ctypes.c_int), ("val", ctypes.POINTER(ctypes.c_ubyte))]

    def __init__(self, ganesha):
        lib = self.lib = ctypes.CDLL("libnfs.so.13")
        lib.nfs_init_context.restype = ctypes.c_void_p
        lib.nfs_get_error.restype = ctypes.c_char_p
        lib.nfs_get_error.argtypes = [ctypes.c_void_p]
        lib.nfs_parse_url_full.restype = ctypes.c_void_p
        lib.nfs_parse_url_full.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.ctx = ctypes.c_void_p(lib.nfs_init_context())
        lib.nfs_set_timeout(self.ctx, 5000)
        url = lib.nfs_parse_url_full(self.ctx, ganesha.url().encode())
        if not url:
            raise OSError(self.error())
        u = ctypes.cast(url, ctypes.POINTER(self._Url)).contents
        if lib.nfs_mount(self.ctx, u.server, b"/export") != 0:
            raise OSError(self.error())
        self._keep = []

    def error(self):
        return (self.lib.nfs_get_error(self.ctx) or b"").decode(errors="replace")

    def close(self):
        """Ends the session (its handles with it)."""
        self.lib.nfs_destroy_context(self.ctx)
        self._keep.clear()

    def open(self, rel):
        fh = ctypes.c_void_p()
        if self.lib.nfs_open(self.ctx, ("/" + rel).encode(), os.O_RDONLY,
                             ctypes.byref(fh)) != 0:
            raise OSError(f"open {rel}: {self.error()}")
        return fh

    def wire(self, fh):
        f = ctypes.cast(fh, ctypes.POINTER(self._Fh)).contents
        return bytes(f.val[:f.len])

    def present(self, carrier, raw):
        """GETATTR on the handle RAW, carried in the open handle CARRIER: None when it
        resolves, else libnfs's error (NFS4ERR_STALE when it does not)."""
        buf = (ctypes.c_ubyte * len(raw)).from_buffer_copy(raw)
        self._keep.append(buf)
        f = ctypes.cast(carrier, ctypes.POINTER(self._Fh)).contents
        f.len, f.val = len(raw), ctypes.cast(buf, ctypes.POINTER(ctypes.c_ubyte))
        st = ctypes.create_string_buffer(512)
        return None if self.lib.nfs_fstat64(self.ctx, carrier, st) == 0 else self.error()


class SmbReader:
    """libsmbclient reads (python3-smbc) in a worker process, one session for many
    reads so that each can be timed, each bounded by TIMEOUT_S: the binding holds the
    GIL while it waits, so the waiting and the timing are done here, and a hung worker
    is killed and a fresh one started for the next read."""

    def __init__(self, samba, timeout_s):
        self.samba = samba
        self.timeout_s = timeout_s
        self.proc = None

    def _start(self):
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", __file__, "smb-read", str(self.samba.port),
             self.samba.password], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read(self, rel):
        """(data or None, error or None, seconds)"""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        t = time.monotonic()
        self.proc.stdin.write(rel + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        el = time.monotonic() - t
        if not ready:
            self.close()
            return None, f"hung: no end of file within {self.timeout_s}s", el
        r = json.loads(self.proc.stdout.readline())
        return (base64.b64decode(r["data"]) if r["data"] is not None else None,
                r["err"], el)

    def close(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _smb_read(argv):
    class S:
        port, password = int(argv[0]), argv[1]
    ctx = smbc_context(S)
    url = Samba.url.__get__(S)
    for line in sys.stdin:
        rel, data, err = line.rstrip("\n"), None, None
        try:
            f = ctx.open(url(rel))
            chunks = []
            while True:
                b = f.read(65536)
                if not b:
                    break
                chunks.append(b)
            f.close()
            data = base64.b64encode(b"".join(chunks)).decode()
        except Exception as e:
            err = f"error: {e}"
        print(json.dumps({"data": data, "err": err}), flush=True)


def _bench(argv):
    """reexport.py bench DIR NAME FILES...: exports DIR through both and prints, per
    client, 'NAME CLIENT FILES_PER_S FAILED OK_FILES_PER_S' for reading every FILE (relative to DIR)
    once per round for ROUNDS rounds (environment, default 5); a read is bounded by
    READ_TIMEOUT_S (default 2) and counted failed when it hangs, errs or comes back empty
    where DIR has bytes; OK_FILES_PER_S leaves the failed reads' time out. The export's
    state is under $WORK/NAME."""
    d, name, files = Path(argv[0]), argv[1], argv[2:]
    rounds = int(os.environ.get("ROUNDS", "5"))
    bound = float(os.environ.get("READ_TIMEOUT_S", "2"))
    work = Path(os.environ["WORK"]) / name
    g = Ganesha(work / "ganesha", d, access="RO")
    s = Samba(work / "samba", d, read_only="yes")
    # which files have bytes (sizes move; emptiness does not)
    full = {f: bool((d / f).read_bytes()) for f in files}

    def run(client, read, n_rounds):
        """(files/s over all reads, failed reads, files/s over the reads that did not)"""
        failed, ok_s, t = 0, 0.0, time.monotonic()
        for _ in range(n_rounds):
            for f in files:
                t1 = time.monotonic()
                data, err = read(f)
                bad = err is not None or (full[f] and not data)
                failed += bad
                ok_s += 0 if bad else time.monotonic() - t1
        n = n_rounds * len(files)
        return n / (time.monotonic() - t), failed, (n - failed) / ok_s if ok_s else 0.0

    def nfs(f):
        try:
            r = subprocess.run(["nfs-cat", g.url(f)], capture_output=True, timeout=bound)
        except subprocess.TimeoutExpired:
            return None, "hung"
        return r.stdout, None if r.returncode == 0 else "error"

    def smbcli(f):
        try:
            r = s.smbclient(f'get "{smb_name(f)}" -', timeout=bound)
        except subprocess.TimeoutExpired:
            return None, "hung"
        return r.stdout, None if r.returncode == 0 else "error"

    reader = SmbReader(s, bound)
    try:
        for client, read, n in (("nfs-cat", nfs, rounds), ("libsmbclient",
                                lambda f: reader.read(f)[:2], rounds), ("smbclient", smbcli, 1)):
            rate, failed, ok_rate = run(client, read, n)
            print(f"{name} {client} {rate:.1f} {failed} {ok_rate:.1f}", flush=True)
    finally:
        reader.close()
        s.stop()
        g.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "bench":
        _bench(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "smb-read":
        _smb_read(sys.argv[2:])
    else:
        sys.exit("usage: reexport.py bench DIR NAME FILES...")
