"""Host files from inside a sandbox: /proc, chroot, file handles, links, devices, mounts.

Each attempt runs as root inside the attacker sandbox, then `canaries.check` looks on the host
(secret file read or changed, canary dir changed, /usr canary changed, data dir path seen).
Self-check: with SANDBOXD_ATTACK_ON_HOST=1 (scripts run as host root) each of these reports
ESCAPED; that was run once when the suite was written (see attacklib.py).
"""

import os
import subprocess

import pytest
from attacklib import SYSCALL_PRELUDE, Escape, assert_all_denied, inside, py


def test_proc_1_root_reads_host_file(attacker, canaries):
    """/proc/1/root of PID 1 (the agent) and of every visible pid: the host file through a
    process's root link. On the host, /proc/1/root is the host's root."""
    out = inside(attacker, 'for p in /proc/[0-9]*; do cat "$p/root$CANARY_FILE" 2>/dev/null; done; echo done', canaries)
    canaries.check(out, "/proc/<pid>/root")


def test_proc_cwd_and_fd_links_reach_host_dirs(attacker, canaries):
    """Every /proc/<pid>/{cwd,root,fd/*,map_files/*} link, followed with the host path below it."""
    out = py(attacker, r"""
import glob, os
rel = os.environ["CANARY_FILE"].lstrip("/")
for link in glob.glob("/proc/[0-9]*/cwd") + glob.glob("/proc/[0-9]*/root") + glob.glob("/proc/[0-9]*/fd/*") + glob.glob("/proc/[0-9]*/map_files/*"):
    for up in range(0, 8):
        p = os.path.join(link, *([".."] * up), rel)
        try:
            print(open(p).read())
        except OSError:
            pass
print("done")
""", canaries)
    canaries.check(out, "/proc/<pid>/cwd|fd")


def test_proc_mountinfo_names_no_host_path(attacker, canaries):
    """Mount tables inside must not name host paths (the data dir, the canary dir)."""
    out = inside(attacker, "cat /proc/[0-9]*/mountinfo /proc/[0-9]*/mounts /proc/[0-9]*/mountstats 2>/dev/null", canaries)
    assert "overlay" in out or os.environ.get("SANDBOXD_ATTACK_ON_HOST") == "1"
    canaries.check(out, "mountinfo")
    if "/tmp/sandboxd-" in out:
        raise Escape(f"a host temp path is in the mount table:\n{out[:2000]}")


def test_proc_environ_and_cmdline_hold_no_host_secret(attacker, canaries):
    """Every /proc/<pid>/environ and cmdline readable inside: the daemon's API key must not be
    there (on the host, the daemon's environ holds SANDBOXD_API_KEY)."""
    out = inside(attacker, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/environ; tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null", canaries)
    canaries.check(out, "/proc/<pid>/environ")


def test_chroot_double_break(attacker, canaries):
    """The classic chroot escape: chroot into a subdir while keeping a dir fd outside, fchdir to
    it and walk up with '..'; then read the host file's path."""
    out = py(attacker, r"""
import os
os.makedirs("/tmp/jail", exist_ok=True)
keep = os.open("/", os.O_RDONLY)
try:
    os.chroot("/tmp/jail")
    os.fchdir(keep)
    for _ in range(64):
        os.chdir("..")
    os.chroot(".")
except OSError as e:
    print("chroot:", e)
try:
    print(open(os.environ["CANARY_FILE"]).read())
except OSError as e:
    print("read:", e.strerror)
""", canaries)
    canaries.check(out, "chroot break")


def test_open_by_handle_at_host_inodes(attacker, canaries):
    """open_by_handle_at (the 'shocker' escape): forge ext4 handles for low inode numbers on
    every mount fd available and read the host file's path relative to what opens. No forged
    handle may open."""
    out = py(attacker, SYSCALL_PRELUDE + r"""
import struct
NR_OPEN_BY_HANDLE_AT = 304
rel = os.environ["CANARY_FILE"].lstrip("/")
results = set()
for mnt in ["/", "/usr", "/tmp", "/proc/self/fd/0", "/dev/null"]:
    try:
        mfd = os.open(mnt, os.O_RDONLY)
    except OSError:
        continue
    for ino in (2, 11, 12, 128):
        # struct file_handle { u32 handle_bytes; int handle_type; u32 ino; u32 gen; }
        h = ctypes.create_string_buffer(struct.pack("IiII", 8, 1, ino, 0))
        r, e = sc(NR_OPEN_BY_HANDLE_AT, mfd, ctypes.addressof(h), os.O_RDONLY | os.O_DIRECTORY)
        results.add(e if r < 0 else "opened")
        if r >= 0:
            try:
                fd = os.open(rel, os.O_RDONLY, dir_fd=r)
                print(os.read(fd, 4096).decode())
            except OSError:
                pass
# EPERM (no CAP_DAC_READ_SEARCH over the host's mounts) or ESTALE (handles on mounts the
# sandbox owns are decoded since 6.x, but a forged one leads nowhere) are both contained.
print("open_by_handle_at", "DENIED" if "opened" not in results else f"GOT {results}")
""", canaries)
    canaries.check(out, "open_by_handle_at")
    assert_all_denied(out, ["open_by_handle_at"])


def test_hard_link_to_host_usr_file(attacker, canaries):
    """A hard link to a host file seen through /usr, then writes through the link: the host
    file must not change (overlay copies up into the sandbox's own layer)."""
    out = inside(attacker, 'ln "$CANARY_USR" /tmp/hl && echo pwned >> /tmp/hl; cat /tmp/hl; ln "$CANARY_USR" /usr/share/hl2 && echo pwned >> /usr/share/hl2; echo done', canaries)
    canaries.check(out, "hard link")


def test_symlink_to_host_usr_file(attacker, canaries):
    """A symlink to the /usr canary, then write, truncate, chmod, chown, xattr through it."""
    out = inside(attacker, r'''
ln -sf "$CANARY_USR" /tmp/sl
echo pwned > /tmp/sl; chmod 4777 /tmp/sl; chown 1000:1000 /tmp/sl
setfattr -n user.pwned -v 1 /tmp/sl; setfattr -n trusted.overlay.opaque -v y /tmp/sl
truncate -s 0 "$CANARY_USR"; echo done''', canaries)
    canaries.check(out, "symlink write")


def test_usr_file_rename_and_unlink(attacker, canaries):
    """Rename over, unlink and replace the /usr canary from inside: host file unchanged."""
    out = inside(attacker, r'''
mv "$CANARY_USR" /tmp/moved; echo new > "$CANARY_USR"; rm -f "$CANARY_USR"; ls -la /usr/share | head -3; echo done''', canaries)
    canaries.check(out, "rename/unlink")


def test_symlink_to_host_path(attacker, canaries):
    """A symlink to the host secret's absolute path resolves inside the sandbox root."""
    out = inside(attacker, 'ln -sf "$CANARY_FILE" /tmp/s; cat /tmp/s; ln -sf "$CANARY_DIR" /tmp/d; echo pwned > /tmp/d/pwned.txt; echo done', canaries)
    canaries.check(out, "symlink to host path")


@pytest.fixture
def host_loop_device(canaries):
    """A host loop device holding the canary secret: (major, minor)."""
    img = canaries.dir.parent / f"sandboxd-canary-{canaries.tag}.img"
    with open(img, "wb") as f:
        f.write((canaries.secret + "\n").encode() * 64)
        f.truncate(1 << 20)
    dev = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True, text=True, check=True).stdout.strip()
    st = os.stat(dev)
    try:
        yield os.major(st.st_rdev), os.minor(st.st_rdev)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        img.unlink()


