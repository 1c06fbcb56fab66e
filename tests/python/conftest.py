"""Fixtures for the Python tests: a real sandboxd daemon and sandboxes made with the official SDK.

Each pytest process (each xdist worker) starts its own `sandboxd serve` on a free loopback port
with a throwaway data dir, unless SANDBOXD_TEST_URL and SANDBOXD_TEST_KEY point at a running
daemon. The E2B_* variables are set so the SDKs talk to it, exactly as a user would set them.

The suite runs with every SDK row of README "Supported SDKs" (one venv per row, see
scripts/setup.sh). A test that needs what only some rows have is marked
`@pytest.mark.sdk(min="2.51.0")` and/or `below="2.51.0"` (versions of the `e2b` package) and is
skipped, with the reason, in the other rows.
"""

import os
import shutil
import subprocess
import tempfile
import uuid
from importlib.metadata import version

import pytest
from packaging.version import Version

from sandboxd_daemon import BIN, _kill_all, _set_env, _wait_healthy, _free_port  # noqa: F401


E2B_VERSION = version("e2b")


def pytest_report_header(config):
    return f"SDK row: e2b {E2B_VERSION}, e2b-code-interpreter {version('e2b-code-interpreter')}"


def pytest_runtest_setup(item):
    for mark in item.iter_markers("sdk"):
        low, below = mark.kwargs.get("min"), mark.kwargs.get("below")
        have = Version(E2B_VERSION)
        if (low and have < Version(low)) or (below and have >= Version(below)):
            pytest.skip(f"needs e2b in [{low or '-'}, {below or '-'}), this row has {E2B_VERSION}")


@pytest.fixture(scope="session", autouse=True)
def sandboxd():
    """The daemon under test: yields (url, api_key)."""
    ext_url, ext_key = os.environ.get("SANDBOXD_TEST_URL"), os.environ.get("SANDBOXD_TEST_KEY")
    if ext_url and ext_key:
        _set_env(ext_url, ext_key)
        yield ext_url, ext_key
        return
    if not os.path.exists(BIN):
        pytest.exit(f"{BIN} not found: run `cargo build -p sandboxd` first", returncode=2)
    data_dir = tempfile.mkdtemp(prefix="sandboxd-pytest-")
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
        os.environ["SANDBOXD_TEST_DATA_DIR"] = data_dir  # tests that inspect what is stored
        yield url, key
    finally:
        _kill_all(url, key)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
        if os.environ.get("SANDBOXD_KEEP_LOGS") != "1":
            try:
                os.unlink(log_path)
            except OSError:
                pass


@pytest.fixture
def sandbox_test_id():
    return f"test_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def template():
    return "base"


@pytest.fixture
def sandbox(template, sandbox_test_id):
    from e2b import Sandbox

    sbx = Sandbox.create(template, metadata={"sandbox_test_id": sandbox_test_id})
    try:
        yield sbx
    finally:
        try:
            sbx.kill()
        except Exception:
            pass


@pytest.fixture
async def async_sandbox(template, sandbox_test_id):
    from e2b import AsyncSandbox

    sbx = await AsyncSandbox.create(template, metadata={"sandbox_test_id": sandbox_test_id})
    try:
        yield sbx
    finally:
        try:
            await sbx.kill()
        except Exception:
            pass
