"""The session API (/workspace/se/*) through its Python client `sandbox_runtime`, against real
daemons this module starts (two, for placement; one of them restarted): every endpoint, bad input
for each, typed exceptions, session affinity over two servers, sessions surviving a daemon
restart, cleanup-all with and without force. docs/sessions.md."""

import asyncio
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import urllib.request
import uuid

import httpx
import pytest

import sandboxd_daemon
from sandbox_runtime import (
    InvalidRequestError,
    NotFoundError,
    ResourceError,
    RuntimeError as SessionRuntimeError,
    SandboxRuntimeError,
    SecurityError,
    SharedEnvClient,
    SharedEnvSandbox,
    TimeoutError as SessionTimeoutError,
    choose_server,
)
from sandbox_runtime.sdk.shared_env import SharedEnvSandbox as SharedEnvSandboxFromDocs

ROOT = pathlib.Path(__file__).resolve().parents[3]


class Daemon:
    """A `sandboxd serve` on a fixed port and data dir, restartable."""

    def __init__(self, key: str):
        self.key = key
        self.port = sandboxd_daemon._free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tempfile.mkdtemp(prefix="sandboxd-pytest-sessions-")
        self.log_path = self.data_dir + ".log"
        self.proc = None

    def start(self):
        env = dict(os.environ, SANDBOXD_API_KEY=self.key, RUST_LOG="info")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sandboxd_daemon.BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        sandboxd_daemon._wait_healthy(self.url, self.proc, self.log_path)

    def stop(self):
        """SIGTERM: the daemon exits and leaves its sandboxes running (re-adopted at start)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        try:
            httpx.post(f"{self.url}/workspace/se/cleanup-all?force=true",
                       headers={"X-API-Key": self.key}, timeout=60)
        except httpx.HTTPError:
            pass
        sandboxd_daemon._kill_all(self.url, self.key)
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if os.environ.get("SANDBOXD_KEEP_LOGS") != "1":
            try:
                os.unlink(self.log_path)
            except OSError:
                pass


@pytest.fixture(scope="module")
def daemons():
    key = "e2b_" + os.urandom(20).hex()
    ds = [Daemon(key), Daemon(key)]
    try:
        for d in ds:
            d.start()
        yield ds
    finally:
        for d in ds:
            if d.proc is not None:
                d.close()


@pytest.fixture
def one(daemons):
    """(url, key) of the first daemon."""
    return daemons[0].url, daemons[0].key


@pytest.fixture
def client(one):
    url, key = one
    with SharedEnvClient(servers=[url], api_key=key) as c:
        yield c


def sid(prefix="s"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_design_document_examples(one, tmp_path):
    """The documents' examples run unchanged: execute_code, execute("ls", "-l"), upload / list /
    download; the module path and the top-level re-export are the same class."""
    assert SharedEnvSandboxFromDocs is SharedEnvSandbox
    url, key = one
    os.environ["SANDBOX_RUNTIME_API_KEY"] = key  # the key from the environment
    try:
        sandbox = SharedEnvSandbox(sid("docs"), servers=[url])
    finally:
        del os.environ["SANDBOX_RUNTIME_API_KEY"]
    try:
        result = await sandbox.execute_code("print('Hello, World!')", filename="test.py")
        assert result["stdout"] == "Hello, World!\n"
        assert result["exit_code"] == 0 and result["stderr"] == ""
        result = await sandbox.execute("ls", "-l")
        assert "test.py" in result["stdout"] and result["exit_code"] == 0
        local = tmp_path / "data.csv"
        local.write_text("a,b\n1,2\n")
        assert await sandbox.upload_file(str(local)) == "data.csv"
        names = [f["name"] for f in await sandbox.list_files()]
        assert {"test.py", "data.csv"} <= set(names)
        assert await sandbox.download_file("data.csv") == b"a,b\n1,2\n"
        out = tmp_path / "back.csv"
        await sandbox.download_file("data.csv", str(out))
        assert out.read_text() == "a,b\n1,2\n"
        await sandbox.delete()
    finally:
        await sandbox.close()


def test_every_endpoint_with_the_sync_client(client, one, tmp_path):
    url, key = one
    s = sid()
    info = client.create_session(s, size="64M", timeout=600, env={"GREETING": "hi"})
    assert info["session_id"] == s and info["size_mb"] == 64 and info["workdir"] == "/home/user"
    with pytest.raises(InvalidRequestError) as e:
        client.create_session(s)
    assert e.value.status == 409 and e.value.error_code == "invalid_request"

    assert client.create_file(s, "bin/run.sh", "#!/bin/sh\necho run $1\n", mode=0o755)["path"] == "bin/run.sh"
    assert client.create_file(s, "blob.bin", bytes(range(256)))["size"] == 256
    entries = {f["name"]: f for f in client.list_files(s, "bin")}
    assert entries["run.sh"]["mode"] == "0755" and entries["run.sh"]["type"] == "file"
    assert entries["run.sh"]["path"] == "bin/run.sh" and entries["run.sh"]["size"] == 22
    top = {f["name"]: f for f in client.list_files(s)}
    assert top["bin"]["type"] == "dir" and top["blob.bin"]["size"] == 256
    assert client.download_file(s, "blob.bin") == bytes(range(256))

    (tmp_path / "one.txt").write_text("1")
    (tmp_path / "two.txt").write_text("22")
    up = client.upload_files(s, [str(tmp_path / "one.txt"), ("nested/two.txt", str(tmp_path / "two.txt")),
                                 ("raw.bin", b"\x00\x01")], path="up")
    assert up == ["up/one.txt", "up/nested/two.txt", "up/raw.bin"]
    assert client.download_file(s, "up/nested/two.txt") == b"22"
    dest = tmp_path / "dl.txt"
    assert client.download_file(s, "up/one.txt", dest) == str(dest) and dest.read_text() == "1"

    r = client.execute_command(s, "./run.sh", "x y", cwd="bin")
    assert r == {**r, "stdout": "run x y\n", "exit_code": 0}
    r = client.execute_command(s, "echo $GREETING $EXTRA $1 && pwd && exit 3", "arg", shell=True, env={"EXTRA": "e"})
    assert r["stdout"] == "hi e arg\n/home/user\n" and r["exit_code"] == 3
    # no shell unless asked: the metacharacters are plain arguments
    r = client.execute_command(s, "echo", "$HOME", "&&", "false")
    assert r["stdout"] == "$HOME && false\n" and r["exit_code"] == 0
    assert isinstance(r["duration"], float)
    r = client.execute_command(s, "sh", "-c", "echo err >&2; exit 1")
    assert r["stderr"] == "err\n" and r["exit_code"] == 1

    for script_type, code in [
        ("python", "import sys; print(sys.argv[1])"),
        ("bash", 'echo "$1"'),
        ("sh", 'echo "$1"'),
        ("node", "console.log(process.argv[2])"),
        ("perl", "print $ARGV[0], qq(\\n);"),
    ]:
        r = client.execute_code(s, code, script_type=script_type, args=["ok-" + script_type])
        assert (r["stdout"], r["exit_code"]) == (f"ok-{script_type}\n", 0), (script_type, r)
    r = client.execute_code(s, "console.log(6*7)", filename="calc.js")
    assert r["stdout"] == "42\n"

    st = client.get_status(s)
    assert st["state"] == "running" and st["session_id"] == s
    assert 50 << 20 < st["disk_size_bytes"] <= 64 << 20
    assert 0 < st["disk_used_bytes"] < st["disk_size_bytes"]
    assert 0 < st["time_left_secs"] <= 600
    assert st["processes"] == []

    assert client.delete_session(s)["deleted"] is True
    with pytest.raises(NotFoundError):
        client.get_status(s)
    with pytest.raises(NotFoundError):
        client.delete_session(s)


def test_bad_input_for_each_endpoint(client, one):
    url, key = one
    missing = sid("missing")
    for call in [
        lambda: client.delete_session(missing),
        lambda: client.create_file(missing, "a", "b"),
        lambda: client.list_files(missing),
        lambda: client.upload_file(missing, b"x", "x"),
        lambda: client.download_file(missing, "x"),
        lambda: client.execute_command(missing, "true"),
        lambda: client.execute_code(missing, "print(1)"),
        lambda: client.get_status(missing),
    ]:
        with pytest.raises(NotFoundError) as e:
            call()
        assert e.value.status == 404 and e.value.error_code == "not_found"

    for bad_id in ["a b", "..", "x" * 129, "é"]:
        with pytest.raises(InvalidRequestError) as e:
            client.create_session(bad_id)
        assert e.value.status == 400
    for bad in [{"size": "5M"}, {"size": "lots"}, {"timeout": 0}, {"template": "no-such-template"}]:
        r = httpx.post(f"{url}/workspace/se/session/{sid()}", json=bad, headers={"X-API-Key": key})
        assert r.status_code in (400, 404) and r.json()["error_code"] in ("invalid_request", "not_found"), r.text

    s = sid()
    client.create_session(s)
    client.execute_command(s, "ln -s /etc out && ln -s /etc/passwd pw && mkdir -p d && ln -s ../.. d/up", shell=True)
    escapes = ["../x", "/etc/passwd", "out/passwd", "pw", "d/up/etc/hostname", "a/../../x"]
    for name in escapes:
        for call in [
            lambda: client.create_file(s, name, "x"),
            lambda: client.upload_file(s, b"x", name),
            lambda: client.download_file(s, name),
            lambda: client.list_files(s, name),
        ]:
            with pytest.raises(InvalidRequestError) as e:
                call()
            assert e.value.status == 400, (name, e.value)
    with pytest.raises(InvalidRequestError):
        client.execute_command(s, "pwd", cwd="out")
    with pytest.raises(InvalidRequestError):
        client.execute_code(s, "print(1)", filename="../x.py")
    # nothing was written outside: /etc/x does not exist
    assert client.execute_command(s, "test", "-e", "/etc/x")["exit_code"] == 1

    with pytest.raises(InvalidRequestError):
        client.execute_code(s, "x", script_type="cobol")
    with pytest.raises(InvalidRequestError):
        client.execute_command(s, "")
    with pytest.raises(NotFoundError) as e:
        client.execute_command(s, "no-such-program")
    assert "not found" in e.value.message
    with pytest.raises(NotFoundError):
        client.download_file(s, "nope.txt")
    with pytest.raises(InvalidRequestError):
        client.create_file(s, "bad-mode", "x", mode="99")
    r = httpx.post(f"{url}/workspace/se/upload/{s}", content=b"not multipart", headers={"X-API-Key": key})
    assert r.status_code == 400 and r.json()["error_code"] == "invalid_request"
    r = httpx.post(f"{url}/workspace/se/execute/{s}", content=b"{", headers={"X-API-Key": key})
    assert r.status_code == 400 and r.json()["error_code"] == "invalid_request"

    # the API key: missing or wrong is security_denied; the health check needs none
    with SharedEnvClient(servers=[url], api_key="e2b_" + "0" * 40) as wrong:
        with pytest.raises(SecurityError) as e:
            wrong.get_status(s)
        assert e.value.status == 401
    assert httpx.get(f"{url}/workspace/se/healthy").json() == {"status": "ok"}
    assert httpx.get(f"{url}/workspace/se/status/{s}").status_code == 401
    client.delete_session(s)


def test_typed_exceptions_share_one_base():
    for cls in [SessionTimeoutError, ResourceError, SecurityError, SessionRuntimeError, NotFoundError,
                InvalidRequestError]:
        assert issubclass(cls, SandboxRuntimeError)


def test_upload_over_the_session_size_leaves_nothing(client, tmp_path):
    s = sid()
    client.create_session(s)  # default size: 50M
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.write(os.urandom(1 << 20) * 60)
    small = tmp_path / "small.txt"
    small.write_text("small")
    # declared length over the free space: refused before anything is written
    with pytest.raises(ResourceError) as e:
        client.upload_files(s, [str(small), str(big)])
    assert e.value.resource == "disk" and e.value.status == 507
    # streamed without a length: the quota stops the write, the batch is removed
    def chunks():
        yield b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"first.txt\"\r\n\r\nfirst\r\n"
        yield b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\r\n"
        with open(big, "rb") as f:
            while b := f.read(1 << 20):
                yield b
        yield b"\r\n--B--\r\n"
    r = httpx.post(f"{client.server_for(s)}/workspace/se/upload/{s}", content=chunks(),
                   headers={"X-API-Key": client._http.headers["X-API-Key"],
                            "Content-Type": "multipart/form-data; boundary=B"}, timeout=120)
    assert r.status_code == 507 and r.json()["resource"] == "disk", r.text
    names = client.execute_command(s, "ls", "-A")["stdout"].split()
    assert "big.bin" not in names and "first.txt" not in names and "small.txt" not in names
    assert not [n for n in names if "sandboxd-upload" in n], names
    st = client.get_status(s)
    assert st["disk_used_bytes"] < 5 << 20, st
    # the session still works and has its room back
    assert client.upload_file(s, str(small)) == "small.txt"
    client.delete_session(s)


def test_execution_timeout_kills_the_command(client):
    s = sid()
    client.create_session(s)
    with pytest.raises(SessionTimeoutError) as e:
        client.execute_command(s, "sh -c 'echo started; sleep 30'", shell=True, timeout=1)
    assert e.value.status == 504 and e.value.error_code == "timeout"
    assert 1.0 <= e.value.body["duration"] < 10
    assert e.value.stdout == "started\n"
    assert [p for p in client.get_status(s)["processes"] if "sleep 30" in p["command"]] == []
    client.delete_session(s)


def test_out_of_memory_says_so_with_the_limit(client):
    s = sid()
    client.create_session(s)
    with pytest.raises(ResourceError) as e:
        client.execute_code(s, "x = bytearray(2 << 30)\nx[::4096] = b'1' * len(x[::4096])\n", timeout=60)
    assert e.value.resource == "memory" and e.value.status == 507
    assert "out of memory" in e.value.message and "512 MiB" in e.value.message
    client.delete_session(s)


FORK_LOOP = """
import os, time
for i in range(50):
    if os.fork() == 0:
        time.sleep(3)
        os._exit(0)