def test_mknod_host_block_device(attacker, canaries, host_loop_device):
    """mknod of a host block device (a loop device with the secret on it), then read it."""
    major, minor = host_loop_device
    out = inside(attacker, f'mknod /tmp/blk b {major} {minor}; head -c 4096 /tmp/blk; mknod /dev/shm/blk b {major} {minor}; head -c 4096 /dev/shm/blk; echo done', canaries)
    canaries.check(out, "mknod block device")


def test_mknod_kmsg_writes_host_log(attacker, canaries):
    """mknod /dev/kmsg (1:11) and write a marker: the host kernel log must not get it."""
    marker = f"sandboxd-attack-kmsg-{canaries.tag}"
    out = inside(attacker, f'mknod /tmp/kmsg c 1 11; echo {marker} > /tmp/kmsg; echo {marker} > /dev/kmsg; rm -f /tmp/kmsg; echo done', canaries)
    canaries.check(out, "mknod kmsg")
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    if marker in dmesg:
        raise Escape("a sandbox wrote to the host kernel log")


def test_dev_has_no_host_devices(attacker, canaries):
    """Open every device node under /dev and the host's usual device paths for reading: none
    of them may give the host disk or memory."""
    out = py(attacker, r"""
import os, stat
for p in ["/dev/mem", "/dev/kmem", "/dev/port", "/dev/sda", "/dev/vda", "/dev/vda1", "/dev/nvme0n1", "/dev/loop0",
          "/dev/loop-control", "/dev/kvm", "/dev/fuse", "/dev/net/tun", "/dev/console", "/dev/tty0", "/dev/kmsg",
          "/dev/disk/by-id", "/dev/mapper/control"]:
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        mode = os.fstat(fd).st_mode
        os.close(fd)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            print("OPENED", p)
    except OSError:
        pass
for name in sorted(os.listdir("/dev")):
    print("dev", name)
""", canaries)
    canaries.check(out, "/dev")
    if "OPENED" in out:
        raise Escape(f"a host device opened inside:\n{out}")


@pytest.mark.host_unsafe
def test_mount_syscalls_denied(attacker, canaries):
    """mount (tmpfs, bind, proc, cgroup), umount of /proc's masks, and the new mount API, from
    a fresh mount namespace (allowed) where root would otherwise own the mounts."""
    out = py(attacker, SYSCALL_PRELUDE + r"""
import subprocess
os.makedirs("/tmp/m", exist_ok=True)
b = lambda s: ctypes.c_char_p(s.encode())
r, e = sc(165, b("none"), b("/tmp/m"), b("tmpfs"), 0, 0); report("mount_tmpfs", r, e)
r, e = sc(165, b("/"), b("/tmp/m"), 0, 4096, 0); report("mount_bind", r, e)      # MS_BIND
r, e = sc(166, b("/proc/meminfo"), 2); report("umount2", r, e)                  # MNT_DETACH
r, e = sc(428, -100, b("/"), 1); report("open_tree", r, e)                       # OPEN_TREE_CLONE
r, e = sc(430, b("tmpfs"), 0); report("fsopen", r, e)
r, e = sc(433, -100, b("/"), 0); report("fspick", r, e)
r, e = sc(155, b("/tmp"), b("/tmp/m")); report("pivot_root", r, e)
print(subprocess.run(["unshare", "-m", "--propagation", "unchanged", "sh", "-c",
                      "mount -t proc proc /tmp/m && echo MOUNTED; mount -t cgroup -o memory cg /tmp/m && echo MOUNTED"],
                     capture_output=True, text=True).stdout)
""", canaries)
    canaries.check(out, "mount")
    assert "MOUNTED" not in out, out
    assert_all_denied(out, ["mount_tmpfs", "mount_bind", "umount2", "open_tree", "fsopen", "fspick", "pivot_root"])
