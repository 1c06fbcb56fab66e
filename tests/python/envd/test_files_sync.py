"""Files through the official sync SDK: write/read (multipart, octet-stream, gzip, streams),
exists, get_info, list, make_dir, rename, remove, metadata (docs/contract.md §6.2-6.3)."""

import io
import uuid
from datetime import datetime

import pytest
from e2b import FileType, Sandbox
from e2b.exceptions import FileNotFoundException, InvalidArgumentException, NotFoundException
from e2b.sandbox.filesystem.filesystem import WriteEntry

HOME = "/home/user"


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_write_and_read_text_bytes_and_io(sandbox: Sandbox):
    name = _name("text") + ".txt"
    info = sandbox.files.write(name, "hello text")
    assert info.path == f"{HOME}/{name}"
    assert info.name == name
    assert info.type == FileType.FILE
    assert info.metadata is None
    assert sandbox.files.read(name) == "hello text"

    data = bytes(range(256)) * 10
    sandbox.files.write(name + ".bin", data)
    assert sandbox.files.read(name + ".bin", format="bytes") == data

    # File-like data goes as an octet-stream upload (one request per file).
    sandbox.files.write(name + ".io", io.BytesIO(b"from bytesio"))
    assert sandbox.files.read(name + ".io") == "from bytesio"
    sandbox.files.write(name + ".sio", io.StringIO("from stringio"))
    assert sandbox.files.read(name + ".sio") == "from stringio"


def test_write_files_one_request(sandbox: Sandbox):
    base = _name("multi")
    files = [WriteEntry(path=f"{base}/f{i}.txt", data=f"content {i}") for i in range(10)]
    infos = sandbox.files.write_files(files)
    assert [i.path for i in infos] == [f"{HOME}/{base}/f{i}.txt" for i in range(10)]
    for i in range(10):
        assert sandbox.files.read(f"{base}/f{i}.txt") == f"content {i}"
    assert sandbox.files.write_files([]) == []
    one = sandbox.files.write_files([WriteEntry(path=f"{base}/one.txt", data=b"1")])
    assert len(one) == 1 and one[0].path == f"{HOME}/{base}/one.txt"


def test_write_files_mixed_data_and_absolute_paths(sandbox: Sandbox):
    base = f"/tmp/{_name('mixed')}"
    infos = sandbox.files.write_files(
        [
            WriteEntry(path=f"{base}/a.txt", data="str"),
            WriteEntry(path=f"{base}/b.bin", data=b"bytes"),
            WriteEntry(path=f"{base}/c.txt", data=io.BytesIO(b"bytesio")),
            WriteEntry(path=f"{base}/d.txt", data=io.StringIO("stringio")),
        ]
    )
    assert [i.path for i in infos] == [f"{base}/{n}" for n in ("a.txt", "b.bin", "c.txt", "d.txt")]
    assert sandbox.files.read(f"{base}/a.txt") == "str"
    assert sandbox.files.read(f"{base}/b.bin") == "bytes"
    assert sandbox.files.read(f"{base}/c.txt") == "bytesio"
    assert sandbox.files.read(f"{base}/d.txt") == "stringio"


def test_overwrite_and_parent_dirs(sandbox: Sandbox):
    path = f"{_name('deep')}/a/b/c/file.txt"
    sandbox.files.write(path, "first version, longer")
    sandbox.files.write(path, "second")
    assert sandbox.files.read(path) == "second"
    parent = sandbox.files.get_info(path.rsplit("/", 1)[0])
    assert parent.type == FileType.DIR
    assert parent.mode == 0o755
    assert parent.owner == "user" and parent.group == "user"


def test_gzip_and_octet_stream_uploads(sandbox: Sandbox):
    name = _name("gz")
    content = "compressible " * 5000
    info = sandbox.files.write(name, content, gzip=True)
    assert info.path == f"{HOME}/{name}"
    assert sandbox.files.read(name) == content
    assert sandbox.files.read(name, gzip=True) == content
    assert sandbox.files.read(name, format="bytes", gzip=True) == content.encode()
    sandbox.files.write(name + ".oct", "octet", use_octet_stream=True)
    assert sandbox.files.read(name + ".oct") == "octet"
    infos = sandbox.files.write_files(
        [WriteEntry(path=f"{name}.g1", data="one"), WriteEntry(path=f"{name}.g2", data=io.BytesIO(b"two"))],
        gzip=True,
    )
    assert len(infos) == 2
    assert sandbox.files.read(f"{name}.g2") == "two"


def test_read_missing_and_empty(sandbox: Sandbox):
    with pytest.raises(FileNotFoundException):
        sandbox.files.read(_name("missing"))
    with pytest.raises(NotFoundException):
        sandbox.files.read(_name("missing"), format="bytes")
    name = _name("empty")
    sandbox.files.write(name, "")
    assert sandbox.files.read(name) == ""


