"""Files through the official async SDK (same surface as test_files_sync.py)."""

import io
import uuid

import pytest
from e2b import AsyncSandbox, FileType
from e2b.exceptions import FileNotFoundException, InvalidArgumentException
from e2b.sandbox.filesystem.filesystem import WriteEntry

HOME = "/home/user"


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def test_write_read_and_info(async_sandbox: AsyncSandbox):
    files = async_sandbox.files
    name = _name("atext") + ".txt"
    info = await files.write(name, "test")
    assert info.path == f"{HOME}/{name}"
    assert await files.read(name) == "test"
    assert await files.read(name, format="bytes") == b"test"
    entry = await files.get_info(name)
    assert (entry.type, entry.size, entry.mode, entry.permissions) == (FileType.FILE, 4, 0o644, "-rw-r--r--")
    assert (entry.owner, entry.group) == ("user", "user")
    assert entry.modified_time.tzinfo is not None
    assert await files.exists(name)
    assert not await files.exists(name + ".nope")
    with pytest.raises(FileNotFoundException):
        await files.read(name + ".nope")
    with pytest.raises(FileNotFoundException):
        await files.get_info(name + ".nope")


async def test_write_files_gzip_and_streams(async_sandbox: AsyncSandbox):
    files = async_sandbox.files
    base = _name("amulti")
    infos = await files.write_files([WriteEntry(path=f"{base}/f{i}", data=f"c{i}") for i in range(10)])
    assert [i.path for i in infos] == [f"{HOME}/{base}/f{i}" for i in range(10)]
    content = "zip me " * 10000
    await files.write(f"{base}/gz", content, gzip=True)
    assert await files.read(f"{base}/gz", gzip=True) == content
    await files.write(f"{base}/io", io.BytesIO(b"stream body"))
    assert await files.read(f"{base}/io") == "stream body"
    data = bytes(range(256)) * 4096
    await files.write(f"{base}/big", data)
    for gz in (False, True):
        stream = await files.read(f"{base}/big", format="stream", gzip=gz)
        chunks = [c async for c in stream]
        assert b"".join(chunks) == data
    assert await files.read(f"{base}/f3") == "c3"


async def test_list_make_dir_rename_remove(async_sandbox: AsyncSandbox):
    files = async_sandbox.files
    root = _name("alist")
    assert await files.make_dir(f"{root}/b/bb") is True
    assert await files.make_dir(f"{root}/b/bb") is False
    await files.make_dir(f"{root}/a")
    await files.write(f"{root}/c.txt", "c")
    listed = await files.list(root, depth=2)
    assert [e.path[len(f"{HOME}/{root}/") :] for e in listed] == ["a", "b", "b/bb", "c.txt"]
    with pytest.raises(InvalidArgumentException):
        await files.list(f"{root}/c.txt")
    moved = await files.rename(f"{root}/c.txt", f"{root}/a/moved.txt")
    assert moved.path == f"{HOME}/{root}/a/moved.txt"
    with pytest.raises(FileNotFoundException):
        await files.rename(f"{root}/c.txt", f"{root}/x")
    await files.remove(root)
    assert not await files.exists(root)
    await files.remove(root)


async def test_metadata(async_sandbox: AsyncSandbox):
    files = async_sandbox.files
    name = _name("ameta")
    info = await files.write(name, "m", metadata={"Owner": "bob"})
    assert info.metadata == {"owner": "bob"}
    assert (await files.get_info(name)).metadata == {"owner": "bob"}
    info = await files.write(name, "m2")
    assert info.metadata is None
    assert (await files.get_info(name)).metadata is None
