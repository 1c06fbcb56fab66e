"""The kernel from inside a sandbox: /sys, /proc/sys, cgroups, modules, kexec, namespaces and
the syscalls the seccomp deny list refuses.

Host-side checks: host sysctl and sysfs values read before and after, the attacker process's
host cgroup, host clocks and the canaries. Syscall attempts also require the errno of the
defence (EPERM from seccomp, ENOSYS for clone3): a kernel error such as EINVAL means the call
got past the sandbox's filter. Self-check: as host root (SANDBOXD_ATTACK_ON_HOST=1) every
attempt not marked host_unsafe reports ESCAPED.
"""

import glob
import os
import pathlib
import subprocess

import pytest
from attacklib import SYSCALL_PRELUDE, Escape, assert_all_denied, inside, py

HOST_KNOBS = [
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/panic",
    "/proc/sys/kernel/pid_max",
    "/proc/sys/vm/overcommit_memory",
    "/proc/sys/fs/inotify/max_user_instances",
    "/proc/sys/user/max_user_namespaces",
    "/proc/sys/net/core/somaxconn",
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/block/loop0/queue/read_ahead_kb",
]


@pytest.fixture
def host_knobs():
    """Host values of sysctls and sysfs files; restored if an attempt changed them."""
    before = {p: pathlib.Path(p).read_text() for p in HOST_KNOBS if os.path.exists(p)}
    yield before
    for p, v in before.items():
        if pathlib.Path(p).read_text() != v:
            try:
                pathlib.Path(p).write_text(v.split("[")[-1].split("]")[0] if "[" in v else v)
            except OSError:
                pass


def _changed(before: dict) -> list[str]:
    return [p for p, v in before.items() if pathlib.Path(p).read_text() != v]


@pytest.mark.host_unsafe
def test_proc_sys_writes_stay_inside(attacker, canaries, host_knobs):
    """Write core_pattern (a pipe to a program: the classic escape), panic, pid_max,
    overcommit, inotify and namespace limits, somaxconn: host values unchanged."""
    out = inside(attacker, r'''
echo "|$CANARY_DIR/pwned %p" > /proc/sys/kernel/core_pattern
echo 1 > /proc/sys/kernel/panic; echo 4194304 > /proc/sys/kernel/pid_max
echo 1 > /proc/sys/vm/overcommit_memory; echo 1 > /proc/sys/fs/inotify/max_user_instances
echo 1 > /proc/sys/user/max_user_namespaces; echo 7 > /proc/sys/net/core/somaxconn
echo 3 > /proc/sys/vm/drop_caches; echo done''', canaries)
    canaries.check(out, "/proc/sys")
    if ch := [p for p in _changed(host_knobs) if p.startswith("/proc/sys") and "/net/" not in p]:
        raise Escape(f"host sysctls changed from inside: {ch}")


def test_sysfs_writes_stay_inside(attacker, canaries, host_knobs):
    """/sys is read-only inside: transparent hugepages, a block device's queue, uevent helpers."""
    out = inside(attacker, r'''
echo never > /sys/kernel/mm/transparent_hugepage/enabled; echo 4 > /sys/block/loop0/queue/read_ahead_kb
echo "$CANARY_DIR/pwned" > /sys/kernel/uevent_helper; echo add > /sys/class/mem/null/uevent
mount -o remount,rw /sys; echo done''', canaries)
    canaries.check(out, "/sys")
    if ch := [p for p in _changed(host_knobs) if p.startswith("/sys")]:
        raise Escape(f"host sysfs changed from inside: {ch}")


