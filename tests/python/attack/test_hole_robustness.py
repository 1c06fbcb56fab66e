"""Issue 14, holes 6-12: faults and hostile traffic must not destroy what is healthy, and client
mistakes get a 4xx.

Host-side checks: the sandbox (a marker file inside it) survives; the daemon's data dir has no
mounts or image files left over; status codes and bodies as the client sees them. Checked
against main before the fixes (commit 2396b99): 1,100 idle connections made the liveness check
destroy a running sandbox, a deep MakeDir under watchers did not answer within 60 s, a bad
chunk size answered 502 "not found", an empty upload answered 502, the client mistakes below
answered 500, a failed snapshot named its host path;
contained with the fixes (commits b2c9b6a and 97fe5c0).
"""

import gzip
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time

import httpx
import pytest
from attacklib import Escape, create
from sandboxd_daemon import BIN, _free_port, _wait_healthy

pytestmark = [pytest.mark.host_unsafe, pytest.mark.timeout(180)]


def _envd(daemon, sbx) -> httpx.Client:
    h = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
    if sbx._envd_access_token:
        h["X-Access-Token"] = sbx._envd_access_token
    return httpx.Client(base_url=daemon.url, headers=h, timeout=30)


def test_client_mistakes_answer_4xx(daemon, attacker):
    """Holes 6 and 12: an 8 KiB path, a write through a dangling symlink, Move with `..`, writes
    into /proc and /sys: each a 4xx with a message, never a 500."""
    attacker.commands.run("ln -sfn /nonexistent/dir/file /tmp/dangling", user="root")
    attacker.files.write("/tmp/movable.txt", "x")
    octet = {"Content-Type": "application/octet-stream"}
    with _envd(daemon, attacker) as c:
        cases = {
            "8 KiB path": c.get("/files", params={"path": "/" + "a" * 8192}),
            "8 KiB path upload": c.post("/files", params={"path": "/tmp/" + "a" * 8192}, content=b"x", headers=octet),
            "dangling symlink write": c.post("/files", params={"path": "/tmp/dangling", "username": "root"}, content=b"x",
                                             headers=octet),
            "Move onto ..": c.post("/filesystem.Filesystem/Move", json={"source": "/tmp/movable.txt", "destination": "/tmp/.."}),
            "Move of ..": c.post("/filesystem.Filesystem/Move", json={"source": "/tmp/..", "destination": "/tmp/x"}),
            "write /proc": c.post("/files", params={"path": "/proc/sys/kernel/hostname", "username": "root"}, content=b"x",
                                  headers=octet),
            "write /sys": c.post("/files", params={"path": "/sys/kernel/pwned", "username": "root"}, content=b"x",
                                 headers=octet),
            "MakeDir in /proc": c.post("/filesystem.Filesystem/MakeDir", json={"path": "/proc/pwned"}),
        }
    bad = {k: (r.status_code, r.text[:200]) for k, r in cases.items() if not 400 <= r.status_code < 500}
    if bad:
        raise Escape(f"client mistakes answered otherwise than 4xx: {bad}")


def test_empty_octet_stream_upload(daemon, attacker):
    """Hole 10: an empty application/octet-stream upload: 200 and an empty file, no agent panic."""
    with _envd(daemon, attacker) as c:
        r = c.post("/files", params={"path": "/tmp/empty.bin"}, content=b"",
                   headers={"Content-Type": "application/octet-stream"})
        health = c.get("/health").status_code
    if r.status_code != 200 or health != 204:
        raise Escape(f"empty upload: {r.status_code} {r.text[:200]}, health {health}")
    assert attacker.files.read("/tmp/empty.bin") == ""