def test_read_stream(sandbox: Sandbox):
    name = _name("stream")
    data = bytes(range(256)) * 4096  # 1 MiB
    sandbox.files.write(name, data)
    for gz in (False, True):
        with sandbox.files.read(name, format="stream", gzip=gz) as stream:
            assert b"".join(stream) == data
    # A partial read, then close.
    stream = sandbox.files.read(name, format="stream")
    first = next(iter(stream))
    assert data.startswith(first)
    stream.close()


def test_exists(sandbox: Sandbox):
    name = _name("exists")
    assert not sandbox.files.exists(name)
    sandbox.files.write(name, "x")
    assert sandbox.files.exists(name)
    assert sandbox.files.exists(f"{HOME}/{name}")
    assert sandbox.files.exists("~/" + name)


def test_get_info_file_and_dir(sandbox: Sandbox):
    name = _name("info") + ".txt"
    sandbox.files.write(name, "test")
    info = sandbox.files.get_info(name)
    assert info.name == name
    assert info.type == FileType.FILE
    assert info.path == f"{HOME}/{name}"
    assert info.size == 4
    assert info.mode == 0o644
    assert info.permissions == "-rw-r--r--"
    assert info.owner == "user" and info.group == "user"
    assert isinstance(info.modified_time, datetime) and info.modified_time.tzinfo is not None
    assert info.symlink_target is None
    assert info.metadata is None

    d = _name("infodir")
    sandbox.files.make_dir(d)
    dinfo = sandbox.files.get_info(d)
    assert dinfo.type == FileType.DIR
    assert dinfo.mode == 0o755
    assert dinfo.permissions == "drwxr-xr-x"
    assert dinfo.size > 0

    tmp = sandbox.files.get_info("/tmp")
    assert tmp.permissions == "dtrwxrwxrwx"

    with pytest.raises(FileNotFoundException):
        sandbox.files.get_info(_name("nope"))


def _make_links(sandbox: Sandbox) -> str:
    """A dir with target.txt, tdir/ and links to them (flink, dlink) and a broken link."""
    d = _name("links")
    sandbox.files.write(f"{d}/target.txt", "t")
    sandbox.files.make_dir(f"{d}/tdir")
    sandbox.commands.run("ln -s target.txt flink && ln -s tdir dlink && ln -s gone broken", cwd=f"{HOME}/{d}")
    return d


def test_symlink_info(sandbox: Sandbox):
    d = _make_links(sandbox)
    f = sandbox.files.get_info(f"{d}/flink")
    assert f.symlink_target == f"{HOME}/{d}/target.txt"
    assert f.permissions == "Lrwxrwxrwx"
    assert f.mode == 0o644
    dl = sandbox.files.get_info(f"{d}/dlink")
    assert dl.symlink_target == f"{HOME}/{d}/tdir"
    names = [e.name for e in sandbox.files.list(d)]
    # The broken link has no type and is dropped by the SDK.
    assert names == ["dlink", "flink", "target.txt", "tdir"]


@pytest.mark.sdk(below="2.51.0")
def test_symlink_type_is_the_targets_before_e2b_2_51(sandbox: Sandbox):
    d = _make_links(sandbox)
    assert sandbox.files.get_info(f"{d}/flink").type == FileType.FILE
    assert sandbox.files.get_info(f"{d}/dlink").type == FileType.DIR


@pytest.mark.sdk(min="2.51.0")
def test_symlink_type_is_symlink_from_e2b_2_51(sandbox: Sandbox):
    """envd's EntryInfo.isSymlink: the newer SDKs show the link itself as a symlink."""
    d = _make_links(sandbox)
    assert sandbox.files.get_info(f"{d}/flink").type == FileType.SYMLINK
    assert sandbox.files.get_info(f"{d}/dlink").type == FileType.SYMLINK
    types = {e.name: e.type for e in sandbox.files.list(d)}
    assert types == {
        "dlink": FileType.SYMLINK,
        "flink": FileType.SYMLINK,
        "target.txt": FileType.FILE,
        "tdir": FileType.DIR,
    }