def test_sysrq_and_kcore(attacker, canaries):
    """/proc/sysrq-trigger, /proc/kcore, /proc/kallsyms addresses, /proc/kmsg."""
    out = py(attacker, r"""
import os
for p, mode in [("/proc/sysrq-trigger", os.O_WRONLY), ("/proc/kcore", os.O_RDONLY), ("/proc/kmsg", os.O_RDONLY),
                ("/proc/kpagecount", os.O_RDONLY), ("/proc/kpageflags", os.O_RDONLY)]:
    try:
        fd = os.open(p, mode | os.O_NONBLOCK)
        data = os.read(fd, 64) if mode == os.O_RDONLY else b""
        print("OPENED", p, len(data))
    except OSError as e:
        print(p, e.strerror)
addrs = [l.split()[0] for l in open("/proc/kallsyms").read().splitlines()[:50]]
print("KALLSYMS_ADDRESSES", "hidden" if set(addrs) <= {"0000000000000000"} else "visible")
""", canaries)
    canaries.check(out, "sysrq/kcore")
    if "OPENED" in out or "KALLSYMS_ADDRESSES visible" in out:
        raise Escape(out)


def _host_cgroups_of(marker: str) -> list[str]:
    """Host view: the cgroup lines of host processes whose command line has `marker`."""
    lines = []
    for p in glob.glob("/proc/[0-9]*"):
        try:
            if marker.encode() in pathlib.Path(p, "cmdline").read_bytes():
                lines += pathlib.Path(p, "cgroup").read_text().splitlines()
        except OSError:
            pass
    return lines


@pytest.mark.host_unsafe
def test_cgroup_escape_to_parent(attacker, canaries):
    """Move a process out of the sandbox's cgroup: mount cgroupfs (denied), re-open the agent's
    cgroup fds through /proc/1/fd, write to any cgroup.procs/tasks reachable. The host then
    reads the process's cgroups: every controller must still be under the sandbox's `work`."""
    marker = f"cgmove-{canaries.tag}"
    out = inside(attacker, f'''
(exec -a {marker} sleep 300) &
pid=$!
for f in /proc/1/fd/*; do echo $pid > $f 2>/dev/null && echo WROTE $(readlink $f | sed 's,.*/,,'); done
mkdir -p /tmp/cg; mount -t cgroup -o memory cg /tmp/cg && echo $pid > /tmp/cg/cgroup.procs && echo MOVED
for f in /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/cgroup.procs; do echo $pid > $f 2>/dev/null && echo MOVED $f; done
echo done''', canaries)
    canaries.check(out, "cgroup escape")
    groups = _host_cgroups_of(marker)
    inside(attacker, f"pkill -f {marker}")
    assert groups or os.environ.get("SANDBOXD_ATTACK_ON_HOST") == "1", "marker process not found on the host"
    # v1 (this host): the memory, pids and cpu hierarchies; v2: the unified line "0::/...".
    relevant = [g for g in groups if g.split(":", 2)[1] in ("memory", "pids", "cpu")] or [
        g for g in groups if g.startswith("0::")]
    outside = [g for g in relevant if "/work" not in g]
    if outside or not groups:
        raise Escape(f"a sandbox process left its cgroup: {outside or 'not in any sandbox cgroup'}\n{out}")


@pytest.mark.host_unsafe
def test_cgroup_release_agent(attacker, canaries):
    """The release_agent escape: a v1 cgroup hierarchy mounted inside (in a new cgroup and mount
    namespace), release_agent set to a script writing into the host canary dir,
    notify_on_release on a child cgroup emptied at once. Host mode unsafe: it would really set
    the host's release agent."""
    out = inside(attacker, r'''
cat > /tmp/ra.sh <<EOF
#!/bin/sh
touch $CANARY_DIR/pwned-release-agent
EOF
chmod 755 /tmp/ra.sh
unshare -Cm --propagation unchanged sh -c '
  mkdir -p /tmp/cgr && mount -t cgroup -o rdma cgroup /tmp/cgr || mount -t cgroup -o memory cgroup /tmp/cgr || exit 0
  echo MOUNTED; echo /tmp/ra.sh > /tmp/cgr/release_agent && echo AGENT_SET
  mkdir /tmp/cgr/x; echo 1 > /tmp/cgr/x/notify_on_release; sh -c "echo \$\$ > /tmp/cgr/x/cgroup.procs"'
sleep 1; echo done''', canaries)
    canaries.check(out, "release_agent")
    assert "MOUNTED" not in out, out