print("all forked")
"""


LOADER = "/lib64/ld-linux-x86-64.so.2"
HOSTNAME_CMD = ["cat", "/etc/hostname"]


def test_allowed_commands_hold_against_the_bypasses(client):
    """allowed_commands is enforced by the kernel (Landlock plus the loader guard,
    docs/command-policy.md): what is not on the list cannot be executed, however it is started."""
    s = sid()
    client.create_session(s, allowed_commands=["ls", "python3", "sudo"])
    try:
        assert client.execute_command(s, "ls", "-a")["exit_code"] == 0
        assert client.execute_code(s, "print(6 * 7)")["stdout"] == "42\n"

        def refused(*cmd, shell=False):
            with pytest.raises(SecurityError) as e:
                client.execute_command(s, *cmd, shell=shell)
            assert e.value.status == 403 and e.value.error_code == "security_denied", e.value.body
            assert "command not allowed" in e.value.message, e.value.message
            return e.value

        # directly, through env, through sudo (allowed and setuid root, yet in the same domain)
        refused(*HOSTNAME_CMD)
        refused("env", *HOSTNAME_CMD)
        assert client.execute_command(s, "sudo", "-n", "ls", "/root")["exit_code"] == 0
        r = client.execute_command(s, "sudo", "-n", *HOSTNAME_CMD)
        assert r["exit_code"] == 1 and r["stdout"] == "", r
        assert r["stderr"] == "sudo: unable to execute /usr/bin/cat: Permission denied\n", r
        # through a shell: bash itself runs (every SDK command needs it), what it starts does not
        e = refused(" ".join(HOSTNAME_CMD), shell=True)
        assert "/usr/bin/cat: Permission denied" in e.message
        assert "sandboxd: command not allowed" in e.stderr
        # an allowed interpreter cannot execute another program either
        r = client.execute_command(s, "python3", "-c",
                                   "import os; os.execv('/usr/bin/cat', ['cat', '/etc/hostname'])")
        assert r["exit_code"] == 1 and "PermissionError" in r["stderr"], r
        # a copied binary is a new file without the right: uploaded, or copied by python
        client.create_file(s, "mycat", pathlib.Path("/usr/bin/cat").read_bytes(), mode="0755")
        refused("./mycat", "/etc/hostname")
        r = client.execute_command(s, "python3", "-c", (
            "import os, shutil, subprocess\n"
            "shutil.copy('/usr/bin/ls', '/tmp/ls2'); os.chmod('/tmp/ls2', 0o755)\n"
            "subprocess.run(['/tmp/ls2'])"))
        assert r["exit_code"] == 1 and "PermissionError" in r["stderr"], r
        # a memfd (which Landlock does not check): refused unless sealed non-executable
        for flags in (0, 8):  # 8: MFD_NOEXEC_SEAL
            r = client.execute_command(s, "python3", "-c", (
                "import os\n"
                f"fd = os.memfd_create('x', {flags}); os.write(fd, open('/usr/bin/cat', 'rb').read())\n"
                "os.execve(fd, ['cat', '/etc/hostname'], {})"))
            assert r["exit_code"] == 1 and "PermissionError" in r["stderr"], r
        # the ELF loader (executable for the allowed programs) refuses to run a program itself,
        # also as a copy
        e = refused(LOADER, *HOSTNAME_CMD)
        assert "ELF loader" in e.message
        for loader in (LOADER, "/tmp/ld"):
            r = client.execute_command(s, "python3", "-c", (
                "import os, shutil, subprocess, sys\n"
                f"shutil.copy('{LOADER}', '/tmp/ld'); os.chmod('/tmp/ld', 0o755)\n"
                f"subprocess.run(['{loader}', '/usr/bin/cat', '/etc/hostname'])"))
            assert r["exit_code"] == 1 and r["stdout"] == "", r
            assert "FileNotFoundError" in r["stderr"] or "PermissionError" in r["stderr"], r
        # the allowed programs cannot be rewritten in place: bound read-only,
        # as root (sudo), nor replaced by a rename
        r = client.execute_command(s, "sudo", "-n", "python3", "-c", "open('/usr/bin/ls', 'r+b').write(b'x')")
        assert r["exit_code"] == 1 and "Read-only file system" in r["stderr"], r
        r = client.execute_command(s, "sudo", "-n", "python3", "-c", (
            "import os, shutil; shutil.copy('/usr/bin/cat', '/usr/bin/cat2'); os.rename('/usr/bin/cat2', '/usr/bin/ls')"))
        assert r["exit_code"] == 1 and "Device or resource busy" in r["stderr"], r
        # the session API's own helper programs still work: paths, listings, status, chmod
        client.create_file(s, "sub/a.txt", "x", mode="0700")
        assert [f["name"] for f in client.list_files(s, "sub")] == ["a.txt"]
        assert client.download_file(s, "sub/a.txt") == b"x"
        assert client.get_status(s)["state"] == "running"
        with pytest.raises(SessionTimeoutError):
            client.execute_command(s, "python3", "-c", "import time; time.sleep(30)", timeout=1)
    finally:
        client.delete_session(s)


def test_allowed_commands_bad_input_is_refused_and_creates_nothing(client, sandboxd):
    url, key = sandboxd
    before = httpx.get(f"{url}/sandboxes", headers={"X-API-Key": key}).json()
    for bad in (["no-such-program"], [], ["ls -l"], ["bin/ls"], ["/etc/hostname"], ["x"] * 65):
        with pytest.raises(InvalidRequestError) as e:
            client.create_session(sid(), allowed_commands=bad)
        assert e.value.status == 400, e.value.body
    with pytest.raises(InvalidRequestError) as e:
        client.create_session(sid(), allowed_commands=["no-such-program"])
    assert "'no-such-program' is not an executable file on this sandbox's PATH" in e.value.message
    for body in ({"allowedCommands": "ls"}, {"allowedCommands": [1]},
                 {"allowedCommands": ["ls"], "templateID": "code-interpreter"}):
        r = httpx.post(f"{url}/sandboxes", json={"templateID": "base", "timeout": 60, **body},
                       headers={"X-API-Key": key})
        assert r.status_code == 400 and r.json()["error_code"] == "invalid_request", r.text
    assert "code interpreter" in r.json()["message"]
    assert httpx.get(f"{url}/sandboxes", headers={"X-API-Key": key}).json() == before, "nothing created"


def test_allowed_commands_on_the_e2b_create(sandboxd):
    """`allowedCommands` is a sandboxd-only create field: SDK commands run through bash, which
    runs only the allowed programs, also as root."""
    from e2b import CommandExitException, Sandbox

    url, key = sandboxd
    r = httpx.post(f"{url}/sandboxes", json={"templateID": "base", "allowedCommands": ["ls", "node"],
                                             "timeout": 120}, headers={"X-API-Key": key})
    assert r.status_code == 201, r.text
    sbx = Sandbox.connect(r.json()["sandboxID"])
    try:
        out = sbx.commands.run("ls /usr/bin > /dev/null; echo done")
        assert out.stdout.endswith("done\n") and out.stderr == "", out
        assert sbx.commands.run("node -e 'console.log(1 + 1)'").stdout == "2\n"
        for user in ("user", "root"):
            with pytest.raises(CommandExitException) as e:
                sbx.commands.run("cat /etc/hostname", user=user)
            assert e.value.exit_code == 126 and "/usr/bin/cat: Permission denied" in e.value.stderr
            assert e.value.error.startswith("command not allowed"), e.value.error
            assert "(ls, node)" in e.value.error
        # root cannot rewrite an allowed program (bound read-only)
        with pytest.raises(CommandExitException) as e:
            sbx.commands.run("echo x > /usr/bin/ls", user="root")
        assert "Read-only file system" in e.value.stderr
        # files still work through the SDK (the agent itself is not restricted)
        sbx.files.write("/home/user/a.txt", "content")
        assert sbx.files.read("/home/user/a.txt") == "content"
    finally:
        sbx.kill()


def test_process_limit_with_a_fork_loop(client):
    s = sid()
    client.create_session(s, max_processes=5)
    with pytest.raises(ResourceError) as e:
        client.execute_code(s, FORK_LOOP, timeout=30)
    assert e.value.status == 429 and e.value.resource == "processes"
    assert "process limit 5 reached" in e.value.message
    assert "all forked" not in e.value.stdout and "Resource temporarily unavailable" in e.value.stderr
    # the forked children (at most 4 beside python) are all the session holds
    assert len(client.get_status(s)["processes"]) <= 4
    for bad in [0, -3, 100000]:
        with pytest.raises(InvalidRequestError):
            client.create_session(sid(), max_processes=bad)
    client.delete_session(s)


def test_max_processes_on_the_e2b_create(sandboxd):
    """`maxProcesses` is a sandboxd-only create field: the same limit for SDK commands."""
    from e2b import CommandExitException, Sandbox

    url, key = sandboxd
    r = httpx.post(f"{url}/sandboxes", json={"templateID": "base", "maxProcesses": 5, "timeout": 120},
                   headers={"X-API-Key": key})
    assert r.status_code == 201, r.text
    sbx = Sandbox.connect(r.json()["sandboxID"])
    try:
        with pytest.raises(CommandExitException) as e:
            sbx.commands.run(f"python3 -c '{FORK_LOOP}'", timeout=30)
        assert "Resource temporarily unavailable" in e.value.stderr
        assert "all forked" not in e.value.stdout
        # the agent read the work cgroup's pids counters: the end event's error says why
        assert e.value.error.startswith("process limit 5 reached"), e.value.error
        # and as stderr's last line, which the Python SDK's exception message shows
        assert e.value.stderr.splitlines()[-1] == "sandboxd: " + e.value.error
        assert "process limit 5 reached" in str(e.value)
        # a plain failure is not blamed on the limit (once the forked children, which sleep
        # 3 s, are gone: until then bash -l itself meets the limit)
        import time
        time.sleep(5)
        with pytest.raises(CommandExitException) as e:
            sbx.commands.run("exit 3")
        assert e.value.exit_code == 3 and e.value.error == "exit status 3"
    finally:
        sbx.kill()


def test_oom_kill_message_on_the_e2b_api(sandboxd):
    """An OOM kill in `commands.run` names the memory limit in the end event's `error`."""
    from e2b import CommandExitException, Sandbox

    url, key = sandboxd
    r = httpx.post(f"{url}/sandboxes", json={"templateID": "base", "memoryMB": 128, "timeout": 120},
                   headers={"X-API-Key": key})
    assert r.status_code == 201, r.text
    sbx = Sandbox.connect(r.json()["sandboxID"])
    try:
        with pytest.raises(CommandExitException) as e:
            sbx.files.write("/tmp/eat.py", "b = bytearray(400 << 20)\nb[::4096] = b'1' * len(b[::4096])\n")
            sbx.commands.run("python3 /tmp/eat.py", timeout=60)
        assert e.value.exit_code == -1 or e.value.exit_code == 137, e.value
        assert e.value.error == (
            "out of memory: killed by the kernel at the sandbox's memory limit of 128 MiB"
        ), e.value.error
        assert "out of memory" in str(e.value)
        assert sbx.commands.run("echo alive").stdout == "alive\n"
    finally:
        sbx.kill()