def test_proxy_errors_are_not_sandbox_not_found(daemon, attacker):
    """Hole 9: a 1 MiB gzip body to Process/List and a malformed chunk size: a 4xx that does not
    say the (running) sandbox was not found."""
    with _envd(daemon, attacker) as c:
        big = gzip.compress(os.urandom(1 << 20))
        r1 = c.post("/process.Process/List", content=big,
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    # A raw request with a bad chunk size line.
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    token = attacker._envd_access_token or ""
    s.sendall((f"POST /process.Process/List HTTP/1.1\r\nHost: 127.0.0.1\r\nE2b-Sandbox-Id: {attacker.sandbox_id}\r\n"
               f"E2b-Sandbox-Port: 49983\r\nX-Access-Token: {token}\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n").encode())
    raw = s.recv(4096).decode(errors="replace")
    s.close()
    status2 = int(raw.split()[1]) if raw.startswith("HTTP/") else 0
    problems = []
    # 501 unimplemented is Connect's answer to an unsupported encoding; a 502 "not found" is not.
    if r1.status_code in (502, 503, 504) or "not found" in r1.text.lower():
        problems.append(f"gzip body: {r1.status_code} {r1.text[:200]}")
    if status2 >= 500 or "not found" in raw.lower():
        problems.append(f"bad chunk: {raw[:200]}")
    if problems:
        raise Escape("; ".join(problems))
    assert attacker.is_running()


def test_deep_mkdir_under_watchers_keeps_agent_responsive(daemon):
    """Hole 8: 30 recursive watchers on a directory, then one MakeDir 1,200 levels deep under
    it: the MakeDir answers (done, or refused with a 4xx) within 15 s, and /health and a command
    answer within 5 s while it runs."""
    import threading

    s = create(daemon, timeout=120)
    try:
        s.files.make_dir("/home/user/w")
        with _envd(daemon, s) as c:
            for _ in range(30):
                r = c.post("/filesystem.Filesystem/CreateWatcher", json={"path": "/home/user/w", "recursive": True})
                assert r.status_code == 200, r.text
            deep = "/home/user/w/" + "/".join(["d"] * 1200)
            made = {}

            def makedir():
                t = time.monotonic()
                try:
                    made["status"] = c.post("/filesystem.Filesystem/MakeDir", json={"path": deep}, timeout=20).status_code
                except httpx.TimeoutException:
                    made["status"] = "timeout"
                made["took"] = time.monotonic() - t
            th = threading.Thread(target=makedir)
            th.start()
            time.sleep(1)
            probes = []
            for _ in range(2):
                t = time.monotonic()
                try:
                    ok = c.get("/health", timeout=5).status_code == 204 and \
                        s.commands.run("echo ok", timeout=5).stdout.strip() == "ok"
                except Exception as e:
                    ok = repr(e)[:80]
                probes.append((ok, round(time.monotonic() - t, 1)))
            th.join(30)
        answered = made.get("status") == 200 or (isinstance(made.get("status"), int) and 400 <= made["status"] < 500)
        if not answered or made.get("took", 99) > 15 or any(p[0] is not True for p in probes):
            raise Escape(f"a deep MakeDir under watchers: {made}, health and commands meanwhile {probes}")
    finally:
        s.kill()


def _start_daemon(data_dir: str, nofile: int | None = None):
    port = _free_port()
    key = "e2b_" + os.urandom(20).hex()

    def limit():
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    log = open(data_dir + ".log", "ab")
    proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir],
                            env=dict(os.environ, SANDBOXD_API_KEY=key), stdout=subprocess.DEVNULL, stderr=log,
                            preexec_fn=limit)
    return proc, f"http://127.0.0.1:{port}", key


def _remove(path: str):
    try:
        os.unlink(path)
    except OSError:
        pass