@pytest.mark.host_unsafe
def test_cgroup_limits_unchanged(attacker, canaries, daemon):
    """Raise the sandbox's own memory and pids limits from inside (through any cgroup file the
    sandbox can reach): the host's files for its `work` group keep their values."""
    sid = attacker.sandbox_id
    files = glob.glob(f"/sys/fs/cgroup/memory/sandboxd-*/{sid}/work/memory.limit_in_bytes") + glob.glob(
        f"/sys/fs/cgroup/pids/sandboxd-*/{sid}/work/pids.max")
    before = {f: pathlib.Path(f).read_text() for f in files}
    out = inside(attacker, r'''
for d in /sys/fs/cgroup /sys/fs/cgroup/memory /sys/fs/cgroup/pids; do
  echo -1 > $d/memory.limit_in_bytes; echo max > $d/pids.max; echo max > $d/memory.max; done 2>/dev/null
for f in /proc/1/fd/*; do t=$(readlink $f); case "$t" in *tasks|*procs) echo -1 > "${t%/*}/memory.limit_in_bytes";; esac; done 2>/dev/null
echo done''', canaries)
    canaries.check(out, "cgroup limits")
    after = {f: pathlib.Path(f).read_text() for f in files}
    assert files or os.environ.get("SANDBOXD_ATTACK_ON_HOST") == "1", "no cgroup files found for the sandbox (v2 host?)"
    if after != before:
        raise Escape(f"cgroup limits changed: {before} -> {after}")


def test_kernel_modules_and_kexec_denied(attacker, canaries):
    """init_module, finit_module, delete_module, kexec_load, kexec_file_load (with invalid
    arguments: on the host they reach the kernel and fail otherwise than EPERM)."""
    out = py(attacker, SYSCALL_PRELUDE + r"""
buf = ctypes.create_string_buffer(b"\x7fELF" + b"\0" * 60)
r, e = sc(175, ctypes.addressof(buf), 64, ctypes.c_char_p(b"")); report("init_module", r, e)
fd = os.open("/usr/bin/true", os.O_RDONLY)
r, e = sc(313, fd, ctypes.c_char_p(b""), 0); report("finit_module", r, e)
r, e = sc(176, ctypes.c_char_p(b"ext4"), 0o4000); report("delete_module", r, e)   # O_NONBLOCK
r, e = sc(246, 0, 0, 0, 0xFFFF0000); report("kexec_load", r, e)
r, e = sc(320, fd, fd, 0, ctypes.c_char_p(b""), 0xFFFF); report("kexec_file_load", r, e)
""", canaries)
    canaries.check(out, "modules/kexec")
    assert_all_denied(out, ["init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load"])


def test_module_autoload_by_socket_family(attacker, canaries):
    """Sockets of every address family and type (the kernel may try to load a module for an
    unknown family): no new module on the host (when the host has modules at all)."""
    before = pathlib.Path("/proc/modules").read_text() if os.path.exists("/proc/modules") else ""
    out = py(attacker, r"""
import socket
opened = 0
for fam in range(1, 46):
    for typ in (1, 2, 3, 5):
        try:
            socket.socket(fam, typ).close(); opened += 1
        except OSError:
            pass
print("opened", opened)
""", canaries)
    canaries.check(out, "module autoload")
    after = pathlib.Path("/proc/modules").read_text() if os.path.exists("/proc/modules") else ""
    if after != before:
        raise Escape(f"host modules changed: {set(after.splitlines()) - set(before.splitlines())}")


