"""The attack suite's fixtures: its own daemon (with a known data dir, so host-side checks can
look at what the daemon keeps on disk), host canaries, attacker and neighbour sandboxes.

Every attempt runs code inside a sandbox (or sends requests as a client) and then asks the host
canaries whether anything reached them; a canary that tripped is an escape and fails the test
with `Escape`. At the end, the terminal summary lists each attempt as contained or ESCAPED.
The helpers are in attacklib.py (a module name of its own: `conftest` is ambiguous here).
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from sandboxd_daemon import BIN, _free_port, _kill_all, _set_env, _wait_healthy  # noqa: E402

from attacklib import NEIGHBOUR_LISTENER, ON_HOST, Canaries, Daemon, create  # noqa: E402

def pytest_configure(config):
    config.addinivalue_line("markers", "host_unsafe: never run as host root in the self-check mode")
    config.addinivalue_line("markers", "abuse: resource abuse measured against a neighbour")
    config.addinivalue_line("markers", "open_hole: an attempt that still escapes; not run by CI (docs/security.md)")


def pytest_collection_modifyitems(config, items):
    if ON_HOST:
        skip = pytest.mark.skip(reason="host_unsafe: not run on the host")
        for item in items:
            if "host_unsafe" in item.keywords:
                item.add_marker(skip)


_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        name = report.nodeid.split("::", 1)[-1]
        if report.passed:
            _outcomes[name] = "contained"
        elif report.skipped:
            _outcomes[name] = "skipped"
        elif "Escape" in str(report.longrepr):
            _outcomes[name] = "ESCAPED"
        else:
            _outcomes[name] = "FAILED (error in the attempt, not a detected escape)"


def pytest_terminal_summary(terminalreporter):
    if not _outcomes:
        return
    tr = terminalreporter
    tr.section("attack suite: one line per attempt")
    for name in sorted(_outcomes):
        tr.write_line(f"{_outcomes[name]:>10}  {name}")
    counts: dict[str, int] = {}
    for v in _outcomes.values():
        counts[v.split()[0]] = counts.get(v.split()[0], 0) + 1
    tr.write_line(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


# ---------------------------------------------------------------------------------------------
# The daemon


@pytest.fixture(scope="session", autouse=True)
def sandboxd(daemon):
    """Overrides the suite-wide daemon: attack tests use `daemon`, with its data dir known."""
    yield daemon.url, daemon.key


@pytest.fixture(scope="session")
def daemon():
    if not os.path.exists(BIN):
        pytest.exit(f"{BIN} not found: run `cargo build -p sandboxd` first", returncode=2)
    data_dir = tempfile.mkdtemp(prefix="sandboxd-attack-")
    log_path = data_dir + ".log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    key = "e2b_" + os.urandom(20).hex()
    env = dict(os.environ, SANDBOXD_API_KEY=key, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        _wait_healthy(url, proc, log_path)
        _set_env(url, key)
        yield Daemon(url, key, data_dir, proc)
    finally:
        _kill_all(url, key)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
        if os.environ.get("SANDBOXD_KEEP_LOGS") != "1":
            try:
                os.unlink(log_path)
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# Host canaries


@pytest.fixture
def canaries(daemon):
    """Fresh host canaries for each attempt (an escape in one attempt cannot mask the next)."""
    c = Canaries(daemon)
    try:
        yield c
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# Sandboxes and running attempts


@pytest.fixture(scope="module")
def attacker(daemon):
    s = create(daemon)
    yield s
    try:
        s.kill()
    except Exception:
        pass


@pytest.fixture(scope="module")
def neighbour(daemon):
    """A sandbox next to the attacker: a TCP listener on 0.0.0.0:8000 and an abstract unix
    socket that count connections in /tmp/hits, a secret file and a marker process."""
    s = create(daemon)
    s.secret = "neighbour-secret-" + os.urandom(12).hex()
    s.abstract = "neighbour-" + os.urandom(6).hex()
    s.files.write("/home/user/neighbour-secret.txt", s.secret)
    s.files.write("/tmp/listen.py", NEIGHBOUR_LISTENER)
    s.commands.run(f"python3 /tmp/listen.py {s.abstract}", background=True, user="root")
    s.commands.run("sleep 86400", background=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if s.files.exists("/tmp/ready"):
            break
        time.sleep(0.05)
    yield s
    try:
        s.kill()
    except Exception:
        pass

