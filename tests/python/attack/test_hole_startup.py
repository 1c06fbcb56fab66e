"""Issue 14, hole 11: leftovers after a `kill -9` during start-up.

Host-side check: after 5 rounds of starting the daemon and killing it with SIGKILL at a random
moment of its start-up, then one clean start, no mount and no file is left under the data dir's
`.trash`. Checked against main before the fix (commit 0660d16: the quota probe's image files
`.trash/.quota-probe-<pid>.img` were left in 3 runs out of 4) and with it (commit 742c635, which
sweeps files too: 4 runs out of 4 clean).
"""

import os
import random
import shutil
import subprocess
import tempfile
import time

import pytest
from attacklib import Escape
from sandboxd_daemon import _wait_healthy
from test_hole_robustness import _remove, _start_daemon, _stop

pytestmark = [pytest.mark.host_unsafe, pytest.mark.timeout(180)]


def test_kill_during_startup_leaves_nothing_mounted():
    """Hole 11: kill -9 of the daemon at random moments of its start-up (5 rounds), then a clean
    start: no mount and no quota image left under the data dir's .trash."""
    data_dir = tempfile.mkdtemp(prefix="sandboxd-attack-crash-")
    try:
        for _ in range(5):
            proc, url, key = _start_daemon(data_dir)
            time.sleep(random.uniform(0.0, 0.4))
            proc.kill()
            proc.wait()
        proc, url, key = _start_daemon(data_dir)
        _wait_healthy(url, proc, data_dir + ".log")
        time.sleep(1)
        mounts = [ln for ln in open("/proc/self/mountinfo") if f"{data_dir}/.trash" in ln]
        trash = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(data_dir, ".trash")) for f in fs]
        _stop(proc, url, key)
        if mounts or trash:
            raise Escape(f"start-up leftovers after kill -9: mounts {mounts[:3]}, files {trash[:5]}")
    finally:
        subprocess.run(["sh", "-c", f"grep -o '{data_dir}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l"],
                       capture_output=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        _remove(data_dir + ".log")
