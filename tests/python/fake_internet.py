"""A "fake internet" for the Python network tests: the same network namespace as the Rust
harness (crates/sandboxd/tests/fake_internet/mod.rs), so no test traffic leaves the machine.

- transit link: host `fkinet0` 198.18.0.1/30 <-> namespace `eth0` 198.18.0.2/30
- the host routes 198.51.100.0/24 and 203.0.113.0/24 into the namespace
- HTTP on port 80 of WEB and OTHER (docroot: hello.txt, a package index under /simple, and a
  git repository `demo.git` served over git's dumb HTTP protocol, and a flat apt repository
  under /debian with the package `sbxdemo-deb`, and the npm package tarball NPM_TARBALL)
- DNS (dnsmasq) on DNS: web.test and pypi.test -> WEB, other.test -> OTHER

One at a time per host: an exclusive flock on /run/sandboxd-fake-internet.lock while it exists.
"""

import base64
import fcntl
import hashlib
import os
import socket
import subprocess
import tempfile
import time
import zipfile

NETNS = "sbxtest-inet"
HOST_IF = "fkinet0"
WEB, DNS, OTHER = "198.51.100.10", "198.51.100.53", "203.0.113.10"
HOST_TRANSIT = "198.18.0.1"
HELLO = "hello from the fake internet"
PACKAGE = "sbxdemo"
GIT_FILE_TEXT = "cloned from the fake internet\n"
DEB_PACKAGE = "sbxdemo-deb"
DEB_FILE = "/usr/share/sbxdemo/hello.txt"
DEB_FILE_TEXT = "installed by apt from the fake internet\n"
NPM_PACKAGE = "sbxdemo-npm"
NPM_TARBALL = "sbxdemo-npm-1.0.0.tgz"
NPM_TEXT = "installed by npm from the fake internet"


def _sh(cmd: str, check: bool = True) -> None:
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"fake internet set-up: `{cmd}` failed: {r.stderr}")


def _teardown_namespace() -> None:
    _sh("ip route del 198.51.100.0/24 via 198.18.0.2", check=False)
    _sh("ip route del 203.0.113.0/24 via 198.18.0.2", check=False)
    _sh(f"ip link del {HOST_IF}", check=False)
    _sh(f"ip netns pids {NETNS} | xargs -r kill -9", check=False)
    _sh(f"ip netns del {NETNS}", check=False)


def _wheel(root: str) -> None:
    """A one-module pure-Python wheel `sbxdemo` and its PEP 503 index page."""
    name = f"{PACKAGE}-1.0-py3-none-any.whl"
    d = os.path.join(root, "simple", PACKAGE)
    os.makedirs(d)
    files = {
        f"{PACKAGE}.py": b"GREETING = 'installed from the fake internet'\n",
        f"{PACKAGE}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0\n".encode(),
        f"{PACKAGE}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: sandboxd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{PACKAGE}-1.0.dist-info/RECORD,,")
    files[f"{PACKAGE}-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(os.path.join(d, name), "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    with open(os.path.join(d, "index.html"), "w") as f:
        f.write(f'<html><body><a href="{name}">{name}</a></body></html>\n')
    with open(os.path.join(root, "simple", "index.html"), "w") as f:
        f.write(f'<html><body><a href="{PACKAGE}/">{PACKAGE}</a></body></html>\n')


def _git_repo(root: str) -> None:
    """A bare repository `demo.git` (branch `main`, one commit with README) for dumb HTTP."""
    work = tempfile.mkdtemp(prefix="sandboxd-fake-git-")
    git = ["git", "-c", "user.name=fake", "-c", "user.email=fake@web.test", "-c", "init.defaultBranch=main"]
    subprocess.run(git + ["init", "-q", work], check=True)
    with open(os.path.join(work, "README"), "w") as f:
        f.write(GIT_FILE_TEXT)
    subprocess.run(git + ["-C", work, "add", "README"], check=True)
    subprocess.run(git + ["-C", work, "commit", "-q", "-m", "first"], check=True)
    bare = os.path.join(root, "demo.git")
    subprocess.run(git + ["clone", "-q", "--bare", work, bare], check=True)
    subprocess.run(["git", "-C", bare, "update-server-info"], check=True)
    subprocess.run(["rm", "-rf", work], check=True)


def _apt_repo(root: str) -> None:
    """A flat apt repository `debian/` (use with `deb [trusted=yes] http://web.test/debian ./`)
    holding one package that installs DEB_FILE."""
    repo = os.path.join(root, "debian")
    pkg = tempfile.mkdtemp(prefix="sandboxd-fake-deb-")
    os.makedirs(os.path.join(pkg, "DEBIAN"))
    with open(os.path.join(pkg, "DEBIAN", "control"), "w") as f:
        f.write(f"Package: {DEB_PACKAGE}\nVersion: 1.0\nArchitecture: all\nMaintainer: sandboxd tests <t@web.test>\n"
                "Description: a package of the sandboxd tests\n")
    target = os.path.join(pkg, DEB_FILE.lstrip("/"))
    os.makedirs(os.path.dirname(target))
    with open(target, "w") as f:
        f.write(DEB_FILE_TEXT)
    os.makedirs(repo)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", pkg, os.path.join(repo, f"{DEB_PACKAGE}_1.0_all.deb")],
                   check=True, capture_output=True)
    subprocess.run(["rm", "-rf", pkg], check=True)
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, check=True,
                              capture_output=True).stdout
    with open(os.path.join(repo, "Packages"), "wb") as f:
        f.write(packages)
    digest = hashlib.sha256(packages).hexdigest()
    with open(os.path.join(repo, "Release"), "w") as f:
        f.write(f"Origin: sandboxd-tests\nLabel: sandboxd-tests\nArchitectures: all amd64\n"
                f"SHA256:\n {digest} {len(packages)} Packages\n")


