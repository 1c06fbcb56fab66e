"""Sandbox egress through the official SDK (docs/network.md), against a fake internet
(fake_internet.py) and a daemon of this module started with --dns-upstream pointed there:
default on (curl by name, pip install from a package index), allow_internet_access=False,
network= allow/deny lists (allow wins), update_network cutting access at once, the daemon's
port and metadata unreachable, bad policies refused."""

import os
import shutil
import subprocess
import tempfile

import pytest
from e2b import Sandbox, Template
from e2b.exceptions import InvalidArgumentException, SandboxException

import fake_internet as inet
import sandboxd_daemon as conftest

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def egress_daemon(sandboxd):
    """(url, key) of a daemon whose DNS upstream is the fake internet; E2B_* point at it."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("network egress tests need root (CI=true: not skipping)")
        pytest.skip("network egress tests need root")
    if os.environ.get("SANDBOXD_TEST_URL"):
        pytest.skip("needs its own daemon (--dns-upstream to the fake internet)")
    net = inet.FakeInternet()
    saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN", "E2B_VOLUME_API_URL")}
    data_dir = tempfile.mkdtemp(prefix="sandboxd-pytest-net-")
    log_path = data_dir + ".log"
    port = conftest._free_port()
    url, key = f"http://127.0.0.1:{port}", "e2b_" + os.urandom(20).hex()
    env = dict(os.environ, SANDBOXD_API_KEY=key, RUST_LOG="info")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [conftest.BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
             "--dns-upstream", inet.DNS],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        conftest._wait_healthy(url, proc, log_path)
        conftest._set_env(url, key)
        yield url, key, port
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        conftest._kill_all(url, key)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
        try:
            os.unlink(log_path)
        except OSError:
            pass
        net.close()


def _probe(sbx: Sandbox, addr: str, port: int) -> str:
    r = sbx.commands.run(
        f"timeout 2 bash -c 'exec 3<>/dev/tcp/{addr}/{port}' 2>/dev/null && echo ok || echo refused"
    )
    return r.stdout.strip()


def test_default_sandbox_reaches_the_internet_and_installs_packages(egress_daemon):
    sbx = Sandbox.create(timeout=120)
    try:
        r = sbx.commands.run("curl -sS --max-time 5 http://web.test/hello.txt")
        assert r.stdout == inet.HELLO
        r = sbx.commands.run(
            "python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -q --disable-pip-version-check "
            f"--index-url http://pypi.test/simple --trusted-host pypi.test {inet.PACKAGE} && "
            f"/tmp/venv/bin/python -c 'import {inet.PACKAGE}; print({inet.PACKAGE}.GREETING)'",
            timeout=120,
        )
        assert r.stdout.strip() == "installed from the fake internet"
        # the daemon's API, the host's addresses and cloud metadata stay out of reach
        _, _, port = egress_daemon
        assert _probe(sbx, "10.213.0.1", port) == "refused"
        assert _probe(sbx, inet.HOST_TRANSIT, port) == "refused"
        assert _probe(sbx, "169.254.169.254", 80) == "refused"
    finally:
        sbx.kill()


def test_internet_access_off(egress_daemon):
    sbx = Sandbox.create(timeout=60, allow_internet_access=False)
    try:
        assert _probe(sbx, inet.WEB, 80) == "refused"
        r = sbx.commands.run("curl -sS --max-time 3 http://web.test/hello.txt || echo failed")
        assert r.stdout.strip().endswith("failed")
    finally:
        sbx.kill()


def test_allow_and_deny_lists_and_live_updates(egress_daemon):
    sbx = Sandbox.create(
        timeout=120, network={"deny_out": ["0.0.0.0/0"], "allow_out": [inet.WEB, "203.0.113.0/28"]}
    )
    try:
        assert _probe(sbx, inet.WEB, 80) == "ok"
        assert _probe(sbx, inet.OTHER, 80) == "ok"
        assert _probe(sbx, "198.51.100.11", 80) == "refused"
        # deny one address only; allow wins over deny
        sbx.update_network({"deny_out": ["198.51.100.0/24"], "allow_out": [inet.WEB]})
        assert _probe(sbx, inet.WEB, 80) == "ok"
        assert _probe(sbx, "198.51.100.11", 80) == "refused"
        sbx.update_network({"deny_out": [inet.WEB]})
        assert _probe(sbx, inet.WEB, 80) == "refused"
        assert _probe(sbx, inet.OTHER, 80) == "ok"
        # {} clears everything
        sbx.update_network({})
        assert _probe(sbx, inet.WEB, 80) == "ok"
    finally:
        sbx.kill()


def test_bad_policies_are_refused(egress_daemon):
    with pytest.raises((InvalidArgumentException, SandboxException)):
        Sandbox.create(timeout=30, network={"deny_out": ["10.0.0.0/33"]})
    sbx = Sandbox.create(timeout=60)
    try:
        with pytest.raises((InvalidArgumentException, SandboxException)):
            sbx.update_network({"allow_out": [f"198.51.{i // 256}.{i % 256}" for i in range(10_000)]})
        r = sbx.commands.run("curl -sS --max-time 5 http://web.test/hello.txt")
        assert r.stdout == inet.HELLO
    finally:
        sbx.kill()


def test_domain_allow_list_installs_from_an_allowed_index_only(egress_daemon):
    """allow_out by name with deny-all: pip installs from the allowed index (HTTP, by Host,
    on the daemon's egress proxy); another name on the same server, another server and a bare
    address answer 403 from the proxy; a live update to another name applies at once."""
    sbx = Sandbox.create(timeout=120, network={"allow_out": ["pypi.test"], "deny_out": ["0.0.0.0/0"]})
    try:
        r = sbx.commands.run(
            "python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -q --disable-pip-version-check "
            f"--index-url http://pypi.test/simple --trusted-host pypi.test {inet.PACKAGE} && "
            f"/tmp/venv/bin/python -c 'import {inet.PACKAGE}; print({inet.PACKAGE}.GREETING)'",
            timeout=120,
        )
        assert r.stdout.strip() == "installed from the fake internet"
        status = "curl -s -o /dev/null -w '%{http_code}' --max-time 5 "
        for url in ("http://web.test/hello.txt", "http://other.test/hello.txt", f"http://{inet.WEB}/hello.txt"):
            assert sbx.commands.run(status + url).stdout == "403", url
        r = sbx.commands.run("curl -s --max-time 5 http://other.test/hello.txt")
        assert "not allowed by this sandbox's network policy" in r.stdout
        sbx.update_network({"allow_out": ["web.test"], "deny_out": ["0.0.0.0/0"]})
        assert sbx.commands.run("curl -sS --max-time 5 http://web.test/hello.txt").stdout == inet.HELLO
        assert sbx.commands.run(status + "http://pypi.test/simple/").stdout == "403"
    finally:
        sbx.kill()


def test_a_template_build_installs_from_the_package_index_and_clones(egress_daemon):
    """The SDK's `pip_install`, `npm_install` and `git_clone` steps in a template build reach
    the (fake) internet's package index, package tarball and git server like any sandbox
    (docs/templates.md)."""
    name = f"pip-{os.urandom(4).hex()}"
    t = (
        Template()
        .from_template("base")
        .run_cmd("python3 -m venv /opt/venv", user="root")
        .set_envs({
            "PATH": "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PIP_INDEX_URL": "http://pypi.test/simple",
            "PIP_TRUSTED_HOST": "pypi.test",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            # npm's audit and update checks would ask the public registry
            "npm_config_audit": "false",
            "npm_config_fund": "false",
            "npm_config_update_notifier": "false",
        })
        .pip_install(inet.PACKAGE)
        .git_clone("http://web.test/demo.git", "/home/user/demo", branch="main")
        .set_workdir("/home/user/app")
        .npm_install([f"http://web.test/{inet.NPM_TARBALL}"])
    )
    logs = []
    Template.build(t, name, on_build_logs=lambda l: logs.append(l.message))
    assert any("pip install" in l for l in logs), logs
    sbx = Sandbox.create(name, timeout=60)
    try:
        r = sbx.commands.run(f"/opt/venv/bin/python -c 'import {inet.PACKAGE}; print({inet.PACKAGE}.GREETING)'")
        assert r.stdout.strip() == "installed from the fake internet"
        assert sbx.files.read("/home/user/demo/README") == inet.GIT_FILE_TEXT
        r = sbx.commands.run(f"cd /home/user/app && node -e 'console.log(require(\"{inet.NPM_PACKAGE}\"))'")
        assert r.stdout.strip() == inet.NPM_TEXT
    finally:
        sbx.kill()


@pytest.mark.timeout(300)
def test_apt_install_in_a_build_from_a_debian_image(egress_daemon, tmp_path):
    """The SDK's `apt_install` in a build from a Debian image (setup.sh's mmdebstrap root file
    system, imported as an archive) installs from the fake internet's apt repository."""
    import json
    import urllib.request

    import oci_images

    archive = tmp_path / "debian.tar"
    ref = oci_images.debian_archive(str(archive))
    req = urllib.request.Request(
        os.environ["E2B_API_URL"] + "/images/import", data=open(archive, "rb"), method="POST",
        headers={"X-API-Key": os.environ["E2B_API_KEY"], "Content-Length": str(archive.stat().st_size)},
    )
    with urllib.request.urlopen(req, timeout=240) as r:
        assert json.loads(r.read())["reference"] == ref
    name = f"apt-{os.urandom(4).hex()}"
    t = (
        Template()
        .from_image(ref)
        .run_cmd(
            "rm -f /etc/apt/sources.list.d/* && "
            "echo 'deb [trusted=yes] http://web.test/debian ./' > /etc/apt/sources.list",
            user="root",
        )
        .apt_install([inet.DEB_PACKAGE])
    )
    logs = []
    Template.build(t, name, on_build_logs=lambda l: logs.append(l.message))
    assert any("apt-get install" in l for l in logs), logs
    sbx = Sandbox.create(name, timeout=60)
    try:
        assert sbx.files.read(inet.DEB_FILE) == inet.DEB_FILE_TEXT
        r = sbx.commands.run(f"dpkg -s {inet.DEB_PACKAGE} | grep Status; cat /etc/debian_version")
        assert "install ok installed" in r.stdout, r.stdout
        # the image template's own top layer holds the egress proxy's CA (header rules on HTTPS)
        r = sbx.commands.run("head -1 /etc/sandboxd/egress-ca.pem; echo $NODE_EXTRA_CA_CERTS")
        assert r.stdout == "-----BEGIN CERTIFICATE-----\n/etc/sandboxd/egress-ca.pem\n", r.stdout
    finally:
        sbx.kill()
