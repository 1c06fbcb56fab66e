"""Helpers of the attack suite (conftest.py holds the fixtures): the daemon handle, the host
canaries, running attempts inside sandboxes, syscall helpers for attempt scripts.

Checking the checks: with SANDBOXD_ATTACK_ON_HOST=1 `inside()` runs each attempt's script as
root directly on the host (no sandbox). Attempts marked `host_unsafe` are skipped then; every
other attempt run through `inside()` must report ESCAPED in that mode, which shows its check
detects a real escape.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request

ON_HOST = os.environ.get("SANDBOXD_ATTACK_ON_HOST") == "1"


class Escape(AssertionError):
    """A host-side canary saw the attempt succeed."""


class Daemon:
    def __init__(self, url: str, key: str, data_dir: str, proc: subprocess.Popen):
        self.url, self.key, self.data_dir, self.proc = url, key, data_dir, proc
        self.port = int(url.rsplit(":", 1)[1])

    def api(self, method: str, path: str, body: bytes | None = None, headers=None, timeout=30):
        """(status, body) of a control-plane call; HTTP errors are returned, not raised."""
        h = {"X-API-Key": self.key, "Content-Type": "application/json", **(headers or {})}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


class _Listener:
    """Counts connections accepted on a host socket (TCP on loopback, or abstract unix)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.accepted = 0
        sock.listen(64)
        sock.settimeout(0.2)
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.accepted += 1
            c.close()

    def close(self):
        self._stop = True
        self._t.join(timeout=2)
        self.sock.close()


