"""Warm pool (docs/pool.md) through the official SDK.

The session daemon of conftest.py has no pool, so this module starts its own daemon with
`--pool base=2:4` and points the E2B_* variables at it for its tests (restored afterwards).
With SANDBOXD_TEST_URL/SANDBOXD_TEST_KEY (an external daemon) the tests run only if that
daemon pools `base` (GET /pool).
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from e2b import Sandbox

import sandboxd_daemon as conftest  # the daemon helpers (not the conftest module: its name is ambiguous under xdist)

pytestmark = pytest.mark.timeout(90)


def _pool(url, key):
    _, body = conftest._api(url, key, "GET", "/pool")
    return next((t for t in json.loads(body)["templates"] if t["template"] == "base"), None)


def _wait_ready(url, key, n=2, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = _pool(url, key)
        if p and p["ready"] >= n:
            return p
        time.sleep(0.05)
    raise AssertionError(f"pool not ready: {_pool(url, key)}")


@pytest.fixture(scope="module")
def pooled(sandboxd):
    """(url, key) of a daemon with a `base` pool; E2B_* point at it during this module."""
    saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN", "E2B_VOLUME_API_URL")}
    ext_url, ext_key = os.environ.get("SANDBOXD_TEST_URL"), os.environ.get("SANDBOXD_TEST_KEY")
    proc = data_dir = None
    if ext_url and ext_key:
        url, key = ext_url, ext_key
        p = _pool(url, key)
        if not p or p["min"] < 1:
            pytest.skip("the external daemon has no pool for base (--pool base=2:4)")
    else:
        data_dir = tempfile.mkdtemp(prefix="sandboxd-pytest-pool-")
        log_path = data_dir + ".log"
        port = conftest._free_port()
        url, key = f"http://127.0.0.1:{port}", "e2b_" + os.urandom(20).hex()
        env = dict(os.environ, SANDBOXD_API_KEY=key, RUST_LOG="info")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [conftest.BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
                 "--pool", "base=2:4"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        conftest._wait_healthy(url, proc, log_path)
    conftest._set_env(url, key)
    try:
        yield url, key
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if proc is not None:
            conftest._kill_all(url, key)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            leftover = [n for n in os.listdir(os.path.join(data_dir, "sandboxes")) if not n.startswith(".")]
            shutil.rmtree(data_dir, ignore_errors=True)
            try:
                os.unlink(data_dir + ".log")
            except OSError:
                pass
            assert leftover == [], f"sandboxes left after shutdown: {leftover}"


def test_create_from_pool_applies_the_request(pooled):
    url, key = pooled
    before = _wait_ready(url, key)
    time.sleep(1.0)
    sbx = Sandbox.create(envs={"FOO": "from-sdk"}, metadata={"who": "pool-test"}, secure=True, timeout=120)
    try:
        after = _pool(url, key)
        assert after["claimed"] == before["claimed"] + 1, after
        # the agent was booted before the request
        out = sbx.commands.run("cat /proc/uptime; cut -d' ' -f22 /proc/1/stat; getconf CLK_TCK").stdout.split()
        age = float(out[0]) - float(out[2]) / float(out[3])
        assert age > 0.9, age
        r = sbx.commands.run('echo "$FOO|$E2B_SANDBOX_ID"')
        assert r.stdout.strip() == f"from-sdk|{sbx.sandbox_id}"
        info = sbx.get_info()
        assert info.metadata == {"who": "pool-test"}
        assert 119 <= (info.end_at - info.started_at).total_seconds() <= 121
        # the request's token is enforced (the SDK sends it; a wrong one is refused)
        req = urllib.request.Request(
            f"{url}/files?path=/etc/hostname",
            headers={"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": "wrong"},
        )
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("a wrong access token was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 401
        sbx.files.write("/home/user/secret.txt", "mine")
        assert sbx.files.read("/home/user/secret.txt") == "mine"
    finally:
        sbx.kill()


def test_claims_do_not_share_state_and_pool_is_not_listed(pooled):
    url, key = pooled
    _wait_ready(url, key)
    a = Sandbox.create(envs={"ONLY_A": "1"}, timeout=60)
    _wait_ready(url, key)
    b = Sandbox.create(timeout=60)
    try:
        a.files.write("/home/user/a.txt", "a")
        a.commands.run("echo x > /tmp/a-tmp")
        r = b.commands.run(
            'test -e /home/user/a.txt && echo LEAK; test -e /tmp/a-tmp && echo LEAK; echo "[$ONLY_A]"'
        )
        assert "LEAK" not in r.stdout and "[]" in r.stdout, r.stdout
        # only the claimed sandboxes are listed, never the pooled ones
        _wait_ready(url, key)
        listed = {s.sandbox_id for s in Sandbox.list().next_items()}
        assert listed == {a.sandbox_id, b.sandbox_id}
        p = _pool(url, key)
        assert p["ready"] + p["booting"] <= p["max"], p
    finally:
        a.kill()
        b.kill()


def _start(data_dir, extra=()):
    """A daemon on `data_dir` with `extra` flags; (proc, url, key, log_path)."""
    port = conftest._free_port()
    url, key = f"http://127.0.0.1:{port}", "e2b_" + os.urandom(20).hex()
    log_path = data_dir + f".{port}.log"
    env = dict(os.environ, SANDBOXD_API_KEY=key, RUST_LOG="info")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [conftest.BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir, *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
    conftest._wait_healthy(url, proc, log_path)
    return proc, url, key, log_path


def _stop(proc, url, key):
    conftest._kill_all(url, key)
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pool_of(url, key, name):
    _, body = conftest._api(url, key, "GET", "/pool")
    return next((t for t in json.loads(body)["templates"] if t["template"] == name), None)


def _wait_pool(url, key, name, claimed_at_least=0, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = _pool_of(url, key, name)
        if p and p["ready"] >= 1 and p["claimed"] >= claimed_at_least:
            return p
        time.sleep(0.05)
    raise AssertionError(f"pool of {name} not ready: {_pool_of(url, key, name)}")


@pytest.mark.timeout(240)
def test_a_built_template_with_a_start_command_is_pooled(sandboxd):
    """`--pool NAME=1` of a template built with the SDK: pooled sandboxes boot from its current
    build with its environment and their start command already running and ready, so a create
    does not wait for it; after a rebuild, sandboxes of the older build are never handed out."""
    from e2b import Template, wait_for_file

    if os.environ.get("SANDBOXD_TEST_URL"):
        pytest.skip("needs daemons of its own (restarted with --pool)")
    saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN", "E2B_VOLUME_API_URL")}
    data_dir = tempfile.mkdtemp(prefix="sandboxd-pytest-pool-built-")
    name = f"pooled-{os.urandom(3).hex()}"

    def build(marker):
        t = (
            Template()
            .from_template("base")
            .set_envs({"FROM_TEMPLATE": "yes"})
            .run_cmd(f"echo {marker} > /home/user/build.txt")
            .set_start_cmd("sh -c 'echo $$ > /tmp/start.pid; sleep 1; touch /tmp/ready; exec sleep 1000'",
                           wait_for_file("/tmp/ready"))
        )
        return Template.build(t, name)

    proc = None
    try:
        proc, url, key, _ = _start(data_dir)
        conftest._set_env(url, key)
        info = build("v1")
        _stop(proc, url, key)
        proc, url, key, log_path = _start(data_dir, ["--pool", f"{name}=1"])
        conftest._set_env(url, key)
        # the build's log outlives the daemon that ran it
        logs = [entry.message for entry in Template.get_build_status(info).log_entries]
        assert any("is ready" in m for m in logs), logs
        before = _wait_pool(url, key, name)
        assert before["claimed"] == 0 and before.get("disabled") is None, before
        sbx = Sandbox.create(name, envs={"MINE": "1"}, timeout=60)
        try:
            after = _pool_of(url, key, name)
            assert after["claimed"] == 1, after
            # the start command ran before the claim: ready, and still running
            r = sbx.commands.run(
                'test -e /tmp/ready && kill -0 "$(cat /tmp/start.pid)" && echo running; '
                'echo "$FROM_TEMPLATE|$MINE"; cat /home/user/build.txt'
            )
            assert r.stdout.split() == ["running", "yes|1", "v1"], r.stdout
        finally:
            sbx.kill()
        # a rebuild: the pooled sandbox of v1 is discarded, never handed out
        _wait_pool(url, key, name, claimed_at_least=1)
        build("v2")
        for _ in range(2):
            sbx = Sandbox.create(name, timeout=60)
            try:
                r = sbx.commands.run("cat /home/user/build.txt; test -e /tmp/ready && echo ready")
                assert r.stdout.split() == ["v2", "ready"], r.stdout
            finally:
                sbx.kill()
        # and the pool refills from the new build, which the next create claims
        claimed = _pool_of(url, key, name)["claimed"]
        _wait_pool(url, key, name)
        sbx = Sandbox.create(name, timeout=60)
        try:
            assert _pool_of(url, key, name)["claimed"] == claimed + 1
            assert sbx.commands.run("cat /home/user/build.txt").stdout.strip() == "v2"
        finally:
            sbx.kill()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if proc is not None:
            _stop(proc, url, key)
        shutil.rmtree(data_dir, ignore_errors=True)
