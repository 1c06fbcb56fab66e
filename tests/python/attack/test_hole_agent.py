"""Issue 14, holes 3 and 6 (agent part): sandbox root against its own agent (PID 1).

Host-side checks: a marker written through a stolen copy of the agent's stdout must not reach
the host file `<data>/sandboxes/<id>/agent.log`; the sandbox's envd access token (which the
host knows, and which sandbox code is never given) must not be found in the agent's memory;
`/proc/1/fd` must not show the data dir's host path. Checked against main before the fix
(commit 2396b99): PTRACE_ATTACH and pidfd_getfd on PID 1 succeeded, the marker landed in the
host log, and /proc/1/fd named host paths.
"""

import glob

import pytest
from attacklib import SYSCALL_PRELUDE, Escape, py

pytestmark = pytest.mark.host_unsafe


def _agent_log(daemon, sbx) -> bytes:
    paths = glob.glob(f"{daemon.data_dir}/sandboxes/{sbx.sandbox_id}/agent.log")
    return b"".join(open(p, "rb").read() for p in paths)


def test_ptrace_and_pidfd_getfd_on_the_agent(daemon, attacker, canaries):
    """PTRACE_ATTACH/PTRACE_SEIZE to PID 1, pidfd_getfd of each of its descriptors, a marker
    written through the copies of its stdout and stderr (a host file)."""
    marker = f"forged-by-sandbox-{canaries.tag}"
    out = py(attacker, SYSCALL_PRELUDE + rf"""
r, e = sc(101, 16, 1, 0, 0); print("ptrace_attach", "DENIED" if r < 0 else "ATTACHED")
if r == 0:
    sc(101, 17, 1, 0, 0)                              # PTRACE_DETACH
r, e = sc(101, 0x4206, 1, 0, 0); print("ptrace_seize", "DENIED" if r < 0 else "ATTACHED")
if r == 0:
    sc(101, 17, 1, 0, 0)
pidfd, e = sc(434, 1, 0)                              # pidfd_open(1)
got = 0
for n in range(64):
    fd, e = sc(438, pidfd, n, 0)                      # pidfd_getfd
    if fd >= 0:
        got += 1
        if n in (1, 2):                               # its stdout/stderr: the host agent.log
            try:
                os.write(fd, b"{marker}\n")
            except OSError:
                pass
print("pidfd_getfd", "DENIED" if got == 0 else f"GOT {{got}} fds")
""", canaries)
    canaries.check(out, "agent ptrace/getfd")
    if marker.encode() in _agent_log(daemon, attacker):
        raise Escape("a write through a stolen agent fd reached the host file agent.log")
    for line in out.splitlines():
        if line.split()[:1] in (["ptrace_attach"], ["ptrace_seize"], ["pidfd_getfd"]) and "DENIED" not in line:
            raise Escape(f"sandbox root got hold of the agent: {line}\n{out}")


def test_agent_memory_holds_no_reachable_token(attacker, canaries):
    """Read the agent's memory (/proc/1/mem over its mappings, process_vm_readv) and look for the
    sandbox's envd access token."""
    token = attacker._envd_access_token
    assert token
    out = py(attacker, r"""
try:
    maps = open("/proc/1/maps").read().splitlines()
    with open("/proc/1/mem", "rb", 0) as mem:
        for line in maps:
            a, b = (int(x, 16) for x in line.split()[0].split("-"))
            if "r" not in line.split()[1] or b - a > (64 << 20):
                continue
            try:
                mem.seek(a); data = mem.read(b - a)
            except (OSError, ValueError, OverflowError):
                continue
            if __TOKEN__ in data:
                print("TOKEN_FOUND")
except OSError as e:
    print("mem", e.strerror)
""".replace("__TOKEN__", repr(token.encode())), canaries)
    canaries.check(out, "agent memory")
    if "TOKEN_FOUND" in out:
        raise Escape("sandbox root read the envd access token from the agent's memory")


def test_proc_1_fd_names_no_host_path(daemon, attacker, canaries):
    """Hole 6: the agent's fd links (/proc/1/fd, /proc/1/map_files) must not name host paths."""
    out = py(attacker, r"""
import glob, os
for p in glob.glob("/proc/1/fd/*") + glob.glob("/proc/1/map_files/*") + ["/proc/1/exe", "/proc/1/cwd", "/proc/1/root"]:
    try:
        print(p, os.readlink(p))
    except OSError:
        pass
""", canaries)
    canaries.check(out, "/proc/1/fd host paths")
    if "/sys/fs/cgroup/" in out:
        raise Escape(f"host cgroup paths are visible in /proc/1/fd:\n{out}")