def test_setns_into_any_namespace(attacker, canaries):
    """setns on every namespace file visible (/proc/*/ns/*, /proc/*/task/*/ns/*), then read the
    host file by its path."""
    out = py(attacker, SYSCALL_PRELUDE + r"""
import glob
got = set()
for p in glob.glob("/proc/[0-9]*/ns/*") + glob.glob("/proc/[0-9]*/task/*/ns/*"):
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        continue
    r, e = sc(308, fd, 0)
    got.add("ok" if r == 0 else errno.errorcode.get(e, e))
    os.close(fd)
try:
    print(open(os.environ["CANARY_FILE"]).read())
except OSError:
    pass
print("setns", "DENIED" if got == {"EPERM"} else f"GOT {got}")
""", canaries)
    canaries.check(out, "setns")
    assert_all_denied(out, ["setns"])


def test_dangerous_syscalls_denied(attacker, canaries):
    """bpf (a socket filter program), perf_event_open (a CPU cycles counter), io_uring_setup,
    keyctl/add_key/request_key, userfaultfd for kernel faults, unshare(CLONE_NEWUSER), reboot
    with a bad magic, swapon, clone3 (ENOSYS so libc falls back to the filtered clone), x32
    syscall numbers."""
    out = py(attacker, SYSCALL_PRELUDE + r"""
import struct
# bpf(BPF_PROG_LOAD, socket filter "return 0")
insns = ctypes.create_string_buffer(struct.pack("<BBhI", 0xb7, 0, 0, 0) + struct.pack("<BBhI", 0x95, 0, 0, 0))
lic = ctypes.create_string_buffer(b"GPL")
attr = ctypes.create_string_buffer(struct.pack("<IIQQ", 1, 2, ctypes.addressof(insns), ctypes.addressof(lic)) + b"\0" * 96)
r, e = sc(321, 5, ctypes.addressof(attr), len(attr)); report("bpf", r, e)
# perf_event_open(PERF_TYPE_HARDWARE, CPU_CYCLES) on this process, any cpu
pattr = ctypes.create_string_buffer(struct.pack("<IIQ", 0, 128, 0) + b"\0" * 112)
r, e = sc(298, ctypes.addressof(pattr), 0, -1, -1, 0); report("perf_event_open", r, e)
params = ctypes.create_string_buffer(120)
r, e = sc(425, 8, ctypes.addressof(params)); report("io_uring_setup", r, e)
r, e = sc(248, ctypes.c_char_p(b"user"), ctypes.c_char_p(b"sandboxd-attack"), ctypes.c_char_p(b"x"), 1, -2); report("add_key", r, e)
r, e = sc(250, 0, -1, 0, 0, 0); report("keyctl", r, e)                    # KEYCTL_GET_KEYRING_ID
r, e = sc(249, ctypes.c_char_p(b"user"), ctypes.c_char_p(b"x"), 0, 0); report("request_key", r, e)
r, e = sc(323, 0); report("userfaultfd", r, e)                             # kernel faults too
r, e = sc(272, 0x10000000); report("unshare_newuser", r, e)
r, e = sc(169, 0, 0, 0, 0); report("reboot", r, e)                          # bad magic
r, e = sc(167, ctypes.c_char_p(b"/tmp/noswap"), 0); report("swapon", r, e)
r, e = sc(435, 0, 0); report("clone3", r, e, want=errno.ENOSYS)
r, e = sc(0x40000000 | 39); report("x32_getpid", r, e)
r, e = sc(0x40000000 | 321, 5, 0, 0); report("x32_bpf", r, e)
""", canaries)
    canaries.check(out, "syscalls")
    assert_all_denied(out, ["bpf", "perf_event_open", "io_uring_setup", "add_key", "keyctl", "request_key",
                            "userfaultfd", "unshare_newuser", "reboot", "swapon", "clone3", "x32_getpid", "x32_bpf"])


