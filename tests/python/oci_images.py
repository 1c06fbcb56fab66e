"""Test images and a real registry on loopback for the template tests (docs/templates.md).

The registry is Debian's `docker-registry`; images are made here with `umoci` from files of
this machine and pushed with `skopeo`:

- `library/tiny:1`: busybox (static) with its applets, and the host's bash with the glibc it
  needs (a glibc image the SDK's `commands.run`, which asks for `bash -l -c`, works in). Layer 2
  deletes `/etc/remove-me` (a whiteout) and replaces `/data/old/a` by `/data/old/b`. Env
  TINY=1, WorkingDir /data.
- `library/musl:1`: busybox and a program linked against musl (`/usr/local/bin/hello-musl`,
  with musl's loader), no bash.
- `library/static:1`: one static binary (`/hello`), no shell at all (a distroless image).

Nothing leaves the machine: the registry listens on 127.0.0.1.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

BUSYBOX_APPLETS = (
    "sh ls cat echo id env mkdir rm mv ln cp sleep true false stat chmod chown test [ tail head grep "
    "touch printf wc readlink whoami sed tr cut sort uname hostname pwd basename dirname find xargs "
    "netstat ps pgrep kill date tar gzip"
).split()


def _run(*cmd, cwd=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """`docker-registry serve` on a free loopback port, storage in a temp dir."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sandboxd-registry-")
        self.port = _free_port()
        cfg = os.path.join(self.dir, "config.yml")
        with open(cfg, "w") as f:
            f.write(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                f"    rootdirectory: {self.dir}/data\nhttp:\n  addr: 127.0.0.1:{self.port}\n"
            )
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def push(self, layout, tag, name):
        _run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://127.0.0.1:{self.port}/{name}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _copy_with_libs(binary, root):
    """Copies a host binary and the shared libraries `ldd` names into `root`, at the same paths."""
    out = _run("ldd", binary)
    paths = [binary]
    for line in out.splitlines():
        parts = line.split()
        for p in parts:
            if p.startswith("/"):
                paths.append(p)
    for p in paths:
        real = os.path.realpath(p)
        dst = os.path.join(root, p.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(real, dst)


def _busybox(root):
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    shutil.copy2("/bin/busybox", os.path.join(root, "bin/busybox"))
    for a in BUSYBOX_APPLETS:
        os.symlink("busybox", os.path.join(root, "bin", a))


def _new_image(layout, tag):
    if not os.path.exists(layout):
        _run("umoci", "init", "--layout", layout)
    _run("umoci", "new", "--image", f"{layout}:{tag}")


def _layer(layout, tag, work, fill):
    """Adds one layer: unpack, let `fill(rootfs)` change it, repack."""
    bundle = tempfile.mkdtemp(dir=work)
    shutil.rmtree(bundle)
    _run("umoci", "unpack", "--image", f"{layout}:{tag}", bundle)
    fill(os.path.join(bundle, "rootfs"))
    _run("umoci", "repack", "--image", f"{layout}:{tag}", bundle)
    shutil.rmtree(bundle, ignore_errors=True)


def make_images(work):
    """Builds the test images into an OCI layout under `work`; returns the layout path."""
    layout = os.path.join(work, "oci")

    def tiny1(root):
        _busybox(root)
        _copy_with_libs("/bin/bash", root)
        os.makedirs(os.path.join(root, "etc"), exist_ok=True)
        os.makedirs(os.path.join(root, "data/old"), exist_ok=True)
        with open(os.path.join(root, "etc/passwd"), "w") as f:
            f.write("root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        with open(os.path.join(root, "etc/group"), "w") as f:
            f.write("root:x:0:\nnogroup:x:65534:\n")
        with open(os.path.join(root, "etc/remove-me"), "w") as f:
            f.write("gone\n")
        with open(os.path.join(root, "data/old/a"), "w") as f:
            f.write("old\n")

    def tiny2(root):
        os.unlink(os.path.join(root, "etc/remove-me"))
        os.unlink(os.path.join(root, "data/old/a"))
        with open(os.path.join(root, "data/old/b"), "w") as f:
            f.write("new\n")

    _new_image(layout, "tiny")
    _layer(layout, "tiny", work, tiny1)
    _run("umoci", "config", "--image", f"{layout}:tiny", "--config.env", "TINY=1", "--config.workingdir", "/data")
    _layer(layout, "tiny", work, tiny2)

    src = os.path.join(work, "hello.c")
    with open(src, "w") as f:
        f.write('#include <stdio.h>\nint main(void){puts("hello from a static binary");return 0;}\n')
    static_bin = os.path.join(work, "hello-static")
    _run("gcc", "-static", "-O1", "-o", static_bin, src)

    def static1(root):
        shutil.copy2(static_bin, os.path.join(root, "hello"))

    _new_image(layout, "static")
    _layer(layout, "static", work, static1)

    musl_src = os.path.join(work, "hello-musl.c")
    with open(musl_src, "w") as f:
        f.write('#include <stdio.h>\nint main(void){puts("hello from musl");return 0;}\n')
    musl_bin = os.path.join(work, "hello-musl")
    _run("musl-gcc", "-O1", "-o", musl_bin, musl_src)
    interp = _run("readelf", "-l", musl_bin)
    loader = next(l.split(":", 1)[1].strip(" ]") for l in interp.splitlines() if "interpreter:" in l)

    def musl1(root):
        _busybox(root)
        os.makedirs(os.path.join(root, "usr/local/bin"), exist_ok=True)
        shutil.copy2(musl_bin, os.path.join(root, "usr/local/bin/hello-musl"))
        dst = os.path.join(root, loader.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.realpath(loader), dst)

    _new_image(layout, "musl")
    _layer(layout, "musl", work, musl1)
    return layout


#: Where scripts/setup.sh --tests keeps the Debian root file system the apt tests use
#: (made with mmdebstrap from the Debian mirror once; tests never fetch it themselves).
DEBIAN_ROOTFS = os.path.join(os.environ.get("SANDBOXD_TEST_CACHE", "/var/cache/sandboxd-tests"), "debian-bookworm-apt.tar")


def debian_archive(dst):
    """A `docker save` archive at `dst` of a one-layer Debian bookworm image (apt variant), the
    layer being setup.sh's mmdebstrap tar. Returns its reference."""
    import hashlib
    import io
    import tarfile

    if not os.path.exists(DEBIAN_ROOTFS):
        raise RuntimeError(f"{DEBIAN_ROOTFS} is missing: run scripts/setup.sh --tests")
    h = hashlib.sha256()
    with open(DEBIAN_ROOTFS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    diff = h.hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff}"]},
    }).encode()
    ref = "localhost/debian-apt:bookworm"
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [ref], "Layers": ["rootfs/layer.tar"]}]).encode()
    with tarfile.open(dst, "w") as t:
        for name, data in (("manifest.json", manifest), ("config.json", config)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        t.add(DEBIAN_ROOTFS, arcname="rootfs/layer.tar")
    return ref


def push_all(registry, layout):
    registry.push(layout, "tiny", "library/tiny:1")
    registry.push(layout, "static", "library/static:1")
    registry.push(layout, "musl", "library/musl:1")


if __name__ == "__main__":
    # `python3 oci_images.py serve`: for the JS tests (tests/js/templates.test.mjs): makes the
    # images, starts a registry with them, prints its URL, and serves until stdin closes.
    import sys

    if sys.argv[1:] != ["serve"]:
        sys.exit("usage: oci_images.py serve")
    work = tempfile.mkdtemp(prefix="sandboxd-images-js-")
    registry = Registry()
    try:
        push_all(registry, make_images(work))
        print(registry.url, flush=True)
        sys.stdin.read()
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
