"""The async client against the control plane: the same contract as the sync tests."""

import asyncio

from e2b import AsyncSandbox, SandboxQuery, SandboxState


async def test_async_create_list_kill(sandbox_test_id):
    sbx = await AsyncSandbox.create(metadata={"sandbox_test_id": sandbox_test_id})
    try:
        assert await sbx.is_running()
        pages = AsyncSandbox.list(query=SandboxQuery(metadata={"sandbox_test_id": sandbox_test_id}))
        items = await pages.next_items()
        assert [s.sandbox_id for s in items] == [sbx.sandbox_id]
        info = await sbx.get_info()
        assert info.state == SandboxState.RUNNING
    finally:
        assert await sbx.kill() is True
    assert await sbx.is_running() is False
    assert await AsyncSandbox.kill(sbx.sandbox_id) is False


async def test_async_timeout_expires(async_sandbox: AsyncSandbox):
    await async_sandbox.set_timeout(2)
    for _ in range(50):
        if not await async_sandbox.is_running():
            break
        await asyncio.sleep(0.2)
    assert await async_sandbox.is_running() is False


async def test_async_parallel_creates():
    sbxs = await asyncio.gather(*[AsyncSandbox.create() for _ in range(4)])
    try:
        outs = await asyncio.gather(*[s.commands.run("echo $E2B_SANDBOX_ID") for s in sbxs])
        assert [o.stdout.strip() for o in outs] == [s.sandbox_id for s in sbxs]
    finally:
        await asyncio.gather(*[s.kill() for s in sbxs])
