"""Host and neighbour processes and network, from inside the attacker sandbox.

Host-side checks: the host loopback listener and abstract unix socket count connections, the
host canary process must stay alive; the neighbour sandbox counts connections to its own
listeners and keeps its marker process and secret file. Self-check: as host root
(SANDBOXD_ATTACK_ON_HOST=1) the host attempts report ESCAPED; the neighbour attempts carry a
positive control (the same script run by the neighbour itself is counted or finds its object).
"""

import pytest
from attacklib import Escape, inside, neighbour_hits, py

CONNECT_ALL = r"""
import os, socket
port = int(os.environ["CANARY_TCP"])
targets = [(socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET, ("127.0.0.2", port)),
           (socket.AF_INET, ("0.0.0.0", port)), (socket.AF_INET6, ("::1", port)),
           (socket.AF_INET6, ("::ffff:127.0.0.1", port)),
           (socket.AF_INET, ("127.0.0.1", int(os.environ["DAEMON_PORT"])))]
for fam, addr in targets:
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(1)
    try:
        s.connect(addr); print("CONNECTED", addr)
    except OSError as e:
        print(addr, e.strerror)
    s.close()
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    u.connect("\0" + os.environ["CANARY_ABSTRACT"]); print("CONNECTED abstract")
except OSError as e:
    print("abstract", e.strerror)
"""


def test_host_loopback_and_abstract_socket(attacker, canaries):
    """Connect to the host's loopback listener (127.0.0.1, ::1, mapped addresses), the daemon's
    own port and the host's abstract unix socket."""
    out = py(attacker, CONNECT_ALL, canaries)
    canaries.check(out, "host network")
    if "CONNECTED" in out:
        raise Escape(out)


def test_host_loopback_as_plain_user(attacker, canaries):
    """The same as uid 1000 (`user`), the default user of commands."""
    out = py(attacker, CONNECT_ALL, canaries, user="user")
    canaries.check(out, "host network (user)")
    if "CONNECTED" in out:
        raise Escape(out)


def test_raw_and_packet_sockets_reach_only_own_links(attacker, canaries):
    """Raw IP and AF_PACKET sockets (sandbox root has CAP_NET_RAW in its own network
    namespace): send SYNs to the host listener's port (on loopback and on the gateway) and list
    the interfaces seen: `lo` and the sandbox's own network link `eth0` (docs/network.md)."""
    out = py(attacker, r"""
import os, socket, struct
port = int(os.environ["CANARY_TCP"])
try:
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    syn = struct.pack("!HHIIBBHHH", 40000, port, 1, 0, 5 << 4, 0x02, 1024, 0, 0)
    for _ in range(3):
        r.sendto(syn, ("127.0.0.1", 0))
        r.sendto(syn, ("10.213.0.1", 0))
    print("raw sent")
except OSError as e:
    print("raw", e.strerror)
try:
    p = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    print("ifaces", sorted(i[1] for i in socket.if_nameindex()))
except OSError as e:
    print("packet", e.strerror)
""", canaries)
    canaries.check(out, "raw sockets")
    if "ifaces" in out and "['lo']" not in out and "['eth0', 'lo']" not in out:
        raise Escape(f"interfaces other than lo and the sandbox's own link inside:\n{out}")


def test_host_unix_socket_paths(attacker, canaries, daemon):
    """Path unix sockets of the host (the daemon's agent and control sockets of every sandbox,
    systemd's, dbus): connect by host path, and through /proc/1/fd of the agent."""
    import glob

    paths = glob.glob(f"{daemon.data_dir}/sandboxes/*/run/*.sock") + [
        "/run/systemd/private", "/run/dbus/system_bus_socket", "/run/systemd/journal/stdout"]
    script = "import socket\n" + "".join(
        f"""
for p in [{p!r}]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(p); print("CONNECTED", len(p))
    except OSError as e:
        print(len(p), e.strerror)
""" for p in paths)
    out = py(attacker, script, canaries)
    canaries.check(out, "host unix sockets")
    if "CONNECTED" in out:
        raise Escape(out)


