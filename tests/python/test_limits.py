"""Resource limits seen from inside a sandbox made with the official SDK (docs/limits.md).

The SDK has no cpuCount/memoryMB/diskSizeMB parameters, so these use the template defaults:
2 vCPUs, 512 MiB of memory, 1 GiB of disk.
"""

import os

import pytest
from e2b import AsyncSandbox, NotEnoughSpaceException, Sandbox


@pytest.fixture
def sbx():
    s = Sandbox.create("base", timeout=120)
    yield s
    s.kill()


def test_nproc_is_the_cpu_count(sbx):
    n = int(sbx.commands.run("nproc").stdout.strip())
    assert n == min(2, os.cpu_count() or 1)
    aff = sbx.commands.run("python3 -c 'import os; print(len(os.sched_getaffinity(0)))'").stdout
    assert int(aff) == n


def test_free_shows_the_memory_limit(sbx):
    total = sbx.commands.run("free -m | awk '/^Mem:/{print $2}'").stdout.strip()
    assert total == "512"
    meminfo = sbx.files.read("/proc/meminfo")
    assert meminfo.startswith("MemTotal:         524288 kB")
    # swap is off in sandboxes
    assert sbx.commands.run("free -m | awk '/^Swap:/{print $2}'").stdout.strip() == "0"


def test_writes_stop_at_the_disk_size(sbx):
    df = int(sbx.commands.run("df -B1 --output=size /home/user | tail -1").stdout.strip())
    assert (900 << 20) <= df <= (1 << 30)
    # 1.1 GiB through Python file writes: fails with ENOSPC
    r = sbx.commands.run(
        "python3 - <<'PY'\n"
        "import errno\n"
        "chunk = b'x' * (1 << 20)\n"
        "n = 0\n"
        "try:\n"
        "    with open('/home/user/big', 'wb') as f:\n"
        "        for _ in range(1126):\n"
        "            f.write(chunk)\n"
        "            n += 1\n"
        "        f.flush()\n"
        "        import os; os.fsync(f.fileno())\n"
        "    print('wrote', n)\n"
        "except OSError as e:\n"
        "    print('failed', n, errno.errorcode[e.errno], e.strerror)\n"
        "PY",
        timeout=120,
    )
    out = r.stdout.strip()
    assert out.startswith("failed") and "ENOSPC" in out and "No space left on device" in out, out
    assert int(out.split()[1]) < 1126
    # the disk is full: an upload through the SDK gets 507 -> NotEnoughSpaceException
    with pytest.raises(NotEnoughSpaceException):
        sbx.files.write("/home/user/more", b"y" * (4 << 20))
    # deleting frees the space again
    sbx.commands.run("rm -f /home/user/big /home/user/more && sync")
    info = sbx.files.write("/home/user/more", b"y" * (4 << 20))
    assert info.path == "/home/user/more"


async def test_async_sandbox_sees_the_same_limits():
    s = await AsyncSandbox.create("base", timeout=60)
    try:
        assert (await s.commands.run("free -m | awk '/^Mem:/{print $2}'")).stdout.strip() == "512"
        n = int((await s.commands.run("nproc")).stdout.strip())
        assert n == min(2, os.cpu_count() or 1)
    finally:
        await s.kill()
