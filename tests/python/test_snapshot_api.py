"""Persistent snapshots through the E2B SDK (api/openapi.yaml.9-§2.11)."""

import uuid

from e2b import Sandbox


def _ids(paginator):
    out = []
    while paginator.has_next:
        out.extend(s.snapshot_id for s in paginator.next_items())
    return out


def test_snapshot_unnamed_create_from_and_delete(sandbox: Sandbox):
    sandbox.files.write("/home/user/marker.txt", "from source")
    snap = sandbox.create_snapshot()
    assert snap.snapshot_id.endswith(":default")
    assert snap.names == []
    assert sandbox.is_running()
    a = Sandbox.create(snap.snapshot_id)
    b = Sandbox.create(snap.snapshot_id)
    try:
        assert a.files.read("/home/user/marker.txt") == "from source"
        assert b.files.read("/home/user/marker.txt") == "from source"
        a.files.write("/home/user/marker.txt", "changed in a")
        assert b.files.read("/home/user/marker.txt") == "from source"
        assert sandbox.files.read("/home/user/marker.txt") == "from source"
        # a file deleted in the source after the snapshot is still in the snapshot
        sandbox.files.remove("/home/user/marker.txt")
        assert b.files.read("/home/user/marker.txt") == "from source"
    finally:
        a.kill()
        b.kill()
    assert snap.snapshot_id in _ids(Sandbox.list_snapshots())
    assert snap.snapshot_id in _ids(sandbox.list_snapshots())
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False


def test_snapshot_named_list_and_class_methods(sandbox: Sandbox):
    name = f"snap-{uuid.uuid4().hex[:8]}"
    sandbox.commands.run("echo hi > /tmp/t.txt && rm -f /etc/motd")
    snap = Sandbox.create_snapshot(sandbox.sandbox_id, name=name)
    assert any(name in n for n in snap.names)
    try:
        assert snap.snapshot_id in _ids(Sandbox.list_snapshots(sandbox_id=sandbox.sandbox_id))
        assert _ids(Sandbox.list_snapshots(name=name)) == [snap.snapshot_id]
        assert _ids(Sandbox.list_snapshots(name=f"nope-{uuid.uuid4().hex[:8]}")) == []
        # a new build of the same name replaces its content
        sandbox.commands.run("echo v2 > /tmp/t.txt")
        snap2 = sandbox.create_snapshot(name=name)
        assert snap2.snapshot_id == snap.snapshot_id
        s = Sandbox.create(snap2.snapshot_id)
        try:
            assert s.files.read("/tmp/t.txt").strip() == "v2"
            r = s.commands.run("test -e /etc/motd && echo yes || echo no")
            assert r.stdout.strip() == "no", "a whiteout in the snapshot hides the template's file"
        finally:
            s.kill()
    finally:
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
