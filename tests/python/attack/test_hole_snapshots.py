"""Issue 14, holes 1 and 2: what a snapshot leaves on the host.

Host-side checks: a host user (nobody) runs the snapshot's copies of a setuid binary and of a
binary with file capabilities made inside; a sparse file's snapshot copy must stay sparse on
the host disk. Checked against main before the fix (commit 2396b99): the setuid copy gave
euid 0 to nobody, the capability copy let nobody setuid(0), and the sparse file was written out
in full.
"""

import glob
import json
import os
import subprocess

import pytest
from attacklib import Escape

pytestmark = pytest.mark.host_unsafe


def _snapshot(daemon, sbx) -> str:
    status, body = daemon.api("POST", f"/sandboxes/{sbx.sandbox_id}/snapshots", b"{}")
    assert status == 201, (status, body)
    snap = json.loads(body)["snapshotID"]
    return snap


def _delete(daemon, snap):
    daemon.api("DELETE", f"/templates/{snap}")


def _host_copies(daemon, name: str) -> list[str]:
    return glob.glob(f"{daemon.data_dir}/templates/*/**/{name}", recursive=True)


def _as_nobody(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *argv],
                          capture_output=True, text=True, timeout=10)


def test_snapshot_setuid_binary_runs_as_host_root(daemon, attacker, canaries):
    """Hole 1: `cp /usr/bin/id /tmp/x && chmod 4755 /tmp/x` as root inside, then a snapshot; a
    host user runs every host copy of x: none may give euid 0."""
    name = f"suid-{canaries.tag}"
    attacker.commands.run(f"cp /usr/bin/id /tmp/{name} && chmod 4755 /tmp/{name}", user="root")
    snap = _snapshot(daemon, attacker)
    try:
        copies = _host_copies(daemon, name)
        assert copies, "the snapshot must contain the file"
        for c in copies:
            r = _as_nobody([c, "-u"])
            if r.stdout.strip() == "0":
                raise Escape(f"host user nobody got euid 0 by running {c} (mode {oct(os.stat(c).st_mode)})")
    finally:
        _delete(daemon, snap)


def test_snapshot_file_capabilities_usable_on_host(daemon, attacker, canaries):
    """Hole 1: `setcap cap_setuid,cap_dac_read_search+ep` on a copy of python3 inside, then a
    snapshot; a host user runs each host copy and tries setuid(0) and reading the secret."""
    name = f"cap-{canaries.tag}"
    attacker.commands.run(f"cp /usr/bin/python3 /tmp/{name} && setcap cap_setuid,cap_dac_read_search+ep /tmp/{name}",
                          user="root")
    canaries.secret_file.chmod(0o600)
    snap = _snapshot(daemon, attacker)
    try:
        for c in _host_copies(daemon, name):
            r = _as_nobody([c, "-c", f"import os\ntry:\n os.setuid(0); print('UID0')\nexcept OSError: pass\n"
                                     f"try:\n print(open({str(canaries.secret_file)!r}).read())\nexcept OSError: pass"])
            canaries.check(r.stdout, "snapshot file capabilities")
            if "UID0" in r.stdout:
                raise Escape(f"host user nobody could setuid(0) with {c}")
    finally:
        canaries.secret_file.chmod(0o644)
        _delete(daemon, snap)


def test_snapshot_sparse_file_fills_host_disk(daemon, attacker):
    """Hole 2: a 256 MiB sparse file (no blocks used) must stay sparse in the snapshot's host
    copy (on main before the fix it was written out in full; 16 TiB would fill the disk)."""
    name = f"sparse-{os.urandom(4).hex()}"
    attacker.commands.run(f"truncate -s 256M /home/user/{name}", user="root")
    snap = _snapshot(daemon, attacker)
    try:
        copies = _host_copies(daemon, name)
        assert copies
        for c in copies:
            used = os.stat(c).st_blocks * 512
            if used > (4 << 20):
                raise Escape(f"the snapshot copy of a sparse file uses {used >> 20} MiB on the host disk")
    finally:
        _delete(daemon, snap)