async def test_two_servers_place_sessions_by_rendezvous_hashing(daemons):
    urls = [d.url for d in daemons]
    key = daemons[0].key
    ids = [sid("aff") for _ in range(8)]
    placed = {choose_server(i, urls) for i in ids}
    assert placed == set(urls), "8 ids should use both servers"
    for i in ids:
        sb = SharedEnvSandbox(i, servers=urls, api_key=key)
        await sb.create_file("owner.txt", i)
        await sb.close()
    # another client, servers listed the other way round, finds every session where it is
    with SharedEnvClient(servers=list(reversed(urls)), api_key=key) as c:
        for i in ids:
            assert c.download_file(i, "owner.txt") == i.encode()
            here = choose_server(i, urls)
            other = next(u for u in urls if u != here)
            with SharedEnvClient(servers=[other], api_key=key) as only_other:
                with pytest.raises(NotFoundError):
                    only_other.get_status(i)
            c.delete_session(i)


def test_sessions_survive_a_daemon_restart(daemons):
    d = daemons[1]
    with SharedEnvClient(servers=[d.url], api_key=d.key) as c:
        s = sid("restart")
        before = c.create_session(s)
        c.create_file(s, "kept.txt", "still here")
        limited = sid("restart-policy")
        c.create_session(limited, allowed_commands=["cat"])
        d.stop()
        d.start()
        # the command policy lives in the sandbox: kept, and the daemon's helpers still run
        assert c.execute_command(limited, "cat", "/etc/hostname")["exit_code"] == 0
        with pytest.raises(SecurityError):
            c.execute_command(limited, "ls")
        c.create_file(limited, "sub/x.txt", "x", mode="0600")
        assert c.get_status(limited)["state"] == "running"
        c.delete_session(limited)
        st = c.get_status(s)
        assert st["sandbox_id"] == before["sandbox_id"] and st["state"] == "running"
        assert c.download_file(s, "kept.txt") == b"still here"
        assert c.execute_command(s, "cat", "kept.txt")["stdout"] == "still here"
        with pytest.raises(InvalidRequestError):
            c.create_session(s)
        c.delete_session(s)


