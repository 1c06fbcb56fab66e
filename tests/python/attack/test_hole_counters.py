"""Issue 14, hole 5: no host-wide counter may be emptied from one sandbox.

Host-side checks: host root and a neighbour sandbox still create an inotify instance while a
sandbox holds all it can; the number of namespaces one sandbox can hold. Checked against main
before the fix (commit 2396b99): the sandbox's user held 8,193 inotify instances (counted
against host root) and sandbox root held 10,001 UTS namespaces; with the sec-agent branch's
per-sandbox caps (commit 1a27fd9) both stop below the bounds.
"""

import subprocess
import sys
import time

import pytest
from attacklib import Escape, py

pytestmark = [pytest.mark.host_unsafe, pytest.mark.timeout(180)]


HOST_INOTIFY = "import ctypes; l=ctypes.CDLL(None, use_errno=True); fd=l.inotify_init1(0); print(fd, ctypes.get_errno())"


def test_inotify_instances_of_host_root(attacker, neighbour, canaries):
    """Hole 5: `user` inside opens inotify instances until refused (up to 8,193) and holds them;
    a host root process and the neighbour sandbox must still get one, and a per-sandbox bound
    must stop it at 8,192 (they count against host root's fs.inotify.max_user_instances)."""
    attacker.files.write("/tmp/hold.py", HOLD_INOTIFY)
    attacker.commands.run("python3 /tmp/hold.py > /tmp/held.txt 2>&1", background=True, user="user")
    for _ in range(200):
        if attacker.files.exists("/tmp/holding"):
            break
        time.sleep(0.05)
    host = subprocess.run([sys.executable, "-c", HOST_INOTIFY], capture_output=True, text=True).stdout.split()
    neighbour_out = py(neighbour, HOST_INOTIFY, user="user").split()
    held = attacker.files.read("/tmp/held.txt").strip()
    attacker.commands.run("pkill -f hold.py", user="root")
    canaries.check(held, "inotify")
    if int(host[0]) < 0 or int(neighbour_out[0]) < 0:
        raise Escape(f"one sandbox ({held}) left none: host root got {host}, the neighbour {neighbour_out}")
    if int(held.split()[1]) > 8192:
        raise Escape(f"one sandbox {held} inotify instances: no per-sandbox bound (they count against host root)")


HOLD_INOTIFY = r"""
import ctypes, resource, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
l = ctypes.CDLL(None, use_errno=True)
fds = []
while len(fds) < 8193:
    fd = l.inotify_init1(0)
    if fd < 0:
        break
    fds.append(fd)
print("held", len(fds), flush=True)
open("/tmp/holding", "w").close()
time.sleep(20)
"""


def test_namespaces_charged_to_host_root(attacker, canaries):
    """Hole 5: sandbox root creates and holds UTS namespaces (unshare, then keep an fd on each,
    in up to 64 processes to get past the fd limit); a per-sandbox bound must stop it at 10,000
    (one sandbox once held 96,000 on this host and host root could create none)."""
    out = py(attacker, r"""
import ctypes, os, resource, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
per = max(1, min(hard - 32, 10001))
l = ctypes.CDLL(None, use_errno=True)
total, err = 0, 0
for _ in range(64):
    if total > 10000:
        break
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        n = 0
        fds = []
        while n < min(per, 10001 - total):
            if l.unshare(0x04000000) != 0:        # CLONE_NEWUTS
                break
            fds.append(os.open("/proc/self/ns/uts", os.O_RDONLY))
            n += 1
        os.write(w, f"{n} {ctypes.get_errno()}".encode()); os.close(w)
        time.sleep(5)
        os._exit(0)
    os.close(w)
    n, e = map(int, os.read(r, 64).split()); os.close(r)
    total += n
    if n == 0:
        err = e
        break
print("held", total, "errno", err)
""", canaries, timeout=120)
    canaries.check(out, "namespaces")
    held = int(out.split("held", 1)[1].split()[0]) if "held" in out else 0
    if held > 10000:
        raise Escape(f"one sandbox held {held} UTS namespaces (host max {open('/proc/sys/user/max_uts_namespaces').read().strip()})")