class Canaries:
    """Host-side things an escape would reach. `check(output)` raises Escape if one tripped."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        tag = os.urandom(6).hex()
        self.tag = tag
        # A secret file on the host, world-readable (any host uid that got out could read it).
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=f"sandboxd-canary-{tag}-"))
        self.dir.chmod(0o777)
        self.secret = "canary-secret-" + os.urandom(16).hex()
        self.secret_file = self.dir / "secret.txt"
        self.secret_file.write_text(self.secret)
        self.secret_file.chmod(0o644)
        # A host file that sandboxes do see: through the idmapped /usr lower layer.
        self.usr_file = pathlib.Path(f"/usr/share/sandboxd-canary-{tag}")
        self.usr_content = f"host /usr canary {tag}\n"
        self.usr_file.write_text(self.usr_content)
        self.usr_file.chmod(0o644)
        self._usr_stat = self._stat(self.usr_file)
        # A host process with a recognisable command line.
        self.proc_marker = f"sandboxd-canary-proc-{tag}"
        self.proc = self._spawn_proc()
        # Host listeners: TCP on loopback and an abstract unix socket.
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", 0))
        self.tcp_port = tcp.getsockname()[1]
        self.tcp = _Listener(tcp)
        self.abstract_name = f"sandboxd-canary-{tag}"
        ab = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ab.bind("\0" + self.abstract_name)
        self.abstract = _Listener(ab)
        # A System V shared memory segment with a fixed key (ipcs on the host lists it).
        self.shm_key = 0x5B0000 | (int(tag[:4], 16) & 0xFFFF)
        subprocess.run(
            [sys.executable, "-c", _SHM_CREATE, str(self.shm_key)], check=True, capture_output=True
        )

    @staticmethod
    def _stat(p: pathlib.Path):
        try:
            st = os.lstat(p)
            return (st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_nlink, p.read_bytes())
        except OSError as e:
            return e.strerror

    def _spawn_proc(self):
        return subprocess.Popen(
            [sys.executable, "-c", "import time,sys; time.sleep(86400)", self.proc_marker],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def env(self) -> dict:
        """What an attempt's script is told about the host (paths and names, never the secret)."""
        return {
            "CANARY_FILE": str(self.secret_file),
            "CANARY_DIR": str(self.dir),
            "CANARY_USR": str(self.usr_file),
            "CANARY_PROC": self.proc_marker,
            "CANARY_PROC_PID": str(self.proc.pid),
            "CANARY_TCP": str(self.tcp_port),
            "CANARY_ABSTRACT": self.abstract_name,
            "CANARY_SHM_KEY": str(self.shm_key),
            "DAEMON_PORT": str(self.daemon.port),
        }

    def check(self, output: str = "", what: str = ""):
        """Raise Escape if any host canary saw the attempt; `output` is what the attempt printed."""
        problems = []
        if self.secret in output:
            problems.append("the host secret file's content was read")
        if self.daemon.key in output:
            problems.append("the daemon's API key was read")
        if self.daemon.data_dir in output:
            problems.append("the daemon's data dir (a host path) was seen inside")
        names = sorted(p.name for p in self.dir.iterdir())
        if names != ["secret.txt"]:
            problems.append(f"the host canary dir changed: {names}")
        elif self.secret_file.read_text() != self.secret:
            problems.append("the host secret file was modified")
        if self._stat(self.usr_file) != self._usr_stat:
            problems.append("the host /usr canary file was modified")
        if self.proc.poll() is not None:
            problems.append(f"the host canary process died ({self.proc.returncode})")
            self.proc = self._spawn_proc()
        if self.tcp.accepted:
            problems.append(f"the host loopback listener accepted {self.tcp.accepted} connections")
            self.tcp.accepted = 0
        if self.abstract.accepted:
            problems.append(f"the host abstract socket accepted {self.abstract.accepted} connections")
            self.abstract.accepted = 0
        shm = subprocess.run(
            [sys.executable, "-c", _SHM_READ, str(self.shm_key)], capture_output=True, text=True
        ).stdout.strip()
        if shm != "intact":
            problems.append(f"the host SysV shm segment changed: {shm}")
        if problems:
            raise Escape(f"{what}: " + "; ".join(problems) + f"\n--- attempt output ---\n{output[-3000:]}")

    def close(self):
        self.tcp.close()
        self.abstract.close()
        self.proc.kill()
        self.proc.wait()
        subprocess.run([sys.executable, "-c", _SHM_REMOVE, str(self.shm_key)], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.usr_file.unlink()
        except OSError:
            pass


_SHM_LIB = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
key = int(sys.argv[1])
"""
_SHM_CREATE = _SHM_LIB + """
shmid = libc.shmget(key, 4096, 0o1600 | 0o600)  # IPC_CREAT|IPC_EXCL, 0600
assert shmid >= 0, ctypes.get_errno()
p = libc.shmat(shmid, None, 0)
ctypes.memmove(p, b"intact", 6)
"""
_SHM_READ = _SHM_LIB + """
shmid = libc.shmget(key, 0, 0)
if shmid < 0:
    print("gone"); sys.exit()
p = libc.shmat(shmid, None, 0o10000)  # SHM_RDONLY
print(ctypes.string_at(p, 6).decode(errors="replace"))
"""
_SHM_REMOVE = _SHM_LIB + """
shmid = libc.shmget(key, 0, 0)
if shmid >= 0:
    libc.shmctl(shmid, 0, None)  # IPC_RMID
"""


def create(daemon: Daemon, timeout: int = 300, **limits):
    """A sandbox made through the REST API (for the sandboxd-only limit fields), connected with
    the official SDK."""
    from e2b import Sandbox

    body = {"templateID": "base", "timeout": timeout, "secure": True, **limits}
    status, out = daemon.api("POST", "/sandboxes", json.dumps(body).encode())
    assert status == 201, (status, out)
    return Sandbox.connect(json.loads(out)["sandboxID"])


NEIGHBOUR_LISTENER = r"""
import os, socket, sys, threading
def serve(sock):
    sock.listen(64)
    while True:
        c, _ = sock.accept()
        with open("/tmp/hits", "a") as f:
            f.write("x\n")
        c.close()
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("0.0.0.0", 8000))
a = socket.socket(socket.AF_UNIX); a.bind("\0" + sys.argv[1])
threading.Thread(target=serve, args=(a,), daemon=True).start()
open("/tmp/ready", "w").close()
serve(t)
"""


def neighbour_hits(neighbour) -> int:
    if not neighbour.files.exists("/tmp/hits"):
        return 0
    return len(neighbour.files.read("/tmp/hits").splitlines())


def inside(sbx, script: str, canaries: Canaries | None = None, user: str = "root", timeout: int = 60) -> str:
    """Run a bash script inside `sbx` as `user`; returns stdout+stderr whatever the exit code.
    The canaries' paths and names are in the environment (CANARY_*). With
    SANDBOXD_ATTACK_ON_HOST=1 the script runs as root on the host instead (self-check mode)."""
    envs = canaries.env() if canaries else {}
    if ON_HOST:
        with tempfile.TemporaryDirectory(prefix="attack-host-") as d:
            r = subprocess.run(
                ["bash", "-c", script], cwd=d, env=dict(os.environ, **envs, HOME=d),
                capture_output=True, text=True, timeout=timeout,
            )
            return r.stdout + r.stderr
    from e2b.sandbox.commands.command_handle import CommandExitException

    try:
        r = sbx.commands.run(script, user=user, envs=envs, timeout=timeout)
        return r.stdout + r.stderr
    except CommandExitException as e:
        return e.stdout + e.stderr


def py(sbx, code: str, canaries: Canaries | None = None, user: str = "root", timeout: int = 60) -> str:
    """Run a Python 3 program inside `sbx` (see `inside`)."""
    return inside(sbx, "python3 - <<'ATTACK_PY'\n" + code + "\nATTACK_PY", canaries, user, timeout)


SYSCALL_PRELUDE = r"""
import ctypes, ctypes.util, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return r, ctypes.get_errno()
def report(name, r, e, want=errno.EPERM):
    # "DENIED" when the call failed with the errno of the defence; anything else is printed as is
    print(name, "DENIED" if (r < 0 and e == want) else f"GOT r={r} errno={errno.errorcode.get(e, e)}")
"""


def assert_all_denied(output: str, names: list[str]):
    """Every named syscall line says DENIED (the sandbox's defence answered, not the kernel)."""
    lines = {ln.split()[0]: ln for ln in output.splitlines() if ln.split()}
    bad = [lines.get(n, f"{n}: no result") for n in names if "DENIED" not in lines.get(n, "")]
    if bad:
        raise Escape("not denied: " + "; ".join(bad) + f"\n--- output ---\n{output[-3000:]}")
