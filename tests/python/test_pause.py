"""Pause, resume, auto-pause and auto-resume through the official E2B SDK (docs/lifecycle.md)."""

import datetime
import os
import time
import urllib.error
import urllib.request

import pytest
from e2b import AsyncSandbox, Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import SandboxException, NotFoundException

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


def _boot_id(sbx) -> str:
    return sbx.commands.run(BOOT_ID).stdout.strip()


def _wait_state(sandbox_id: str, state: SandboxState, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    info = None
    while time.monotonic() < deadline:
        info = Sandbox.get_info(sandbox_id)
        if info.state == state:
            return info
        time.sleep(0.2)
    raise AssertionError(f"sandbox {sandbox_id} did not reach {state}: {info}")


def _envd_health(sandbox_id: str) -> int:
    """GET /health through the sandbox proxy (envd port), as SDK traffic would go."""
    url = os.environ["E2B_SANDBOX_URL"] + "/health"
    req = urllib.request.Request(url, headers={"E2b-Sandbox-Id": sandbox_id})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_pause_then_connect_resumes_same_sandbox(sandbox, sandbox_test_id):
    sandbox.files.write("/home/user/marker.txt", "kept")
    assert sandbox.pause() is True
    assert not sandbox.is_running()
    assert _envd_health(sandbox.sandbox_id) == 502
    info = Sandbox.get_info(sandbox.sandbox_id)
    assert info.state == SandboxState.PAUSED
    # endAt of a paused sandbox is the pause time
    assert info.end_at <= datetime.datetime.now(datetime.timezone.utc)
    listed = Sandbox.list(
        query=SandboxQuery(metadata={"sandbox_test_id": sandbox_test_id}, state=[SandboxState.PAUSED])
    ).next_items()
    assert [s.sandbox_id for s in listed] == [sandbox.sandbox_id]
    assert listed[0].state == SandboxState.PAUSED
    running = Sandbox.list(
        query=SandboxQuery(metadata={"sandbox_test_id": sandbox_test_id}, state=[SandboxState.RUNNING])
    ).next_items()
    assert running == []

    # pausing again reports "already paused"
    assert sandbox.pause() is False

    resumed = Sandbox.connect(sandbox.sandbox_id)
    assert resumed.sandbox_id == sandbox.sandbox_id
    assert resumed.is_running()
    assert resumed.files.read("/home/user/marker.txt") == "kept"
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING
    # the old handle keeps working with the same access token
    assert sandbox.commands.run("echo ok").stdout.strip() == "ok"


def test_memory_pause_keeps_boot_id_and_processes(sandbox):
    boot = _boot_id(sandbox)
    bg = sandbox.commands.run("sleep 600", background=True)
    sandbox.commands.run("echo 41 > /tmp/counter")
    assert sandbox.pause(keep_memory=True)
    sandbox.connect()
    assert sandbox.is_running()
    assert _boot_id(sandbox) == boot
    assert sandbox.commands.run(f"kill -0 {bg.pid} && cat /tmp/counter").stdout.strip() == "41"


def test_filesystem_pause_keeps_files_and_reboots(sandbox):
    boot = _boot_id(sandbox)
    bg = sandbox.commands.run("sleep 600", background=True)
    sandbox.files.write("/home/user/fs-marker", "still here")
    assert sandbox.pause(keep_memory=False) is True
    assert not sandbox.is_running()
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED
    sandbox.connect()
    assert sandbox.is_running()
    assert _boot_id(sandbox) != boot
    assert sandbox.files.read("/home/user/fs-marker") == "still here"
    # processes did not survive the reboot
    r = sandbox.commands.run(f"kill -0 {bg.pid} 2>/dev/null && echo alive || echo gone")
    assert r.stdout.strip() == "gone"
    # and the sandbox works like a fresh one (commands, sudo, files)
    assert sandbox.commands.run("sudo id -u").stdout.strip() == "0"


@pytest.mark.sdk(min="2.51.0")
def test_connect_on_resume_reboot_boots_afresh_on_the_same_files(sandbox):
    """e2b >= 2.51: connect(on_resume="reboot") sends {"memory": false} to
    /v2/sandboxes/{id}/connect: a memory pause is resumed by a fresh boot on its files."""
    boot = _boot_id(sandbox)
    bg = sandbox.commands.run("sleep 600", background=True)
    sandbox.files.write("/home/user/reboot-marker", "still here")
    assert sandbox.pause() is True
    resumed = Sandbox.connect(sandbox.sandbox_id, on_resume="reboot")
    assert resumed.is_running()
    assert _boot_id(resumed) != boot
    assert resumed.files.read("/home/user/reboot-marker") == "still here"
    r = resumed.commands.run(f"kill -0 {bg.pid} 2>/dev/null && echo alive || echo gone")
    assert r.stdout.strip() == "gone"


def test_pause_unknown_sandbox_raises_not_found():
    with pytest.raises(NotFoundException):
        Sandbox.pause("nonexistingsandbox")


def test_kill_paused_sandbox(sandbox):
    assert sandbox.pause()
    assert sandbox.kill() is True
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sandbox.sandbox_id)
    # connect to a killed sandbox is "not found"
    with pytest.raises(NotFoundException):
        Sandbox.connect(sandbox.sandbox_id)


