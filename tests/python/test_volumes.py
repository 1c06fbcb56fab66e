"""Volumes (docs/volumes.md) through the official SDK's Volume API: create, list, get, mount in
sandboxes (shared, by object and by name), in-use refusal, unknown volumes, destroy."""

import uuid

import pytest
from e2b import Sandbox, Volume
from e2b.exceptions import NotFoundException, SandboxException, VolumeException


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