def _npm_tarball(root: str) -> None:
    """An npm package tarball (`npm install http://web.test/<NPM_TARBALL>` needs no registry)."""
    import io
    import json
    import tarfile

    files = {
        "package/package.json": json.dumps({"name": NPM_PACKAGE, "version": "1.0.0", "main": "index.js"}).encode(),
        "package/index.js": f"module.exports = {json.dumps(NPM_TEXT)};\n".encode(),
    }
    with tarfile.open(os.path.join(root, NPM_TARBALL), "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))


class FakeInternet:
    def __init__(self):
        self._lock = open("/run/sandboxd-fake-internet.lock", "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        _teardown_namespace()
        _sh(
            f"ip netns add {NETNS} && ip link add {HOST_IF} type veth peer name eth0 netns {NETNS} && "
            f"ip addr add 198.18.0.1/30 dev {HOST_IF} && ip link set {HOST_IF} up && "
            f"ip -n {NETNS} link set lo up && ip -n {NETNS} addr add 198.18.0.2/30 dev eth0 && "
            f"ip -n {NETNS} link set eth0 up && "
            f"ip -n {NETNS} addr add {WEB}/32 dev lo && ip -n {NETNS} addr add {DNS}/32 dev lo && "
            f"ip -n {NETNS} addr add {OTHER}/32 dev lo && ip -n {NETNS} route add default via 198.18.0.1 && "
            "ip route replace 198.51.100.0/24 via 198.18.0.2 && ip route replace 203.0.113.0/24 via 198.18.0.2"
        )
        self._docroot = tempfile.TemporaryDirectory(prefix="sandboxd-fake-internet-")
        root = self._docroot.name
        with open(os.path.join(root, "hello.txt"), "w") as f:
            f.write(HELLO)
        _wheel(root)
        _git_repo(root)
        _apt_repo(root)
        _npm_tarball(root)
        run = ["ip", "netns", "exec", NETNS]
        quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._procs = [
            subprocess.Popen(run + ["python3", "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", root], **quiet),
            subprocess.Popen(
                run + ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
                       f"--listen-address={DNS}", f"--address=/web.test/{WEB}", f"--address=/pypi.test/{WEB}",
                       f"--address=/other.test/{OTHER}", "--pid-file=", "--user=root"],
                **quiet,
            ),
        ]
        deadline = time.monotonic() + 20
        while True:
            try:
                for addr, port in ((WEB, 80), (OTHER, 80)):
                    socket.create_connection((addr, port), timeout=0.3).close()
                r = subprocess.run(run + ["bash", "-c", f"exec 3<>/dev/tcp/{DNS}/53"], capture_output=True)
                if r.returncode == 0:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("fake internet servers did not start")
            time.sleep(0.1)

    def close(self) -> None:
        for p in self._procs:
            p.kill()
            p.wait()
        _teardown_namespace()
        self._docroot.cleanup()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