def _stop(proc, url, key):
    from sandboxd_daemon import _kill_all
    _kill_all(url, key)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_idle_connections_do_not_kill_sandboxes():
    """Hole 7: with the daemon's RLIMIT_NOFILE at 1024, 1,100 idle TCP connections (no API key)
    held for 5 s must not make the liveness check destroy a running sandbox."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
    data_dir = tempfile.mkdtemp(prefix="sandboxd-attack-fd-")
    proc, url, key = _start_daemon(data_dir, nofile=1024)
    conns = []
    try:
        _wait_healthy(url, proc, data_dir + ".log")
        h = {"X-API-Key": key}
        r = httpx.post(url + "/sandboxes", json={"templateID": "base", "timeout": 120}, headers=h, timeout=30)
        assert r.status_code == 201, r.text
        sid = r.json()["sandboxID"]
        for _ in range(1100):
            try:
                conns.append(socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=2))
            except OSError:
                break
        time.sleep(5)
        for c in conns:
            c.close()
        conns = []
        time.sleep(1)
        r = httpx.get(f"{url}/sandboxes/{sid}", headers=h, timeout=30)
        if r.status_code != 200 or r.json().get("state") != "running":
            raise Escape(f"idle connections got a healthy sandbox destroyed: {r.status_code} {r.text[:200]}")
    finally:
        for c in conns:
            c.close()
        _stop(proc, url, key)
        shutil.rmtree(data_dir, ignore_errors=True)
        _remove(data_dir + ".log")
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_low_nofile_is_a_clear_startup_error():
    """Hole 12: a hard RLIMIT_NOFILE of 256: the daemon refuses to start with a message naming
    the limit, or serves creates; never a 500 per create."""
    data_dir = tempfile.mkdtemp(prefix="sandboxd-attack-nofile-")
    proc, url, key = _start_daemon(data_dir, nofile=256)
    try:
        try:
            _wait_healthy(url, proc, data_dir + ".log", timeout=15)
        except RuntimeError as e:
            assert "NOFILE" in str(e) or "file descriptor" in str(e).lower() or "open files" in str(e).lower(), str(e)
            return
        r = httpx.post(url + "/sandboxes", json={"templateID": "base", "timeout": 60}, headers={"X-API-Key": key}, timeout=30)
        if r.status_code >= 500:
            raise Escape(f"create with a low RLIMIT_NOFILE: {r.status_code} {r.text[:200]}")
    finally:
        _stop(proc, url, key)
        shutil.rmtree(data_dir, ignore_errors=True)
        _remove(data_dir + ".log")


def test_413_message_names_the_limit(daemon):
    """Hole 12: an oversized control-plane body: 413 with a message giving the real limit."""
    r = httpx.post(daemon.url + "/sandboxes", content=b"{" + b" " * (2 << 20) + b"}",
                   headers={"X-API-Key": daemon.key, "Content-Type": "application/json"}, timeout=30)
    if r.status_code != 413 or "limit 0 bytes" in r.text:
        raise Escape(f"oversized body: {r.status_code} {r.text[:200]}")


def test_failed_snapshot_error_names_no_host_path(daemon, attacker):
    """Hole 6: a snapshot that fails must not return the host data dir's path. To make one
    fail: a file whose host path in the sandbox's upper dir is exactly PATH_MAX-1 long, so its
    copy under the (longer) snapshot directory is too long."""
    upper = f"{daemon.data_dir}/sandboxes/{attacker.sandbox_id}/disk/upper/root"
    room = 4095 - len(upper)
    path = "/home/user/dddd"
    while len(path) + 1 + 200 < room:
        path += "/" + "d" * 200
    path += "/" + "f" * (room - len(path) - 1)
    attacker.commands.run(f"mkdir -p {path.rsplit('/', 1)[0]} && touch {path}", user="root")
    status, body = daemon.api("POST", f"/sandboxes/{attacker.sandbox_id}/snapshots", b"{}")
    if status == 201:
        import json
        daemon.api("DELETE", f"/templates/{json.loads(body)['snapshotID']}")
    attacker.commands.run("rm -rf /home/user/dddd*", user="root")
    assert status != 201, "the snapshot was expected to fail"
    if daemon.data_dir.encode() in body:
        raise Escape(f"a snapshot answer names a host path: {status} {body[:300]!r}")
