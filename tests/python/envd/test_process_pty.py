"""process.Process PTYs through the official SDK (sync and async)."""

import time

from e2b.sandbox.commands.command_handle import PtySize


def _collect(sandbox, pid, data: bytes, until: bytes, timeout=10.0):
    """Connect to a PTY, send input, and read until `until` appears."""
    out = b""
    h = sandbox.pty.connect(pid, timeout=timeout)
    sandbox.pty.send_stdin(pid, data)
    deadline = time.monotonic() + timeout
    for _stdout, _stderr, pty in h:
        if pty:
            out += pty
        if until in out or time.monotonic() > deadline:
            break
    h.disconnect()
    return out


def test_pty_env_cwd_and_exit(sandbox):
    h = sandbox.pty.create(PtySize(rows=24, cols=80), envs={"ABC": "123"}, cwd="/")
    sandbox.pty.send_stdin(h.pid, b"echo $ABC; pwd\nexit\n")
    out = []
    r = h.wait(on_pty=out.append)
    assert r.exit_code == 0
    text = b"".join(out)
    assert b"123" in text
    assert b"\r\n/\r\n" in text


def test_pty_is_a_controlling_terminal(sandbox):
    h = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.send_stdin(h.pid, b"tty; [ -t 0 ] && echo is-a-tty; set -o | grep -w monitor; exit\n")
    out = []
    h.wait(on_pty=out.append)
    text = b"".join(out).decode(errors="replace")
    assert "/dev/pts/" in text
    assert "\r\nis-a-tty\r\n" in text
    # bash enables job control only with a controlling terminal.
    assert "monitor" in text and "on" in text.split("monitor", 2)[-1]
    assert "no job control" not in text


def test_pty_resize(sandbox):
    h = sandbox.pty.create(PtySize(rows=24, cols=80))
    cmd = b"echo cols=$(tput cols)\n"
    assert b"cols=80" in _collect(sandbox, h.pid, cmd, b"cols=80")
    sandbox.pty.resize(h.pid, PtySize(rows=24, cols=100))
    assert b"cols=100" in _collect(sandbox, h.pid, cmd, b"cols=100")
    assert sandbox.pty.kill(h.pid) is True


def test_pty_connect_after_disconnect(sandbox):
    h = sandbox.pty.create(PtySize(rows=24, cols=80), envs={"FOO": "bar"})
    sandbox.pty.send_stdin(h.pid, b"echo first\n")
    h.disconnect()
    c = sandbox.pty.connect(h.pid)
    assert c.pid == h.pid
    sandbox.pty.send_stdin(h.pid, b"echo $FOO\nexit\n")
    out = []
    r = c.wait(on_pty=out.append)
    assert r.exit_code == 0
    assert b"bar" in b"".join(out)


def test_pty_kill(sandbox):
    h = sandbox.pty.create(PtySize(rows=24, cols=80))
    assert sandbox.pty.kill(h.pid) is True
    r = sandbox.commands.run(f"kill -0 {h.pid} 2>/dev/null; echo $?")
    assert r.stdout.strip() != "0"
    assert sandbox.pty.kill(999999) is False


async def test_async_pty_and_commands(async_sandbox):
    out = []
    h = await async_sandbox.pty.create(PtySize(rows=24, cols=80), on_data=out.append, envs={"ABC": "xyz"})
    await async_sandbox.pty.send_stdin(h.pid, b"echo $ABC\nexit\n")
    r = await h.wait()
    assert r.exit_code == 0
    assert b"xyz" in b"".join(out)
    r = await async_sandbox.commands.run("echo async")
    assert r.stdout == "async\n"
