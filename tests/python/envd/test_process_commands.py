"""process.Process through the official SDK: commands (run, background, connect, kill, list,
envs, stdin, cwd, users, timeouts). Uses the `sandbox` fixture (a sync e2b.Sandbox)."""

import time

import pytest
from e2b import CommandExitException, InvalidArgumentException, NotFoundException, TimeoutException


def test_run_stdout_stderr_exit_code(sandbox):
    r = sandbox.commands.run("echo hello; echo oops >&2")
    assert r.exit_code == 0
    assert r.stdout == "hello\n"
    assert r.stderr == "oops\n"
    assert r.error is None


def test_nonzero_exit_raises(sandbox):
    with pytest.raises(CommandExitException) as e:
        sandbox.commands.run("echo out; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stdout == "out\n"


def test_callbacks_and_large_output(sandbox):
    chunks = []
    r = sandbox.commands.run("head -c 200000 /dev/zero | tr '\\0' a", on_stdout=chunks.append)
    assert len(r.stdout) == 200000
    assert "".join(chunks) == r.stdout


def test_default_user_cwd_and_home(sandbox):
    r = sandbox.commands.run("whoami; pwd; echo $HOME")
    assert r.stdout == "user\n/home/user\n/home/user\n"
    r = sandbox.commands.run("whoami; id -u", user="root")
    assert r.stdout == "root\n0\n"


def test_cwd(sandbox):
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    sandbox.commands.run("mkdir -p /home/user/sub && chown user: /home/user/sub", user="root")
    assert sandbox.commands.run("pwd", cwd="sub").stdout == "/home/user/sub\n"
    with pytest.raises(InvalidArgumentException):
        sandbox.commands.run("pwd", cwd="/does/not/exist")


def test_envs_do_not_leak(sandbox):
    assert sandbox.commands.run("echo $FOO", envs={"FOO": "bar"}).stdout == "bar\n"
    assert sandbox.commands.run('echo "[$FOO]"').stdout == "[]\n"
    assert sandbox.commands.run('sudo echo "$FOO"').stdout == "\n"
    r = sandbox.commands.run("echo $E2B_SANDBOX $E2B_SANDBOX_ID")
    assert r.stdout == f"true {sandbox.sandbox_id}\n"


def test_background_list_connect_kill(sandbox):
    a = sandbox.commands.run("sleep 30", background=True)
    b = sandbox.commands.run("sleep 31", background=True)
    listed = {p.pid: p for p in sandbox.commands.list()}
    assert a.pid in listed and b.pid in listed
    assert listed[a.pid].cmd == "/bin/bash"
    assert listed[a.pid].args == ["-l", "-c", "sleep 30"]

    c = sandbox.commands.connect(a.pid)
    assert c.pid == a.pid

    assert sandbox.commands.kill(a.pid) is True
    with pytest.raises(CommandExitException):
        sandbox.commands.run(f"kill -0 {a.pid}")
    with pytest.raises(CommandExitException) as e:
        c.wait()
    assert e.value.exit_code == -1
    assert a.pid not in {p.pid for p in sandbox.commands.list()}
    assert sandbox.commands.kill(b.pid) is True


def test_unknown_pids(sandbox):
    assert sandbox.commands.kill(999999) is False
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999999)


def test_send_stdin_and_close(sandbox):
    h = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(h.pid, "hello\n")
    sandbox.commands.send_stdin(h.pid, "multi\nline ✓ $HOME '\"\n")
    sandbox.commands.close_stdin(h.pid)
    r = h.wait()
    assert r.exit_code == 0
    assert r.stdout == "hello\nmulti\nline ✓ $HOME '\"\n"


def test_stdin_false_is_dev_null(sandbox):
    r = sandbox.commands.run("cat; echo done")
    assert r.stdout == "done\n"


def test_timeout_kills_the_process(sandbox):
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30 & echo $! > /tmp/bgpid; wait", timeout=2)
    pid = sandbox.commands.run("cat /tmp/bgpid").stdout.strip()
    # The command (bash) was killed at the deadline; it is no longer listed.
    time.sleep(0.5)
    assert all(p.args != ["-l", "-c", "sleep 30 & echo $! > /tmp/bgpid; wait"] for p in sandbox.commands.list())
    sandbox.commands.run(f"kill {pid} || true")


def test_disconnect_keeps_running(sandbox):
    h = sandbox.commands.run("sleep 1; echo late", background=True)
    h.disconnect()
    time.sleep(0.1)
    assert h.pid in {p.pid for p in sandbox.commands.list()}
    c = sandbox.commands.connect(h.pid)
    r = c.wait()
    assert r.exit_code == 0
    assert r.stdout == "late\n"
