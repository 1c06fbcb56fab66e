"""Templates from OCI images and the template build API with the official SDK's `Template`
builder (docs/templates.md): a real registry on loopback holds images this module makes
(oci_images.py), and a daemon started with `--registry-mirror docker.io=<that registry>`
resolves Docker short names such as `tiny:1` there."""

import os
import shutil
import urllib.error
import subprocess
import tempfile
import time
import uuid

import pytest
from e2b import Sandbox, Template, wait_for_file
from e2b.exceptions import BuildException

import oci_images
import sandboxd_daemon


@pytest.fixture(scope="module")
def image_layout():
    """The OCI layout of the test images (made once per module)."""
    work = tempfile.mkdtemp(prefix="sandboxd-layout-")
    try:
        yield oci_images.make_images(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def images_daemon(sandboxd, image_layout):
    """A daemon whose docker.io mirror is a loopback registry with the test images; E2B_*
    point at it during this module."""
    saved = {k: os.environ.get(k) for k in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN", "E2B_VOLUME_API_URL")}
    registry = oci_images.Registry()
    daemon = None
    try:
        oci_images.push_all(registry, image_layout)
        daemon = sandboxd_daemon.Daemon(["--registry-mirror", f"docker.io={registry.url}"])
        sandboxd_daemon._set_env(daemon.url, daemon.key)
        yield daemon
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if daemon is not None:
            daemon.stop()
        registry.stop()


def _name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _build(template, name, **kw):
    logs = []
    Template.build(template, name, on_build_logs=lambda l: logs.append(l.message), **kw)
    return logs


def test_a_sandbox_of_an_image_has_the_image_and_nothing_of_the_host(images_daemon):
    name = _name("tiny")
    logs = _build(Template().from_image("tiny:1"), name)
    assert any("Pulling docker.io/library/tiny:1" in l for l in logs), logs
    metrics = sandboxd_daemon.call_api("GET", "/metrics")[1].decode()
    layer_bytes = [l for l in metrics.splitlines() if l.startswith("sandboxd_image_layer_bytes ")]
    assert layer_bytes and int(layer_bytes[0].split()[1]) > 1_000_000, layer_bytes
    s = Sandbox.create(name)
    try:
        r = s.commands.run("echo $TINY; id -un; echo $HOME; ls /usr 2>&1; cat /etc/remove-me 2>&1; ls /data/old")
        out = r.stdout.splitlines()
        assert out[0] == "1", r.stdout  # the image's Env
        assert out[1] == "user" and out[2] == "/home/user", r.stdout
        assert "No such file" in out[3], "the host's /usr is not mounted: " + r.stdout
        assert "No such file" in out[4], "layer 2's whiteout hides /etc/remove-me: " + r.stdout
        assert out[5:] == ["b"], "layer 2 replaced /data/old/a by b: " + r.stdout
        assert s.files.read("/data/old/b") == "new\n"
        # the sandbox is writable and its files stay its own
        s.files.write("/data/new.txt", "mine")
        assert s.commands.run("cat /data/new.txt").stdout == "mine"
    finally:
        s.kill()
    s2 = Sandbox.create(name)
    try:
        assert not s2.files.exists("/data/new.txt")
    finally:
        s2.kill()


def test_a_sandbox_of_an_image_snapshots_and_pauses(images_daemon):
    name = _name("snap")
    _build(Template().from_image("tiny:1"), name)
    s = Sandbox.create(name)
    try:
        s.files.write("/data/mine.txt", "kept")
        s.commands.run("rm /data/old/b", user="root")
        snap = s.create_snapshot()
        s.pause()
        s2 = Sandbox.connect(s.sandbox_id)
        assert s2.files.read("/data/mine.txt") == "kept"
    finally:
        s.kill()
    c = Sandbox.create(snap.snapshot_id)
    try:
        assert c.files.read("/data/mine.txt") == "kept"
        assert not c.files.exists("/data/old/b"), "a deletion in the image's layer stays deleted"
        assert "No such file" in c.commands.run("ls /usr 2>&1; true").stdout
    finally:
        c.kill()


def test_every_step_kind_builds_with_the_sdk(images_daemon, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.sh").write_text("echo app")
    (tmp_path / "app" / "sub").mkdir()
    (tmp_path / "app" / "sub" / "deep.txt").write_text("deep")
    os.symlink("main.sh", tmp_path / "app" / "link.sh")
    (tmp_path / "tool").write_text("#!/bin/sh\necho tool-ran\n")
    (tmp_path / "notes.txt").write_text("notes")
    name = _name("steps")
    t = (
        Template(file_context_path=str(tmp_path))
        .from_image("tiny:1")
        .copy("app", "/home/user/app")
        .copy("tool", "/usr/local/bin/tool", mode=0o755, user="root")
        .copy("notes.txt", "/home/user/")
        .set_envs({"GREETING": "hi there", "MODE": "test"})
        .run_cmd("echo \"$GREETING\" > /home/user/greeting && id -un > /home/user/ran-as")
        .run_cmd("touch /root-only", user="root")
        .make_dir("/opt/data", user="root")
        .make_symlink("/home/user/notes.txt", "/home/user/notes-link")
        .rename("/home/user/greeting", "/home/user/greeting.txt")
        .remove("/home/user/ran-as-not-there", force=True)
        .set_workdir("/opt/work")
        .run_cmd("pwd > /tmp/workdir", user="root")
        .set_user("root")
        .run_cmd("id -u > /tmp/uid")
        .set_user("user")
        .set_start_cmd("sh -c 'sleep 0.5; echo started > /tmp/started; sleep 1000'", wait_for_file("/tmp/started"))
    )
    logs = _build(t, name)
    assert any("[5] RUN" in l for l in logs), logs
    s = Sandbox.create(name)
    try:
        read = s.files.read
        assert read("/home/user/app/main.sh") == "echo app"
        assert read("/home/user/app/sub/deep.txt") == "deep"
        assert s.commands.run("readlink /home/user/app/link.sh").stdout.strip() == "main.sh"
        assert s.commands.run("tool").stdout.strip() == "tool-ran"
        assert s.commands.run("stat -c '%a %U' /usr/local/bin/tool").stdout.strip() == "755 root"
        assert s.commands.run("stat -c '%U' /home/user/app/main.sh /home/user /home/user/notes.txt").stdout.split() == [
            "user",
            "user",
            "user",
        ]
        assert read("/home/user/notes-link") == "notes"
        assert read("/home/user/greeting.txt") == "hi there\n"
        assert read("/home/user/ran-as") == "user\n"
        assert s.files.exists("/root-only")
        assert s.commands.run("stat -c %U /opt/data").stdout.strip() == "root"
        assert read("/tmp/workdir").strip() == "/opt/work"
        assert read("/tmp/uid").strip() == "0"
        # the template's environment reaches sandbox commands; the start command ran
        assert s.commands.run("echo $MODE").stdout.strip() == "test"
        assert read("/tmp/started").strip() == "started"
    finally:
        s.kill()


def test_an_unchanged_rebuild_is_cached_and_a_changed_step_rebuilds_what_follows(images_daemon):
    name = _name("cache")

    def template(last):
        return (
            Template()
            .from_image("tiny:1")
            .run_cmd("echo one > /home/user/one")
            .run_cmd("echo two > /home/user/two")
            .run_cmd(f"echo {last} > /home/user/last")
        )

    first = _build(template("a"), name)
    assert not any(l.startswith("CACHED") for l in first), first
    t0 = time.monotonic()
    second = _build(template("a"), name)
    took = time.monotonic() - t0
    assert sum(l.startswith("CACHED") for l in second) == 3, second
    assert took < 5, f"an unchanged rebuild took {took:.1f} s"
    third = _build(template("b"), name)
    cached = [l for l in third if l.startswith("CACHED")]
    assert len(cached) == 2 and "last" not in " ".join(cached), third
    s = Sandbox.create(name)
    try:
        assert s.files.read("/home/user/last") == "b\n"
    finally:
        s.kill()
    forced = _build(template("b"), name, skip_cache=True)
    assert not any(l.startswith("CACHED") for l in forced), forced


def test_a_failed_builds_finished_steps_stay_cached_through_a_clean_up(images_daemon):
    """The steps a failed build finished are recorded with it, so the clean-up after another
    template's delete keeps them and the next attempt starts from the cache."""
    name, other = _name("retry"), _name("other")
    unique = uuid.uuid4().hex

    def template(last):
        return Template().from_image("tiny:1").run_cmd(f"echo {unique} > /home/user/one").run_cmd(last)

    with pytest.raises(BuildException):
        _build(template("exit 1"), name)
    _build(Template().from_image("tiny:1").run_cmd(f"echo {unique} > /home/user/other"), other)
    with open(images_daemon.log_path, "rb") as f:
        seen = f.read().count(b"unused template builds and image layers removed")
    status, _ = sandboxd_daemon.call_api("DELETE", f"/templates/{other}")
    assert status == 204
    deadline = time.monotonic() + 30
    while True:  # the clean-up runs in the background after the delete
        with open(images_daemon.log_path, "rb") as f:
            if f.read().count(b"unused template builds and image layers removed") > seen:
                break
        assert time.monotonic() < deadline, "no clean-up after the delete"
        time.sleep(0.1)
    retried = _build(template("echo fixed"), name)
    assert any(l.startswith("CACHED [1]") for l in retried), retried


def test_templates_build_on_templates(images_daemon):
    parent = _name("parent")
    _build(Template().from_image("tiny:1").set_envs({"LAYER": "parent"}).run_cmd("echo p > /home/user/p"), parent)
    child = _name("child")
    _build(Template().from_template(parent).run_cmd("echo c-$LAYER > /home/user/c"), child)
    on_base = _name("onbase")
    _build(Template().from_template("base").run_cmd("echo b > /home/user/b"), on_base)
    s, b = Sandbox.create(child), Sandbox.create(on_base)
    try:
        assert s.files.read("/home/user/p") == "p\n"
        assert s.files.read("/home/user/c") == "c-parent\n", "the parent's ENV reaches the child's steps"
        assert s.commands.run("echo $LAYER").stdout.strip() == "parent"
        assert b.files.read("/home/user/b") == "b\n"
        # on base, the host's /usr is there as in every base sandbox
        assert b.commands.run("test -x /usr/bin/python3 && echo yes").stdout.strip() == "yes"
    finally:
        s.kill()
        b.kill()


def test_a_failing_step_says_which_step_and_what_it_printed(images_daemon):
    t = Template().from_image("tiny:1").run_cmd("echo fine").run_cmd("echo boom-on-stderr >&2; exit 3")
    with pytest.raises(BuildException) as e:
        _build(t, _name("fails"))
    msg = str(e.value)
    assert "step 2" in msg and "exited with 3" in msg and "boom-on-stderr" in msg, msg


def test_an_image_that_does_not_exist_fails_the_build_clearly(images_daemon):
    with pytest.raises(BuildException) as e:
        _build(Template().from_image("no-such-image:9"), _name("missing"))
    assert "not found" in str(e.value), str(e.value)


def test_background_builds_tags_exists_and_delete(images_daemon):
    name = _name("bg")
    info = Template.build_in_background(Template().from_image("tiny:1").run_cmd("echo v1 > /home/user/v"), name)
    deadline = time.monotonic() + 30
    while True:
        st = Template.get_build_status(info)
        if st.status.value in ("ready", "error"):
            break
        assert time.monotonic() < deadline, "the build did not end"
        time.sleep(0.2)
    assert st.status.value == "ready", st
    assert Template.exists(name)
    import json

    # the paged log route: by time, both directions, by level; bad parameters are 400s
    logs_path = f"/templates/{info.template_id}/builds/{info.build_id}/logs"
    status, body = sandboxd_daemon.call_api("GET", logs_path)
    assert status == 200, body
    forward = json.loads(body)["logs"]
    assert forward and all({"timestamp", "level", "message"} <= set(e) for e in forward), forward
    assert any("echo v1" in e["message"] for e in forward), forward
    newest = json.loads(sandboxd_daemon.call_api("GET", logs_path + "?direction=backward&limit=2")[1])["logs"]
    assert [e["message"] for e in newest] == [e["message"] for e in forward[::-1][:2]], newest
    late = json.loads(sandboxd_daemon.call_api("GET", logs_path + "?cursor=99999999999999")[1])["logs"]
    assert late == [], late
    errors_only = json.loads(sandboxd_daemon.call_api("GET", logs_path + "?level=error")[1])["logs"]
    assert all(e["level"] == "error" for e in errors_only), errors_only
    for bad in ("limit=101", "limit=-1", "cursor=x", "direction=up", "level=loud", "source=elsewhere"):
        status, body = sandboxd_daemon.call_api("GET", f"{logs_path}?{bad}")
        assert status == 400, (bad, body)
    status, _ = sandboxd_daemon.call_api("GET", f"/templates/{info.template_id}/builds/no-such-build/logs")
    assert status == 404

    listed = [t for t in json.loads(sandboxd_daemon.call_api("GET", "/templates")[1]) if name in t["names"]]
    assert len(listed) == 1 and listed[0]["sizeBytes"] > 1_000_000 and listed[0]["spawnCount"] == 0, listed
    assert not Template.exists(_name("never-built"))
    Template.assign_tags(f"{name}:default", ["stable"])
    tags = {t.tag for t in Template.get_tags(name)}
    assert {"default", "stable"} <= tags, tags
    # a second build moves "default" only; "stable" still names the first
    _build(Template().from_image("tiny:1").run_cmd("echo v2 > /home/user/v"), name)
    a, b = Sandbox.create(f"{name}:stable"), Sandbox.create(name)
    try:
        assert a.files.read("/home/user/v") == "v1\n"
        assert b.files.read("/home/user/v") == "v2\n"
        listed = [t for t in json.loads(sandboxd_daemon.call_api("GET", "/templates")[1]) if name in t["names"]]
        assert listed[0]["spawnCount"] == 2 and listed[0]["lastSpawnedAt"], listed
        Template.remove_tags(name, ["stable"])
        with pytest.raises(Exception):
            Sandbox.create(f"{name}:stable")
        # deleting the template: new sandboxes cannot start from it, running ones go on
        status, _ = sandboxd_daemon.call_api("DELETE", f"/templates/{name}")
        assert status == 204
        assert not Template.exists(name)
        assert b.commands.run("cat /home/user/v").stdout == "v2\n"
    finally:
        a.kill()
        b.kill()


def test_musl_and_shell_less_images(images_daemon):
    name = _name("musl")
    _build(Template().from_image("musl:1").run_cmd("/usr/local/bin/hello-musl > /home/user/out"), name)
    s = Sandbox.create(name)
    try:
        assert s.files.read("/home/user/out") == "hello from musl\n"
    finally:
        s.kill()
    # no shell at all: the sandbox starts (the agent needs nothing of the image) and its files
    # work; commands cannot run since the SDK asks for bash, and a RUN step says it needs /bin/sh
    bare = _name("static")
    _build(Template().from_image("static:1"), bare)
    s = Sandbox.create(bare)
    try:
        assert "hello" in [e.name for e in s.files.list("/")]
        s.files.write("/tmp/x", "ok")
        assert s.files.read("/tmp/x") == "ok"
        with pytest.raises(Exception):
            s.commands.run("echo hi")
    finally:
        s.kill()
    with pytest.raises(BuildException) as e:
        _build(Template().from_image("static:1").run_cmd("echo hi"), _name("noshell"))
    assert "/bin/sh" in str(e.value), str(e.value)


def test_cpu_and_memory_of_the_template_apply(images_daemon):
    name = _name("res")
    _build(Template().from_image("tiny:1"), name, cpu_count=1, memory_mb=256)
    s = Sandbox.create(name)
    try:
        kb = int(s.commands.run("grep MemTotal /proc/meminfo").stdout.split()[1])
        assert 200 * 1024 <= kb <= 256 * 1024, kb
        assert s.commands.run("grep -c ^processor /proc/cpuinfo; cat /sys/fs/cgroup/cpu.max 2>/dev/null; true").exit_code == 0
    finally:
        s.kill()


def _tbf_rates():
    """The `tbf` rates (bytes/s) of the host's qdiscs: the sandboxes' rate limits."""
    import json

    out = subprocess.run(["tc", "-j", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
    return {q["options"]["rate"] for q in json.loads(out or "[]") if q.get("kind") == "tbf"}


def test_a_templates_own_bandwidth_holds_across_its_rebuilds(images_daemon):
    import json

    name = _name("bw")
    _build(Template().from_image("tiny:1").run_cmd("echo v1 > /home/user/v"), name)
    status, body = sandboxd_daemon.call_api("PATCH", f"/templates/{name}", {"bandwidth": {"egressMbps": 1.3}})
    assert status == 200, body
    assert json.loads(body)["bandwidth"] == {"egressMbps": 1.3}
    # a rebuild with the SDK (which knows nothing of the setting) keeps it
    _build(Template().from_image("tiny:1").run_cmd("echo v2 > /home/user/v"), name)
    s = Sandbox.create(name)
    try:
        assert s.files.read("/home/user/v") == "v2\n"
        status, body = sandboxd_daemon.call_api("GET", f"/sandboxes/{s.sandbox_id}")
        assert json.loads(body)["network"]["bandwidth"] == {"egressMbps": 1.3}, body
        assert 162_500 in _tbf_rates()  # 1.3 Mbit/s, on the sandbox's host link
        listed = [t for t in json.loads(sandboxd_daemon.call_api("GET", "/templates")[1]) if name in t["names"]]
        assert listed[0]["bandwidth"] == {"egressMbps": 1.3}, listed
    finally:
        s.kill()
    for path, body, want in [
        (f"/templates/{name}:default", {"public": True}, 400),
        (f"/templates/{name}", {"bandwidth": {"egressMbps": 1e9}}, 400),
        (f"/templates/{name}", {"network": {}}, 400),
    ]:
        status, answer = sandboxd_daemon.call_api("PATCH", path, body)
        assert status == want, (path, body, answer)
    # the settings go with the template
    assert sandboxd_daemon.call_api("DELETE", f"/templates/{name}")[0] == 204
    status, body = sandboxd_daemon.call_api("PATCH", f"/templates/{name}", {"public": True})
    assert status == 404, body
    _build(Template().from_image("tiny:1"), name)
    listed = [t for t in json.loads(sandboxd_daemon.call_api("GET", "/templates")[1]) if name in t["names"]]
    assert listed[0]["bandwidth"] is None, listed


def test_an_imported_archive_builds_without_a_registry(images_daemon, image_layout, tmp_path):
    import json
    import urllib.request

    archive = tmp_path / "musl.tar"
    subprocess.run(
        ["skopeo", "copy", f"oci:{image_layout}:musl", f"docker-archive:{archive}:example.org/team/musl-app:7"],
        check=True, capture_output=True,
    )
    req = urllib.request.Request(
        os.environ["E2B_API_URL"] + "/images/import", data=archive.read_bytes(), method="POST",
        headers={"X-API-Key": os.environ["E2B_API_KEY"], "Content-Type": "application/x-tar"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 201
        image = json.loads(r.read())
    assert image["reference"] == "example.org/team/musl-app:7", image
    name = _name("imported")
    logs = _build(Template().from_image(image["reference"]).run_cmd("hello-musl > /home/user/out"), name)
    assert any("imported from an archive" in l for l in logs), logs
    s = Sandbox.create(name)
    try:
        assert s.files.read("/home/user/out") == "hello from musl\n"
    finally:
        s.kill()
    # not an archive
    status, body = sandboxd_daemon.call_api("POST", "/images/import", {"not": "a tar"})
    assert status == 400, body


def _unique_archive(path):
    """A docker-save archive of a one-layer image whose layer no other test has."""
    import hashlib
    import io
    import json
    import tarfile

    def tar_bytes(files):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    layer = tar_bytes([("unique.txt", uuid.uuid4().hex.encode())])
    diff = hashlib.sha256(layer).hexdigest()
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff}"]}, "config": {}}).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [f"localhost/gc-{diff[:8]}:1"], "Layers": ["l/layer.tar"]}]).encode()
    path.write_bytes(tar_bytes([("manifest.json", manifest), ("config.json", config), ("l/layer.tar", layer)]))
    return diff


def _import(archive):
    import json
    import urllib.request

    req = urllib.request.Request(
        os.environ["E2B_API_URL"] + "/images/import", data=archive.read_bytes(), method="POST",
        headers={"X-API-Key": os.environ["E2B_API_KEY"]},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["reference"]


def test_deleting_a_template_frees_its_image_layers_but_not_a_running_sandboxs(images_daemon, tmp_path):
    layers = os.path.join(images_daemon.data_dir, "templates", "_image-layers")
    keeper = _name("keep")
    kept = Template().from_image("tiny:1").run_cmd("echo 1 > /home/user/a").run_cmd("echo 2 > /home/user/b")
    _build(kept, keeper)
    diff = _unique_archive(tmp_path / "a.tar")
    name = _name("gc")
    _build(Template().from_image(_import(tmp_path / "a.tar")), name)
    assert os.path.isdir(os.path.join(layers, diff))
    s = Sandbox.create(name)
    try:
        assert sandboxd_daemon.call_api("DELETE", f"/templates/{name}")[0] == 204
        time.sleep(1)
        # the sandbox still runs on its layers
        assert os.path.isdir(os.path.join(layers, diff))
        assert len(s.files.read("/unique.txt")) == 32
    finally:
        s.kill()
    diff2 = _unique_archive(tmp_path / "b.tar")
    name2 = _name("gc")
    _build(Template().from_image(_import(tmp_path / "b.tar")), name2)
    assert os.path.isdir(os.path.join(layers, diff2))
    assert sandboxd_daemon.call_api("DELETE", f"/templates/{name2}")[0] == 204
    deadline = time.monotonic() + 10
    while os.path.isdir(os.path.join(layers, diff2)) or os.path.isdir(os.path.join(layers, diff)):
        assert time.monotonic() < deadline, "unused image layers were not removed"
        time.sleep(0.1)
    # the other templates keep their cached steps
    again = _build(kept, keeper)
    assert sum(l.startswith("CACHED") for l in again) == 2, again


def _evil_layer(canary):
    """A layer tar that tries to write `canary` (an absolute host path) every way a layer can."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        def add(info, data=b""):
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))

        add(tarfile.TarInfo("ok.txt"), b"fine")
        i = tarfile.TarInfo("escape")
        i.type, i.linkname = tarfile.SYMTYPE, os.path.dirname(canary)
        add(i)
        add(tarfile.TarInfo("escape/" + os.path.basename(canary)), b"pwned")
        add(tarfile.TarInfo("../../../../../.." + canary), b"pwned")
        i = tarfile.TarInfo("hard")
        i.type, i.linkname = tarfile.LNKTYPE, canary
        add(i)
        i = tarfile.TarInfo("dev/sda")
        i.type, i.devmajor, i.devminor = tarfile.BLKTYPE, 8, 0
        add(i)
    return buf.getvalue()


def test_hostile_layers_and_uploads_write_nothing_outside(images_daemon, tmp_path):
    import hashlib
    import io
    import json
    import tarfile
    import urllib.request

    canary = str(tmp_path / "canary")
    layer = _evil_layer(canary)
    diff = hashlib.sha256(layer).hexdigest()
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff}"]}}).encode()
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["localhost/evil:1"], "Layers": ["l.tar"]}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in [("manifest.json", manifest), ("c.json", config), ("l.tar", layer)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    req = urllib.request.Request(
        os.environ["E2B_API_URL"] + "/images/import", data=buf.getvalue(), method="POST",
        headers={"X-API-Key": os.environ["E2B_API_KEY"]},
    )
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("a hostile image was imported")
    except urllib.error.HTTPError as e:
        msg = e.read()
        assert e.code == 400 and b"bad image" in msg, msg
    assert not os.path.exists(canary)
    # the same tar as a COPY step's upload
    call = sandboxd_daemon.call_api
    status, body = call("POST", "/v3/templates", {"name": _name("evil")})
    b = json.loads(body)
    files_hash = hashlib.sha256(b"evil upload").hexdigest()
    status, body = call("GET", f"/templates/{b['templateID']}/files/{files_hash}")
    url = json.loads(body)["url"]
    urllib.request.urlopen(urllib.request.Request(url, data=layer, method="PUT"), timeout=30)
    start = {"fromImage": "tiny:1", "steps": [{"type": "COPY", "args": ["ok.txt", "/x/"], "filesHash": files_hash}]}
    status, body = call("POST", f"/v2/templates/{b['templateID']}/builds/{b['buildID']}", start)
    assert status == 202, body
    deadline = time.monotonic() + 30
    while True:
        status, body = call("GET", f"/templates/{b['templateID']}/builds/{b['buildID']}/status")
        st = json.loads(body)
        if st["status"] in ("ready", "error"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert st["status"] == "error" and st["reason"]["step"] == "1", st
    assert not os.path.exists(canary)


def test_bad_build_requests_are_refused(images_daemon):
    call = sandboxd_daemon.call_api
    status, body = call("POST", "/v3/templates", {"name": "base"})
    assert status == 409, body
    status, body = call("POST", "/v3/templates", {"name": "Bad Name!"})
    assert status == 400, body
    status, body = call("POST", "/v3/templates", {"name": _name("bad"), "cpuCount": 10_000})
    assert status == 400, body
    status, body = call("POST", "/v3/templates", {"name": _name("bad")})
    assert status == 202, body
    import json

    b = json.loads(body)
    tid, bid = b["templateID"], b["buildID"]
    for steps, want in [
        ([{"type": "FROM", "args": ["x"]}], "unknown step type"),
        ([{"type": "COPY", "args": ["a", "/b"]}], "filesHash"),
        ([{"type": "ENV", "args": ["A"]}], "unexpected arguments"),
    ]:
        status, body = call("POST", f"/v2/templates/{tid}/builds/{bid}", {"fromImage": "tiny:1", "steps": steps})
        assert status == 400 and want.encode() in body, body
    status, body = call("POST", f"/v2/templates/{tid}/builds/{bid}", {"steps": []})
    assert status == 400, body
    status, body = call("GET", f"/templates/{tid}/files/not-a-hash")
    assert status == 400, body
    status, body = call("POST", f"/v2/templates/{tid}/builds/nope", {"fromImage": "tiny:1"})
    assert status == 404, body
    # an upload link's token is the only credential of its URL
    req = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "--data", "x",
         os.environ["E2B_API_URL"] + "/template-files/not-a-token"],
        capture_output=True, text=True,
    )
    assert req.stdout == "404", req.stdout


def test_an_interrupted_build_keeps_the_log_of_its_finished_steps():
    """A restart fails the running build; its log still has the steps it finished (written
    after each step), readable through status and the log route."""
    import json

    import httpx

    d = sandboxd_daemon.Daemon()
    try:
        h = {"X-API-Key": d.key}
        b = httpx.post(f"{d.url}/v3/templates", json={"name": _name("interrupted")}, headers=h).json()
        base = f"{d.url}/templates/{b['templateID']}/builds/{b['buildID']}"
        start = {"fromTemplate": "base", "steps": [
            {"type": "RUN", "args": ["echo first-step-output"]},
            {"type": "RUN", "args": ["sleep 300"]},
        ]}
        r = httpx.post(f"{d.url}/v2/templates/{b['templateID']}/builds/{b['buildID']}", json=start, headers=h)
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 60
        while not any("[2]" in e["message"] for e in httpx.get(base + "/logs", headers=h).json()["logs"]):
            assert time.monotonic() < deadline, "step 2 never started"
            time.sleep(0.2)
        d.restart()
        st = httpx.get(base + "/status", headers=h).json()
        assert st["status"] == "error" and "stopped during the build" in st["reason"]["message"], st
        logs = [e["message"] for e in httpx.get(base + "/logs", headers=h).json()["logs"]]
        assert any("first-step-output" in m for m in logs), logs
        assert any(m.startswith("[1] done in") for m in logs), logs
    finally:
        d.stop()

