"""The README quickstart, with the official SDK, end to end."""

from e2b import Sandbox


def test_quickstart():
    sbx = Sandbox.create()
    try:
        assert sbx.is_running()
        result = sbx.commands.run("echo hi")
        assert result.stdout == "hi\n"
        assert result.exit_code == 0
        sbx.files.write("/home/user/hello.txt", "hello from the host")
        assert sbx.files.read("/home/user/hello.txt") == "hello from the host"
    finally:
        assert sbx.kill() is True
    assert sbx.is_running() is False


async def test_quickstart_async():
    from e2b import AsyncSandbox

    sbx = await AsyncSandbox.create()
    try:
        result = await sbx.commands.run("echo hi")
        assert result.stdout == "hi\n"
        await sbx.files.write("hello.txt", "hi there")
        assert await sbx.files.read("hello.txt") == "hi there"
    finally:
        assert await sbx.kill() is True
    assert await sbx.is_running() is False


def test_kill_unknown_sandbox_returns_false():
    assert Sandbox.kill("nonexistingsandbox") is False