@pytest.mark.parametrize("keep_memory", [True, False])
def test_on_timeout_pause(sandbox_test_id, keep_memory):
    lifecycle = {"on_timeout": {"action": "pause", "keep_memory": keep_memory}}
    sbx = Sandbox.create("base", metadata={"sandbox_test_id": sandbox_test_id}, lifecycle=lifecycle)
    try:
        info = Sandbox.get_info(sbx.sandbox_id)
        assert info.lifecycle == {"on_timeout": "pause", "auto_resume": False}
        boot = _boot_id(sbx)
        sbx.files.write("/home/user/auto.txt", "auto")
        sbx.set_timeout(1)
        _wait_state(sbx.sandbox_id, SandboxState.PAUSED)
        assert not sbx.is_running()
        sbx.connect()
        assert sbx.is_running()
        assert sbx.files.read("/home/user/auto.txt") == "auto"
        assert (_boot_id(sbx) == boot) is keep_memory
        # a resumed sandbox gets a fresh timeout
        assert Sandbox.get_info(sbx.sandbox_id).end_at.timestamp() > time.time() + 100
    finally:
        sbx.kill()


def test_timeout_zero_pauses_with_on_timeout_pause(sandbox_test_id):
    sbx = Sandbox.create("base", metadata={"sandbox_test_id": sandbox_test_id}, lifecycle={"on_timeout": "pause"})
    try:
        boot = _boot_id(sbx)
        sbx.set_timeout(0)
        _wait_state(sbx.sandbox_id, SandboxState.PAUSED)
        sbx.connect()
        assert _boot_id(sbx) == boot
    except SandboxException as e:  # a client that refuses 0 locally is not a server failure
        if "timeout" not in str(e).lower():
            raise
    finally:
        sbx.kill()


def test_auto_resume_on_traffic(sandbox_test_id):
    sbx = Sandbox.create(
        "base",
        metadata={"sandbox_test_id": sandbox_test_id},
        lifecycle={"on_timeout": "pause", "auto_resume": True},
    )
    try:
        assert Sandbox.get_info(sbx.sandbox_id).lifecycle == {"on_timeout": "pause", "auto_resume": True}
        boot = _boot_id(sbx)
        assert sbx.pause()
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
        # plain sandbox traffic wakes it
        assert _envd_health(sbx.sandbox_id) == 204
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
        assert _boot_id(sbx) == boot
    finally:
        sbx.kill()


def test_no_auto_resume_without_opt_in(sandbox):
    assert sandbox.pause()
    assert _envd_health(sandbox.sandbox_id) == 502
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED


def test_list_pages_mix_running_and_paused(sandbox_test_id):
    meta = {"sandbox_test_id": sandbox_test_id}
    older = Sandbox.create("base", metadata=meta)
    newer = Sandbox.create("base", metadata=meta)
    try:
        assert older.pause()
        paginator = Sandbox.list(query=SandboxQuery(metadata=meta), limit=1)
        page1 = paginator.next_items()
        assert [s.sandbox_id for s in page1] == [newer.sandbox_id]
        assert page1[0].state == SandboxState.RUNNING
        assert paginator.has_next
        page2 = paginator.next_items()
        assert [s.sandbox_id for s in page2] == [older.sandbox_id]
        assert page2[0].state == SandboxState.PAUSED
        assert not paginator.has_next
    finally:
        older.kill()
        newer.kill()


async def test_async_pause_and_connect(async_sandbox):
    await async_sandbox.files.write("/home/user/a.txt", "async")
    assert await async_sandbox.pause() is True
    assert not await async_sandbox.is_running()
    assert await async_sandbox.pause() is False
    resumed = await AsyncSandbox.connect(async_sandbox.sandbox_id)
    assert await resumed.is_running()
    assert await resumed.files.read("/home/user/a.txt") == "async"
