"""A PTY behaves like a real terminal: full-screen programs (vim) work and follow a resize."""

from e2b.exceptions import TimeoutException
from e2b.sandbox.commands.command_handle import PtySize


def _read_until(sandbox, pid, until: bytes, timeout=15.0, send: bytes = b"") -> bytes:
    out = b""
    h = sandbox.pty.connect(pid, timeout=timeout)
    if send:
        sandbox.pty.send_stdin(pid, send)
    try:
        for _o, _e, pty in h:
            if pty:
                out += pty
            if until in out:
                break
    except TimeoutException:
        pass  # the stream's own deadline: return what arrived
    h.disconnect()
    return out


def test_vim_edits_a_file_through_the_pty(sandbox):
    h = sandbox.pty.create(PtySize(rows=24, cols=80), cwd="/home/user")
    h.disconnect()  # read through fresh connections below; an unread attached stream holds output back
    # Start vim full screen; its status line shows `"v.txt" [New]` once it has drawn the screen.
    screen = _read_until(sandbox, h.pid, b"[New", send=b"vim -u NONE -N v.txt\r")
    assert b'"v.txt" [New' in screen
    # Alternate screen and cursor addressing: vim drives the terminal, not a line discipline.
    assert b"\x1b[" in screen
    sandbox.pty.resize(h.pid, PtySize(rows=30, cols=120))
    # Type text, leave insert mode, write and quit; vim leaves the alternate screen on exit.
    left = _read_until(sandbox, h.pid, b"\x1b[?1049l", send=b"ihello from vim\x1b:wq\r")
    assert b"\x1b[?1049l" in left
    assert sandbox.files.read("/home/user/v.txt") == "hello from vim\n"
    # The shell is back after vim exits and sees the new size (typeahead sent while vim was
    # still exiting may be eaten by vim, so ask again until the shell answers).
    out = b""
    for _ in range(3):
        out = _read_until(sandbox, h.pid, b"size=30x120", timeout=5, send=b"echo size=$(tput lines)x$(tput cols)\r")
        if b"size=30x120" in out:
            break
    assert b"size=30x120" in out
    assert sandbox.pty.kill(h.pid) is True