def test_cleanup_all_refuses_while_processes_run_unless_forced(daemons):
    d = daemons[1]
    with SharedEnvClient(servers=[d.url], api_key=d.key) as c:
        busy, idle = sid("busy"), sid("idle")
        c.create_session(busy)
        c.create_session(idle)
        c.execute_command(busy, "nohup sleep 300 >/dev/null 2>&1 &", shell=True)
        procs = c.get_status(busy)["processes"]
        assert [p for p in procs if p["command"] == "sleep 300"], procs
        with pytest.raises(InvalidRequestError) as e:
            c.cleanup_all()
        assert e.value.status == 409 and busy in e.value.message
        assert "sleep 300" in str(e.value.body["processes"][busy])
        assert idle not in e.value.body["processes"]
        c.get_status(idle)  # nothing was removed
        removed = c.cleanup_all(force=True)
        assert {busy, idle} <= set(removed)
        for s in (busy, idle):
            with pytest.raises(NotFoundError):
                c.get_status(s)
        assert c.cleanup_all() == []


def test_openapi_document_is_served(one):
    url, key = one
    r = httpx.get(f"{url}/workspace/se/openapi.yaml", headers={"X-API-Key": key})
    assert r.status_code == 200
    assert r.text == (ROOT / "api" / "sessions.yaml").read_text()


def test_e2b_api_errors_carry_error_code(one):
    url, key = one
    r = httpx.get(f"{url}/sandboxes/nosuchsandbox", headers={"X-API-Key": key})
    assert r.status_code == 404 and r.json()["error_code"] == "not_found"
    r = httpx.post(f"{url}/sandboxes", content=b"{", headers={"X-API-Key": key})
    assert r.status_code == 400 and r.json()["error_code"] == "invalid_request"
    r = httpx.get(f"{url}/sandboxes")
    assert r.status_code == 401 and r.json()["error_code"] == "security_denied"
