"""Issue 14, hole 4: files the agent writes for a sandbox count against that sandbox's memory.

Host-side check: how much a 128 MiB sandbox managed to keep in /dev/shm after a 300 MiB upload
(from the host through /files, and from inside through the agent on 127.0.0.1:49983). Checked
against main before the fix (commit 2396b99: 300 MiB kept both ways, charged to the agent's
unlimited cgroup) and with it (commit 0660d16: 507, at most memoryMB kept).
"""

import pytest
from attacklib import Escape, create, py

pytestmark = [pytest.mark.host_unsafe, pytest.mark.timeout(180)]

UPLOAD_MB = 300


@pytest.fixture
def small(daemon):
    s = create(daemon, timeout=120, memoryMB=128)
    yield s
    s.kill()


def _shm_mb(sbx) -> int:
    out = sbx.commands.run("du -sm /dev/shm | cut -f1", user="root").stdout.strip()
    return int(out or 0)


def test_dev_shm_upload_beyond_memory_limit_from_host(small, canaries):
    """Hole 4: a 300 MiB upload into /dev/shm of a 128 MiB sandbox through /files."""
    try:
        small.files.write("/dev/shm/big", b"\xab" * (UPLOAD_MB << 20), user="root")
    except Exception as e:
        print("upload refused:", type(e).__name__, str(e)[:200])
    kept = _shm_mb(small) if small.is_running() else 0
    canaries.check("", "/dev/shm upload")
    if kept > 128:
        raise Escape(f"a 128 MiB sandbox keeps {kept} MiB in /dev/shm (written by the agent, outside its limit)")


def test_dev_shm_upload_from_inside_through_envd(small, canaries):
    """Hole 4, from inside: the same upload sent by sandbox code to the agent on 127.0.0.1:49983."""
    token = small._envd_access_token or ""
    out = py(small, f"""
import http.client
c = http.client.HTTPConnection("127.0.0.1", 49983, timeout=60)
chunk = b"\\xcd" * (1 << 20)
body = (chunk for _ in range({UPLOAD_MB}))  # streamed: this process stays small
c.request("POST", "/files?path=/dev/shm/inner&username=root", body=body, encode_chunked=True,
          headers={{"Content-Type": "application/octet-stream", "X-Access-Token": {token!r}}})
print("status", c.getresponse().status)
""", canaries, user="user")
    kept = _shm_mb(small) if small.is_running() else 0
    canaries.check(out, "/dev/shm upload inside")
    if kept > 128:
        raise Escape(f"a 128 MiB sandbox keeps {kept} MiB in /dev/shm ({out.strip()})")