def test_list_depths_exact_order(sandbox: Sandbox):
    root = _name("list")
    sandbox.files.make_dir(root)
    for sub in ("subdir2/subdir2_2", "subdir2/subdir2_1", "subdir1/subdir1_2/deep", "subdir1/subdir1_1"):
        sandbox.files.make_dir(f"{root}/{sub}")
    sandbox.files.write(f"{root}/file1.txt", "x")

    def rel(entries):
        return [e.path[len(f"{HOME}/{root}/") :] for e in entries]

    assert rel(sandbox.files.list(root)) == ["file1.txt", "subdir1", "subdir2"]
    assert rel(sandbox.files.list(root, depth=1)) == ["file1.txt", "subdir1", "subdir2"]
    assert rel(sandbox.files.list(root, depth=2)) == [
        "file1.txt",
        "subdir1",
        "subdir1/subdir1_1",
        "subdir1/subdir1_2",
        "subdir2",
        "subdir2/subdir2_1",
        "subdir2/subdir2_2",
    ]
    assert rel(sandbox.files.list(root, depth=3)) == [
        "file1.txt",
        "subdir1",
        "subdir1/subdir1_1",
        "subdir1/subdir1_2",
        "subdir1/subdir1_2/deep",
        "subdir2",
        "subdir2/subdir2_1",
        "subdir2/subdir2_2",
    ]
    entries = sandbox.files.list(root)
    f = entries[0]
    assert (f.type, f.mode, f.permissions, f.owner, f.size) == (FileType.FILE, 0o644, "-rw-r--r--", "user", 1)
    assert f.symlink_target is None
    d = entries[1]
    assert (d.type, d.mode, d.permissions, d.group) == (FileType.DIR, 0o755, "drwxr-xr-x", "user")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.list(root, depth=-1)
    with pytest.raises(FileNotFoundException):
        sandbox.files.list(_name("nolist"))
    with pytest.raises(InvalidArgumentException):
        sandbox.files.list(f"{root}/file1.txt")


def test_make_dir(sandbox: Sandbox):
    d = _name("mk") + "/a/b"
    assert sandbox.files.make_dir(d) is True
    assert sandbox.files.make_dir(d) is False
    name = _name("mkfile")
    sandbox.files.write(name, "x")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.make_dir(name)


def test_rename(sandbox: Sandbox):
    old, new = _name("old"), _name("new")
    sandbox.files.write(old, "moving")
    info = sandbox.files.rename(old, new)
    assert info.path == f"{HOME}/{new}"
    assert not sandbox.files.exists(old)
    assert sandbox.files.read(new) == "moving"
    info = sandbox.files.rename(new, f"{_name('into')}/sub/{new}")
    assert info.name == new
    with pytest.raises(FileNotFoundException):
        sandbox.files.rename(_name("missing"), _name("dest"))


def test_remove(sandbox: Sandbox):
    name = _name("rm")
    sandbox.files.write(f"{name}/inner/f.txt", "x")
    sandbox.files.remove(name)
    assert not sandbox.files.exists(name)
    # Removing a missing path succeeds.
    sandbox.files.remove(name)
    sandbox.files.remove(_name("never"))


def test_metadata_round_trip(sandbox: Sandbox):
    name = _name("meta")
    info = sandbox.files.write(name, "m", metadata={"Author": "alice", "k": "v w"})
    assert info.metadata == {"author": "alice", "k": "v w"}
    assert sandbox.files.get_info(name).metadata == {"author": "alice", "k": "v w"}
    listed = [e for e in sandbox.files.list(HOME) if e.name == name]
    assert listed[0].metadata == {"author": "alice", "k": "v w"}
    moved = sandbox.files.rename(name, name + ".moved")
    assert moved.metadata == {"author": "alice", "k": "v w"}
    # An overwrite without metadata clears it.
    again = sandbox.files.write(name + ".moved", "m2")
    assert again.metadata is None
    assert sandbox.files.get_info(name + ".moved").metadata is None
    infos = sandbox.files.write_files(
        [WriteEntry(path=f"{name}.1", data="1"), WriteEntry(path=f"{name}.2", data="2")], metadata={"x": "1"}
    )
    assert [i.metadata for i in infos] == [{"x": "1"}, {"x": "1"}]
    # Invalid metadata is rejected by the SDK before any request; nothing is created.
    with pytest.raises(InvalidArgumentException):
        sandbox.files.write(name + ".bad", "x", metadata={"k": "caf\u00e9"})
    assert not sandbox.files.exists(name + ".bad")


def test_metadata_set_by_a_process(sandbox: Sandbox):
    name = _name("xattr")
    sandbox.files.write(name, "x")
    sandbox.commands.run(f"python3 -c \"import os; os.setxattr('{name}', 'user.e2b.author', b'proc')\"")
    assert sandbox.files.get_info(name).metadata == {"author": "proc"}


def test_write_as_root(sandbox: Sandbox):
    name = f"/tmp/{_name('rootfile')}/f.txt"
    sandbox.files.write(name, "r", user="root")
    info = sandbox.files.get_info(name, user="root")
    assert info.owner == "root"
    assert sandbox.files.get_info(name.rsplit("/", 1)[0]).owner == "root"
    # Relative paths resolve against the user's home.
    rel = _name("roothome")
    assert sandbox.files.write(rel, "r", user="root").path == f"/root/{rel}"
