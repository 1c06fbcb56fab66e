"""Sync `watch_dir` (CreateWatcher / GetWatcherEvents / RemoveWatcher polling,
docs/contract.md §6.3)."""

import uuid

import pytest
from e2b import FilesystemEventType, Sandbox
from e2b.exceptions import NotFoundException, SandboxException

HOME = "/home/user"


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_new_file_gives_exactly_create_chmod_write(sandbox: Sandbox):
    d = _name("watch")
    sandbox.files.make_dir(d)
    handle = sandbox.files.watch_dir(d)
    sandbox.files.write(f"{d}/f.txt", "content")
    events = handle.get_new_events()
    assert [(e.type, e.name) for e in events] == [
        (FilesystemEventType.CREATE, "f.txt"),
        (FilesystemEventType.CHMOD, "f.txt"),
        (FilesystemEventType.WRITE, "f.txt"),
    ]
    assert all(e.entry is None for e in events)
    # Buffer cleared; an overwrite gives a WRITE.
    assert handle.get_new_events() == []
    sandbox.files.write(f"{d}/f.txt", "changed")
    assert any(e.type == FilesystemEventType.WRITE and e.name == "f.txt" for e in handle.get_new_events())
    sandbox.files.remove(f"{d}/f.txt")
    assert [(e.type, e.name) for e in handle.get_new_events()] == [(FilesystemEventType.REMOVE, "f.txt")]
    handle.stop()


def test_rename_and_include_entry(sandbox: Sandbox):
    d = _name("watchentry")
    sandbox.files.make_dir(d)
    sandbox.files.write(f"{d}/a.txt", "a")
    handle = sandbox.files.watch_dir(d, include_entry=True)
    sandbox.files.write(f"{d}/b.txt", "bb")
    events = handle.get_new_events()
    assert events[0].type == FilesystemEventType.CREATE
    assert events[0].entry is not None
    assert events[0].entry.path == f"{HOME}/{d}/b.txt"
    assert events[0].entry.name == "b.txt"
    sandbox.files.rename(f"{d}/a.txt", f"{d}/c.txt")
    events = handle.get_new_events()
    assert [(e.type, e.name) for e in events] == [
        (FilesystemEventType.RENAME, "a.txt"),
        (FilesystemEventType.CREATE, "c.txt"),
    ]
    assert events[0].entry is None
    handle.stop()


def test_recursive_names_and_new_subdirectories(sandbox: Sandbox):
    d = _name("watchrec")
    sandbox.files.make_dir(f"{d}/nested")
    handle = sandbox.files.watch_dir(d, recursive=True)
    sandbox.files.write(f"{d}/nested/file.txt", "x")
    events = handle.get_new_events()
    assert len(events) == 3
    assert events[0].type == FilesystemEventType.CREATE
    assert events[0].name == "nested/file.txt"

    # A directory created after the watch started is watched too.
    sandbox.files.make_dir(f"{d}/later/deeper")
    sandbox.files.write(f"{d}/later/deeper/g.txt", "y")
    names = [(e.type, e.name) for e in handle.get_new_events()]
    assert (FilesystemEventType.CREATE, "later") in names
    assert (FilesystemEventType.WRITE, "later/deeper/g.txt") in names

    # Directories created by a process are picked up (rescanned when they appear).
    sandbox.commands.run(f"mkdir -p {HOME}/{d}/proc/a && echo hi > {HOME}/{d}/proc/a/h.txt")
    names = [e.name for e in handle.get_new_events()]
    assert "proc/a/h.txt" in names
    handle.stop()


def test_non_recursive_ignores_nested(sandbox: Sandbox):
    d = _name("watchflat")
    sandbox.files.make_dir(f"{d}/nested")
    handle = sandbox.files.watch_dir(d)
    sandbox.files.write(f"{d}/nested/file.txt", "x")
    assert handle.get_new_events() == []
    handle.stop()


def test_watch_errors(sandbox: Sandbox):
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir(_name("missing"))
    f = _name("plainfile")
    sandbox.files.write(f, "x")
    with pytest.raises(SandboxException):
        sandbox.files.watch_dir(f)


def test_stop_and_allow_network_mounts(sandbox: Sandbox):
    d = _name("watchstop")
    sandbox.files.make_dir(d)
    handle = sandbox.files.watch_dir(d, allow_network_mounts=True)
    handle.stop()
    with pytest.raises(SandboxException):
        handle.get_new_events()


def test_many_watchers_are_released(sandbox: Sandbox):
    d = _name("watchmany")
    sandbox.files.make_dir(d)
    for _ in range(300):
        sandbox.files.watch_dir(d, recursive=True).stop()
    handle = sandbox.files.watch_dir(d)
    sandbox.files.write(f"{d}/z", "z")
    assert len(handle.get_new_events()) == 3
    handle.stop()
