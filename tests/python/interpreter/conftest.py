"""Fixtures for the code-interpreter tests (template `code-interpreter-v1`).

Normal mode: the lead's tests/python/conftest.py starts a real `sandboxd serve`; every test module
shares one sandbox made with `e2b_code_interpreter.Sandbox.create("code-interpreter-v1")`
(CPU is scarce: 2 cores), and tests that change state use their own contexts.

Development mode (SANDBOXD_INTERPRETER_DEV=1): no daemon. A standalone `sandboxd interpreter`
must listen on localhost:49999 (see docs/code-interpreter.md); the SDK's debug mode talks to it
directly, and tests that need envd or the control plane are skipped.
"""

import os
import pathlib
import subprocess

import pytest

TEMPLATE = os.environ.get("E2B_TESTS_TEMPLATE", "code-interpreter-v1")
DEV = os.environ.get("SANDBOXD_INTERPRETER_DEV") == "1"

if DEV:
    # Keep the parent conftest's daemon fixture from starting a daemon.
    os.environ.setdefault("SANDBOXD_TEST_URL", "http://localhost:3000")
    os.environ.setdefault("SANDBOXD_TEST_KEY", "e2b_" + "0" * 40)


@pytest.fixture(scope="session", autouse=True)
def sandboxd(sandboxd):  # noqa: F811 - extends the parent fixture of the same name
    if DEV:
        os.environ["E2B_DEBUG"] = "true"
        os.environ["E2B_API_KEY"] = "e2b_" + "0" * 40
        for k in ("E2B_SANDBOX_URL", "E2B_API_URL", "E2B_DOMAIN", "E2B_VOLUME_API_URL"):
            os.environ.pop(k, None)
    return sandboxd


def _create(**kwargs):
    """A code-interpreter sandbox. No skip: a daemon without the template is a failure (its
    error says to run scripts/setup-interpreter.sh)."""
    from e2b_code_interpreter import Sandbox

    return Sandbox.create(TEMPLATE, **kwargs)


@pytest.fixture(scope="module")
def sbx():
    """One code-interpreter sandbox per test module."""
    s = _create(timeout=600)
    try:
        yield s
    finally:
        if not DEV:
            try:
                s.kill()
            except Exception:
                pass


@pytest.fixture
def fresh_sbx():
    """A sandbox of its own (for tests that need sandbox-level settings)."""
    if DEV:
        pytest.skip("needs the daemon (sandbox-level settings)")
    s = _create(timeout=120, envs={"SBX_GLOBAL": "from-sandbox", "FOO": "global-foo"})
    try:
        yield s
    finally:
        try:
            s.kill()
        except Exception:
            pass


@pytest.fixture
def needs_daemon():
    if DEV:
        pytest.skip("needs the daemon (envd inside the sandbox)")


@pytest.fixture
def peak_rss_kb():
    """Function: peak RSS (VmHWM, KiB) of the interpreter process serving a sandbox."""
    return _peak_rss_kb


def _peak_rss_kb(sbx) -> int:
    """Peak RSS (VmHWM) of the `sandboxd interpreter` process serving `sbx`."""
    if DEV:
        pid = os.environ.get("SANDBOXD_INTERPRETER_PID")
        if not pid:
            out = subprocess.run(
                ["pgrep", "-f", "sandboxd interpreter"], capture_output=True, text=True, check=False
            ).stdout.split()
            assert out, "no local `sandboxd interpreter` process found"
            pid = out[0]
        text = pathlib.Path(f"/proc/{pid}/status").read_text()
    else:
        r = sbx.commands.run(
            "for p in $(pgrep -f 'sandboxd.*interpreter'); do cat /proc/$p/status; break; done",
            user="root",
        )
        text = r.stdout
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for the interpreter process: {text!r}")
