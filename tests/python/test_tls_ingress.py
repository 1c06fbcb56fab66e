"""The official SDK over HTTPS ingress (docs/network.md, "HTTPS ingress"), as E2B's next SDK major
will reach every server: no E2B_API_URL and no E2B_SANDBOX_URL, only E2B_DOMAIN, so the control
plane is `https://api.<domain>`, envd `https://49983-<id>.<domain>` and a user port
`https://<port>-<id>.<domain>`. The daemon runs with `--tls` and its default domain
(`sandbox.localhost:<port>`); the client trusts the daemon's ingress CA through SSL_CERT_FILE and
resolves `*.localhost` with nss-myhostname, as docs/network.md tells users to: the SDK runs in a
mount namespace of its own whose /etc/nsswitch.conf says `hosts: files myhostname dns`, so the
host's resolver configuration is not touched."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import sandboxd_daemon as sd

SDK_SCRIPT = r"""
import os, sys, time
import httpx
from e2b import Sandbox

domain = os.environ["E2B_DOMAIN"]
sbx = Sandbox.create(timeout=120)
try:
    assert sbx.get_host(8000) == f"8000-{sbx.sandbox_id}.{domain}", sbx.get_host(8000)
    r = sbx.commands.run("echo hello over tls; echo $E2B_SANDBOX_ID")
    assert r.stdout == f"hello over tls\n{sbx.sandbox_id}\n", r.stdout
    sbx.files.write("/home/user/tls.txt", "written over https")
    assert sbx.files.read("/home/user/tls.txt") == "written over https"
    assert [e.name for e in sbx.files.list("/home/user") if e.name == "tls.txt"] == ["tls.txt"]
    sbx.commands.run("cd /etc && python3 -m http.server 8000 --bind 127.0.0.1", background=True)
    url = "https://" + sbx.get_host(8000) + "/hostname"
    body, last = None, None
    for _ in range(100):
        try:
            resp = httpx.get(url, verify=os.environ["SSL_CERT_FILE"], timeout=5)
            if resp.status_code == 200:
                body = resp.text
                break
            last = resp.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.1)
    assert body is not None, f"{url}: {last!r}"
    assert body.strip() == sbx.commands.run("cat /etc/hostname").stdout.strip()
    # the same name without trusting the CA (only the public roots): refused by the client
    import certifi
    try:
        httpx.get(url, verify=certifi.where(), timeout=5)
        raise AssertionError("an untrusted certificate was accepted")
    except httpx.ConnectError as e:
        assert "CERTIFICATE_VERIFY_FAILED" in str(e), e
    # the volume content API at https://api.<domain>, with the volume's token
    from e2b import Volume
    vol = Volume.create("tls-" + sbx.sandbox_id[:8])
    try:
        vol.write_file("/over-tls.txt", "volume over https")
        assert vol.read_file("/over-tls.txt") == "volume over https"
    finally:
        Volume.destroy(vol.volume_id)
    print("SDK-OVER-TLS-OK", sbx.sandbox_id)
finally:
    sbx.kill()
"""


@pytest.fixture
def tls_daemon():
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the HTTPS ingress test needs root (CI=true: not skipping)")
        pytest.skip("needs root (a daemon of its own and a private mount namespace)")
    if os.environ.get("SANDBOXD_TEST_URL"):
        pytest.skip("needs its own daemon (--tls)")
    if not os.path.exists("/lib/x86_64-linux-gnu/libnss_myhostname.so.2") and not os.path.exists(
        "/usr/lib/x86_64-linux-gnu/libnss_myhostname.so.2"
    ):
        pytest.fail("libnss-myhostname is missing: scripts/setup.sh --tests installs it")
    data_dir = tempfile.mkdtemp(prefix="sandboxd-pytest-tls-")
    log_path = data_dir + ".log"
    port = sd._free_port()
    url, key = f"http://127.0.0.1:{port}", "e2b_" + os.urandom(20).hex()
    env = dict(os.environ, SANDBOXD_API_KEY=key, RUST_LOG="info")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sd.BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir, "--tls", "--no-network"],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        sd._wait_healthy(url, proc, log_path)
        yield port, key, data_dir
    finally:
        sd._kill_all(url, key)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_sdk_reaches_everything_over_https_by_name(tls_daemon, tmp_path):
    port, key, data_dir = tls_daemon
    nss = tmp_path / "nsswitch.conf"
    nss.write_text("passwd: files\ngroup: files\nhosts: files myhostname dns\n")
    script = tmp_path / "sdk_over_tls.py"
    script.write_text(SDK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(
        E2B_DOMAIN=f"sandbox.localhost:{port}",
        E2B_API_KEY=key,
        SSL_CERT_FILE=os.path.join(data_dir, "ingress-ca", "ca.pem"),
    )
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {nss} /etc/nsswitch.conf && exec {sys.executable} {script}"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert r.returncode == 0 and "SDK-OVER-TLS-OK" in r.stdout, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