def test_clock_and_time_stay_host_owned(attacker, canaries):
    """settimeofday/clock_settime/adjtimex to the current time (harmless if it worked): the
    host clock belongs to the host; the calls must fail."""
    out = py(attacker, SYSCALL_PRELUDE + r"""
import struct, time
ts = ctypes.create_string_buffer(struct.pack("<qq", int(time.time()), 0))
r, e = sc(227, 0, ctypes.addressof(ts)); report("clock_settime", r, e)
tv = ctypes.create_string_buffer(struct.pack("<qq", int(time.time()), 0))
r, e = sc(164, ctypes.addressof(tv), 0); report("settimeofday", r, e)
tx = ctypes.create_string_buffer(struct.pack("<I", 0x0001) + b"\0" * 204)   # ADJ_OFFSET, offset 0
r, e = sc(159, ctypes.addressof(tx)); report("adjtimex", r, e)
""", canaries)
    canaries.check(out, "clock")
    assert_all_denied(out, ["clock_settime", "settimeofday", "adjtimex"])


def test_host_process_kill_and_ptrace(attacker, canaries):
    """Look for the host canary process by its command line and by its host pid, and kill,
    ptrace, process_vm_readv and pidfd_open it: it must be invisible and alive."""
    out = py(attacker, SYSCALL_PRELUDE + r"""
import glob, signal
marker = os.environ["CANARY_PROC"].encode()
pids = [int(os.environ["CANARY_PROC_PID"])]
for p in glob.glob("/proc/[0-9]*"):
    try:
        if marker in open(p + "/cmdline", "rb").read():
            pids.append(int(p.split("/")[-1])); print("FOUND", p)
    except OSError:
        pass
for pid in set(pids):
    sc(101, 16, pid, 0, 0)                    # PTRACE_ATTACH
    r, e = sc(434, pid, 0)                    # pidfd_open
    if r >= 0:
        sc(424, r, 9, 0, 0)                   # pidfd_send_signal SIGKILL
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
print("done")
""", canaries)
    canaries.check(out, "host process")
    if "FOUND" in out:
        raise Escape(f"the host process is visible inside:\n{out}")


@pytest.mark.host_unsafe
def test_kill_everything_as_root(daemon, canaries):
    """`kill -9 -1` as root inside (a sandbox of its own): host canary process alive, and the
    sandbox's agent keeps answering (PID 1 of a pid namespace ignores it)."""
    from attacklib import create

    s = create(daemon)
    try:
        out = inside(s, "kill -9 -1; echo done", canaries)
        canaries.check(out, "kill -1")
        assert s.commands.run("echo alive").stdout.strip() == "alive"
    finally:
        s.kill()


def test_host_sysv_ipc(attacker, canaries):
    """The host's System V shared memory segment by its key: shmget, attach, write."""
    out = py(attacker, r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(int(os.environ["CANARY_SHM_KEY"]), 0, 0)
print("shmget", shmid, ctypes.get_errno())
if shmid >= 0:
    p = libc.shmat(shmid, None, 0)
    if p not in (None, ctypes.c_void_p(-1).value):
        ctypes.memmove(p, b"PWNED!", 6)
        print("WROTE")
""", canaries)
    canaries.check(out, "SysV IPC")


@pytest.mark.host_unsafe
def test_host_hostname_unchanged(attacker, canaries):
    """sethostname and setdomainname inside change only the sandbox's UTS namespace."""
    import socket

    before = socket.gethostname(), pathlib.Path("/proc/sys/kernel/domainname").read_text()
    out = inside(attacker, "hostname pwned-by-sandbox; echo pwned > /proc/sys/kernel/domainname; hostname", canaries)
    canaries.check(out, "hostname")
    after = socket.gethostname(), pathlib.Path("/proc/sys/kernel/domainname").read_text()
    inside(attacker, "hostname sandbox")
    if after != before:
        subprocess.run(["hostname", before[0]])
        raise Escape(f"host hostname changed: {before} -> {after}")
