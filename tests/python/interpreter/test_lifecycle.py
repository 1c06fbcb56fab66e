"""The code interpreter end to end against the daemon: first-run latency, kill-during-run and the
interpreter's supervision (it comes back after being killed). The README's example itself runs in
tests/python/test_readme.py."""

import os
import threading
import time

import pytest
from e2b_code_interpreter import Sandbox

from conftest import DEV, TEMPLATE

pytestmark = pytest.mark.skipif(DEV, reason="needs the daemon")


def test_first_run_code_is_fast_after_create():
    """Create returns only once the Python kernel answers, so the first cell does not wait
    for a kernel start."""
    with Sandbox.create(TEMPLATE, timeout=60) as sbx:
        t0 = time.monotonic()
        r = sbx.run_code("1 + 1")
        took = time.monotonic() - t0
        assert r.text == "2"
        assert took < 1.5, f"first execution took {took:.2f}s"


def test_kill_during_run_raises_killed():
    sbx = Sandbox.create(TEMPLATE, timeout=60)
    killer = threading.Timer(1.5, sbx.kill)
    killer.start()
    try:
        with pytest.raises(Exception) as exc:
            sbx.run_code("import time; time.sleep(30)", timeout=25)
        assert "killed" in str(exc.value).lower(), repr(exc.value)
    finally:
        killer.cancel()
        try:
            sbx.kill()
        except Exception:
            pass


def test_interpreter_is_restarted_when_killed():
    with Sandbox.create(TEMPLATE, timeout=60) as sbx:
        assert sbx.run_code("x = 41; x + 1").text == "42"
        # kill the server (not the agent); the agent restarts it, state is lost like a
        # restarted Jupyter
        r = sbx.commands.run("pkill -KILL -f '^sandboxd interpreter' ; echo done", user="root")
        assert "done" in r.stdout
        deadline = time.monotonic() + 20
        last = None
        while time.monotonic() < deadline:
            try:
                r = sbx.run_code("1 + 2", timeout=10)
                if r.text == "3":
                    break
                last = r
            except Exception as e:  # not listening yet
                last = e
            time.sleep(0.2)
        else:
            pytest.fail(f"interpreter did not come back: {last!r}")
        r = sbx.run_code("x")
        assert r.error is not None and r.error.name == "NameError"
        # the layer is mounted read-only at its host path
        ro = sbx.commands.run(
            "touch /opt/sandboxd/interpreter/x 2>&1; test -f /opt/sandboxd/interpreter/.stamp && echo stamp",
            user="root",
        )
        assert "Read-only file system" in ro.stdout and "stamp" in ro.stdout, ro.stdout


@pytest.mark.skipif(not os.path.isdir("/opt/sandboxd/interpreter"), reason="no layer")
def test_layer_visible_inside_matches_host():
    with Sandbox.create(TEMPLATE, timeout=60) as sbx:
        stamp = sbx.files.read("/opt/sandboxd/interpreter/.stamp")
        host = open(os.path.join(os.environ.get("SANDBOXD_INTERPRETER_DIR", "/opt/sandboxd/interpreter"), ".stamp")).read()
        assert stamp == host
