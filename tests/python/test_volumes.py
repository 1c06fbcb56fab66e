"""Volumes (docs/volumes.md) through the official SDK's Volume API: create, list, get, mount in
sandboxes (shared, by object and by name), in-use refusal, unknown volumes, destroy; the volume
content API (read, write, list, make_dir, get_info, update_metadata, remove) without a sandbox,
also against what a sandbox left in the volume (links out of it, a FIFO)."""

import io
import json
import os
import stat
import uuid

import pytest
from e2b import Sandbox, Volume
from e2b.exceptions import (
    AuthenticationException,
    NotFoundException,
    SandboxException,
    VolumeException,
    VolumePathNotFoundException,
)

import sandboxd_daemon


@pytest.fixture
def volume():
    vol = Volume.create(f"vol-{uuid.uuid4().hex[:10]}")
    try:
        yield vol
    finally:
        Volume.destroy(vol.volume_id)


def test_volume_api(volume):
    assert volume.volume_id and volume.token
    assert [v.name for v in Volume.list() if v.volume_id == volume.volume_id] == [volume.name]
    info = Volume.get_info(volume.volume_id)
    assert (info.volume_id, info.name, info.token) == (volume.volume_id, volume.name, volume.token)
    same = Volume.connect(volume.volume_id)
    assert same.name == volume.name
    with pytest.raises(VolumeException, match="409"):
        Volume.create(volume.name)
    with pytest.raises(NotFoundException):
        Volume.get_info("nosuchvolume")
    assert Volume.destroy("nosuchvolume") is False


def test_volume_shared_between_sandboxes_and_kept_after_kill(volume):
    a = Sandbox.create("base", volume_mounts={"/data": volume}, timeout=120)
    try:
        a.commands.run("echo hello > /data/hello.txt")
        a.commands.run("echo from-root > /data/root.txt", user="root")
        assert a.get_info().volume_mounts == [{"name": volume.name, "path": "/data"}]
        b = Sandbox.create("base", volume_mounts={"/home/user/v": volume.name}, timeout=120)
        try:
            assert b.files.read("/home/user/v/hello.txt") == "hello\n"
            b.files.write("/home/user/v/from-b.txt", "b")
            assert a.files.read("/data/from-b.txt") == "b"
            assert a.commands.run("stat -c %U /data/root.txt /data/from-b.txt").stdout == "root\nuser\n"
        finally:
            b.kill()
        with pytest.raises(VolumeException, match="409"):
            Volume.destroy(volume.volume_id)
    finally:
        a.kill()
    c = Sandbox.create("base", volume_mounts={"/mnt/again": volume}, timeout=120)
    try:
        assert c.files.read("/mnt/again/hello.txt") == "hello\n"
    finally:
        c.kill()


def test_bad_volume_mounts_are_refused(volume):
    with pytest.raises(SandboxException, match="404.*no-such-volume"):
        Sandbox.create("base", volume_mounts={"/data": "no-such-volume"})
    for path in ["relative", "/", "/proc", "/etc/x", "/a/../b"]:
        with pytest.raises(SandboxException, match="400"):
            Sandbox.create("base", volume_mounts={path: volume})


def test_destroy_after_use_removes_it(volume):
    sbx = Sandbox.create("base", volume_mounts={"/data": volume}, timeout=60)
    sbx.kill()
    assert Volume.destroy(volume.volume_id) is True
    assert Volume.destroy(volume.volume_id) is False
    assert all(v.volume_id != volume.volume_id for v in Volume.list())


