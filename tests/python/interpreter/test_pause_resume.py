"""A code-interpreter sandbox across pause and resume."""

from e2b_code_interpreter import Sandbox


def test_memory_pause_keeps_kernel_state():
    sbx = Sandbox.create("code-interpreter-v1", timeout=120)
    try:
        sbx.run_code("x = 41")
        assert sbx.pause() is True
        assert sbx.is_running() is False
        sbx.connect()
        assert sbx.run_code("x + 1").text == "42"
    finally:
        sbx.kill()


def test_filesystem_pause_comes_back_ready():
    sbx = Sandbox.create("code-interpreter-v1", timeout=120)
    try:
        sbx.files.write("/home/user/kept.txt", "kept")
        assert sbx.pause(keep_memory=False) is True
        sbx.connect()
        # A cold boot: the kernel is new (state gone), files are kept, and the first run_code
        # works at once because resume waits for the interpreter's kernel.
        assert sbx.run_code("open('/home/user/kept.txt').read()").text == "kept"  # quotes stripped like upstream
        assert sbx.run_code("'x' in globals()").text == "False"
    finally:
        sbx.kill()