def test_neighbour_network(attacker, neighbour, canaries):
    """The neighbour's TCP listener (0.0.0.0:8000) and abstract socket, from the attacker."""
    script = f"""
import socket
for addr in [("127.0.0.1", 8000), ("0.0.0.0", 8000)]:
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect(addr); print("CONNECTED", addr)
    except OSError as e:
        print(addr, e.strerror)
u = socket.socket(socket.AF_UNIX)
try:
    u.connect("\\0{neighbour.abstract}"); print("CONNECTED abstract")
except OSError as e:
    print("abstract", e.strerror)
"""
    # Positive control: the same script run by the neighbour itself is counted (3 hits).
    before = neighbour_hits(neighbour)
    py(neighbour, script)
    assert neighbour_hits(neighbour) == before + 3, "the neighbour's listeners must count connections"
    before = neighbour_hits(neighbour)
    out = py(attacker, script, canaries)
    canaries.check(out, "neighbour network")
    if neighbour_hits(neighbour) != before or "CONNECTED" in out:
        raise Escape(f"the neighbour's listeners were reached:\n{out}")


def test_neighbour_by_its_address(attacker, neighbour, canaries):
    """The neighbour's TCP listener on its own network address (sandboxes have one each; the
    host refuses sandbox-to-sandbox traffic whatever the policy)."""
    addr = neighbour.commands.run("ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1").stdout.strip()
    if not addr:
        pytest.skip("the daemon runs without networking (--no-network)")
    script = f"""
import socket
s = socket.socket(); s.settimeout(2)
try:
    s.connect(({addr!r}, 8000)); print("CONNECTED")
except OSError as e:
    print(e.strerror)
"""
    # Positive control: the neighbour reaches its own listener on that address.
    before = neighbour_hits(neighbour)
    assert "CONNECTED" in py(neighbour, script)
    assert neighbour_hits(neighbour) == before + 1, "the neighbour's listener must count connections"
    before = neighbour_hits(neighbour)
    out = py(attacker, script, canaries)
    canaries.check(out, "neighbour by address")
    if neighbour_hits(neighbour) != before or "CONNECTED" in out:
        raise Escape(f"the neighbour was reached on its address:\n{out}")


@pytest.mark.host_unsafe
def test_neighbour_processes(attacker, neighbour, canaries):
    """Find and kill the neighbour's processes (its listener and `sleep 86400`) by name."""
    out = inside(attacker, "pkill -9 -f listen.py; pkill -9 -f 'sleep 86400'; ps -eo pid,args | grep -c 'sleep 86400'; echo done", canaries)
    canaries.check(out, "neighbour processes")
    ps = neighbour.commands.run("ps -eo args").stdout
    if "listen.py" not in ps or "sleep 86400" not in ps:
        raise Escape(f"the neighbour's processes were killed:\n{ps}")


@pytest.mark.host_unsafe
def test_neighbour_files(attacker, neighbour, canaries):
    """Search the whole file tree (and /proc/*/root) for the neighbour's secret file."""
    out = inside(attacker, "find / /proc/[0-9]*/root -xdev -name 'neighbour-secret*' 2>/dev/null | head; cat /home/user/neighbour-secret.txt; echo done", canaries)
    canaries.check(out, "neighbour files")
    if neighbour.secret in out or "neighbour-secret" in out.replace("neighbour-secret.txt: No such", ""):
        raise Escape(out)


def test_neighbour_sysv_ipc_and_signals(attacker, neighbour, canaries):
    """A SysV message queue the neighbour created (by key), and signals to the neighbour's pids
    (pid numbers are the same in every sandbox's namespace; the kill must hit only its own)."""
    key = 0x5A11
    neighbour.commands.run(
        f"python3 -c \"import ctypes; l=ctypes.CDLL(None); print(l.msgget({key}, 0o1600))\"", user="root")
    script = f"""
import ctypes
l = ctypes.CDLL(None, use_errno=True)
q = l.msgget({key}, 0)
print("msgget", q, ctypes.get_errno())
if q >= 0:
    print("FOUND")
"""
    assert "FOUND" in py(neighbour, script), "positive control: the neighbour finds its own queue"
    out = py(attacker, script, canaries)
    canaries.check(out, "neighbour ipc")
    if "FOUND" in out:
        raise Escape(out)


@pytest.mark.host_unsafe
def test_neighbour_unaffected_by_sandbox_wide_kill(daemon, neighbour, canaries):
    """`kill -9 -1` and `pkill -9 .` as root in a third sandbox leave the neighbour's processes."""
    from attacklib import create

    s = create(daemon)
    try:
        inside(s, "pkill -9 .; kill -9 -1; echo done", canaries)
    finally:
        s.kill()
    ps = neighbour.commands.run("ps -eo args").stdout
    if "listen.py" not in ps or "sleep 86400" not in ps:
        raise Escape(f"the neighbour's processes were killed:\n{ps}")