def _content_call(volume, method, query, volume_id=None, data=None):
    """A raw content API call with the volume's token: (status, body)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"{os.environ['E2B_VOLUME_API_URL']}/volumecontent/{volume_id or volume.volume_id}/{query}",
        method=method,
        data=data if data is not None else (b"x" if method == "PUT" else None),
        headers={"Authorization": f"Bearer {volume.token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_volume_content_without_a_sandbox(volume):
    e = volume.write_file("/notes/today.txt", "hello volume", force=True)
    assert (e.name, e.path, e.size, e.mode, e.uid, e.gid) == ("today.txt", "/notes/today.txt", 12, 0o644, 1000, 1000)
    assert e.type.value == "file"
    assert volume.read_file("/notes/today.txt") == "hello volume"
    assert volume.read_file("notes/today.txt", format="bytes") == b"hello volume"
    assert b"".join(volume.read_file("/notes/today.txt", format="stream")) == b"hello volume"
    # a rewrite replaces it whole
    volume.write_file("/notes/today.txt", b"v2")
    assert volume.read_file("/notes/today.txt") == "v2"
    d = volume.make_dir("/a/b/c", force=True, mode=0o750)
    assert (d.type.value, d.path, d.mode) == ("directory", "/a/b/c", 0o750)
    with pytest.raises(VolumeException, match="409"):
        volume.make_dir("/a/b/c")
    with pytest.raises(VolumePathNotFoundException):
        volume.make_dir("/x/y")  # no parent, no force
    with pytest.raises(VolumePathNotFoundException):
        volume.write_file("/missing/dir/f.txt", "x")
    assert [x.name for x in volume.list("/")] == ["a", "notes"]
    assert [x.path for x in volume.list("/", depth=3)] == ["/a", "/a/b", "/a/b/c", "/notes", "/notes/today.txt"]
    assert volume.exists("/a/b") and not volume.exists("/a/nope")
    info = volume.update_metadata("/notes/today.txt", mode=0o600, uid=0)
    assert (info.mode, info.uid, info.gid) == (0o600, 0, 1000)
    with pytest.raises(VolumeException, match="400"):
        volume.update_metadata("/notes/today.txt", mode=0o4755)  # no set-user-ID
    with pytest.raises(VolumeException, match="400"):
        volume.update_metadata("/notes/today.txt", uid=1 << 20)  # outside the sandboxes' ids
    with pytest.raises(VolumeException, match="400"):
        volume.read_file("/a")  # a directory
    volume.remove("/a")
    assert not volume.exists("/a/b/c")
    with pytest.raises(VolumePathNotFoundException):
        volume.remove("/a")
    # a streamed upload of a file object, and a streamed download
    big = os.urandom(3 << 20)
    volume.write_file("/big.bin", io.BytesIO(big))
    assert b"".join(volume.read_file("/big.bin", format="stream")) == big
    # the volume's token, not the API key
    stranger = Volume(volume.volume_id, volume.name, token="not-the-token")
    with pytest.raises(AuthenticationException):
        stranger.read_file("/big.bin")
    status, body = sandboxd_daemon.call_api("GET", f"/volumecontent/{volume.volume_id}/path?path=/big.bin")
    assert status == 401, body
    # bad requests: a JSON 400 (or 404) that says what is wrong, and nothing changes
    for method, query, want, says in [
        ("GET", "path", 400, "path"),  # no ?path=
        ("GET", "path?path=/big.bin&x=1&path=", 400, ""),
        ("GET", "dir?path=/&depth=deep", 400, "depth"),
        ("GET", "dir?path=/&depth=0", 400, "depth"),
        ("GET", "path?path=/a/../../etc", 400, ".."),
        ("PUT", "file?path=/new.txt&mode=4755", 400, "mode"),
        ("PUT", "file?path=/new.txt&uid=-1", 400, "uid"),
        ("DELETE", "path?path=/", 400, "root"),
        ("GET", "path?path=/nope", 404, "not found"),
    ]:
        status, answer = _content_call(volume, method, query)
        assert status == want, (method, query, answer)
        assert says in json.loads(answer)["message"], (method, query, answer)
    status, answer = _content_call(volume, "GET", "path?path=/", volume_id="nosuchvolume")
    assert status == 404, answer
    assert not volume.exists("/new.txt")


def test_volume_content_and_sandboxes_see_the_same_files(volume, tmp_path):
    volume.write_file("/from-api.txt", "api")
    canary = tmp_path / "host-canary"
    canary.write_text("host secret")
    canary.chmod(0o600)
    sbx = Sandbox.create("base", volume_mounts={"/data": volume}, timeout=120)
    try:
        assert sbx.commands.run("stat -c '%U %a' /data/from-api.txt; cat /data/from-api.txt").stdout == "user 644\napi"
        # what a sandbox may leave in a volume: links out of it, a FIFO
        sbx.commands.run(
            f"cd /data && echo in-volume > real.txt && ln -s {canary} abs-link && ln -s ../../../../..{canary} rel-link"
            " && ln -s /real.txt inner-link && mkfifo fifo && mkdir sub && ln -s / sub/root"
        )
    finally:
        sbx.kill()
    # links resolve inside the volume: never to the host's file
    assert volume.read_file("/inner-link") == "in-volume\n"
    for link in ("/abs-link", "/rel-link"):
        with pytest.raises(VolumePathNotFoundException):
            volume.read_file(link)
        entry = volume.get_info(link)
        assert entry.type.value == "symlink" and entry.target and str(canary) in entry.target
    with pytest.raises(VolumePathNotFoundException):
        volume.read_file(f"/sub/root{canary}")
    with pytest.raises(VolumeException, match="400"):
        volume.read_file("/fifo")  # answered at once, not a blocked read
    # a change through a link changes the link, never the host's file
    volume.update_metadata("/abs-link", uid=0)
    with pytest.raises(VolumeException, match="400"):
        volume.update_metadata("/abs-link", mode=0o666)
    volume.remove("/abs-link")
    volume.remove("/sub")
    assert canary.read_text() == "host secret" and stat.S_IMODE(canary.stat().st_mode) == 0o600
    assert canary.stat().st_uid == os.getuid()
    assert sorted(x.name for x in volume.list("/")) == ["fifo", "from-api.txt", "inner-link", "real.txt", "rel-link"]


def test_a_full_volume_keeps_the_old_file():
    status, body = sandboxd_daemon.call_api("POST", "/volumes", {"name": f"small-{uuid.uuid4().hex[:8]}", "sizeMB": 8})
    assert status == 201, body
    created = json.loads(body)
    vol = Volume(created["volumeID"], created["name"], token=created["token"])
    try:
        vol.write_file("/keep.txt", "old")
        with pytest.raises(VolumeException, match="507"):
            vol.write_file("/keep.txt", io.BytesIO(os.urandom(20 << 20)))
        assert vol.read_file("/keep.txt") == "old"
        assert [x.name for x in vol.list("/")] == ["keep.txt"], "no half-written file is left"
    finally:
        Volume.destroy(created["volumeID"])
