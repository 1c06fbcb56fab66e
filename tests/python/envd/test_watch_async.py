"""Async `watch_dir` (the `WatchDir` server stream, docs/contract.md §6.3)."""

import asyncio
import uuid

import pytest
from e2b import AsyncSandbox, FilesystemEvent, FilesystemEventType
from e2b.exceptions import NotFoundException, SandboxException


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


class Collector:
    def __init__(self):
        self.events: list[FilesystemEvent] = []
        self.changed = asyncio.Event()

    def __call__(self, e: FilesystemEvent):
        self.events.append(e)
        self.changed.set()

    async def wait_for(self, pred, timeout=10.0):
        async def loop():
            while not any(pred(e) for e in self.events):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


async def test_stream_new_file_events(async_sandbox: AsyncSandbox):
    d = _name("awatch")
    await async_sandbox.files.make_dir(d)
    c = Collector()
    handle = await async_sandbox.files.watch_dir(d, on_event=c)
    await async_sandbox.files.write(f"{d}/f.txt", "x")
    await c.wait_for(lambda e: e.type == FilesystemEventType.WRITE and e.name == "f.txt")
    assert [(e.type, e.name) for e in c.events[:3]] == [
        (FilesystemEventType.CREATE, "f.txt"),
        (FilesystemEventType.CHMOD, "f.txt"),
        (FilesystemEventType.WRITE, "f.txt"),
    ]
    await handle.stop()


async def test_stream_recursive_and_later_subdirectory(async_sandbox: AsyncSandbox):
    d = _name("awatchrec")
    await async_sandbox.files.make_dir(f"{d}/nested")
    c = Collector()
    handle = await async_sandbox.files.watch_dir(d, on_event=c, recursive=True, include_entry=True)
    await async_sandbox.files.write(f"{d}/nested/f.txt", "x")
    await c.wait_for(lambda e: e.type == FilesystemEventType.WRITE and e.name == "nested/f.txt")
    created = next(e for e in c.events if e.type == FilesystemEventType.CREATE)
    assert created.entry is not None and created.entry.path.endswith(f"{d}/nested/f.txt")
    await async_sandbox.files.make_dir(f"{d}/later")
    await async_sandbox.files.write(f"{d}/later/g.txt", "y")
    await c.wait_for(lambda e: e.type == FilesystemEventType.WRITE and e.name == "later/g.txt")
    await handle.stop()


async def test_stream_errors(async_sandbox: AsyncSandbox):
    with pytest.raises(NotFoundException):
        await async_sandbox.files.watch_dir(_name("missing"), on_event=lambda e: None)
    f = _name("afile")
    await async_sandbox.files.write(f, "x")
    with pytest.raises(SandboxException):
        await async_sandbox.files.watch_dir(f, on_event=lambda e: None)


async def test_stream_timeout_ends_watch(async_sandbox: AsyncSandbox):
    d = _name("awatchto")
    await async_sandbox.files.make_dir(d)
    exited = asyncio.Event()
    errors = []

    def on_exit(err):
        errors.append(err)
        exited.set()

    handle = await async_sandbox.files.watch_dir(d, on_event=lambda e: None, on_exit=on_exit, timeout=1)
    await asyncio.wait_for(exited.wait(), 10)
    await handle.stop()
    # The sandbox still serves watches afterwards.
    c = Collector()
    handle = await async_sandbox.files.watch_dir(d, on_event=c)
    await async_sandbox.files.write(f"{d}/after", "x")
    await c.wait_for(lambda e: e.name == "after")
    await handle.stop()
