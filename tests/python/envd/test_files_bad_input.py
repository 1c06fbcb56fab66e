"""Bad input to the filesystem RPCs and `/files`, sent raw over the SDK's own envd HTTP client
(same base URL and routing/token headers): clear errors, and the sandbox stays healthy."""

import gzip
import json
import urllib.error
import urllib.request
import uuid

import pytest
from e2b import Sandbox
from e2b.exceptions import InvalidArgumentException, SandboxException

HOME = "/home/user"


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _rpc(sandbox: Sandbox, method: str, body, headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    h = {"Content-Type": "application/json", **(headers or {})}
    return sandbox._envd_api.post(f"/filesystem.Filesystem/{method}", content=data, headers=h)


def _healthy(sandbox: Sandbox):
    assert sandbox.files.write(_name("alive"), "ok").path.startswith(HOME)


def test_rpc_bad_messages(sandbox: Sandbox):
    cases = [
        ("Stat", {"path": 5}, 400, "invalid_argument"),
        ("Stat", "{not json", 400, "invalid_argument"),
        ("ListDir", {"path": HOME, "depth": -1}, 400, "invalid_argument"),
        ("ListDir", {"path": HOME, "depth": "deep"}, 400, "invalid_argument"),
        ("Move", {"source": 1, "destination": []}, 400, "invalid_argument"),
        ("Stat", {"path": "a\u0000b"}, 400, "invalid_argument"),
        ("Stat", {"path": "~root/x"}, 400, "invalid_argument"),
        ("Stat", {"path": f"/nonexistent/{_name('x')}"}, 404, "not_found"),
        ("Stat", {}, 200, None),  # empty path = the home directory
        ("GetWatcherEvents", {"watcherId": "wdoesnotexist"}, 404, "not_found"),
        ("GetWatcherEvents", {}, 404, "not_found"),
        ("RemoveWatcher", {"watcherId": "wdoesnotexist"}, 404, "not_found"),
        ("CreateWatcher", {"path": f"/nonexistent/{_name('x')}"}, 404, "not_found"),
        ("CreateWatcher", {"path": "/etc/hostname"}, 400, "invalid_argument"),
        ("NoSuchMethod", {}, 501, "unimplemented"),
    ]
    for method, body, status, code in cases:
        r = _rpc(sandbox, method, body)
        assert r.status_code == status, (method, body, r.text)
        if code:
            assert r.json()["code"] == code, (method, body, r.text)
            assert r.json()["message"]
    r = _rpc(sandbox, "Stat", {})
    assert r.json()["entry"]["path"] == HOME
    r = _rpc(sandbox, "Stat", {"path": "x"}, headers={"Content-Type": "text/plain"})
    assert r.status_code >= 400
    r = _rpc(sandbox, "Stat", {"path": "x"}, headers={"Authorization": "Basic bm9ib2R5X2hlcmU6"})
    assert r.status_code == 401
    assert r.json()["message"] == "invalid username: 'nobody_here'"
    _healthy(sandbox)


def test_files_bad_uploads(sandbox: Sandbox):
    api = sandbox._envd_api
    name = _name("bad")

    r = api.post("/files", content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400
    assert r.json() == {"code": 400, "message": "path query parameter is required for raw body upload",
                        "error_code": "invalid_request"}
    assert r.headers["content-type"] == "application/json; charset=utf-8"

    r = api.post("/files", params={"path": name}, content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["message"].startswith("unsupported content type")

    # A large body whose gzip header is wrong: 400 and no file.
    body = b"\x1f\x8b\x99" + b"\x00" * (8 << 20)
    r = api.post(
        "/files",
        params={"path": name + ".gz"},
        content=body,
        headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 400, r.text
    assert not sandbox.files.exists(name + ".gz")

    # A gzip stream cut in the middle.
    good = gzip.compress(b"a" * 100000)
    r = api.post(
        "/files",
        params={"path": name + ".cut"},
        content=good[: len(good) // 2],
        headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 400, r.text

    r = api.post(
        "/files",
        params={"path": name},
        content=b"x",
        headers={"Content-Type": "application/octet-stream", "Content-Encoding": "compress"},
    )
    assert r.status_code == 400

    # A directory as the target.
    sandbox.files.make_dir(name + ".dir")
    r = api.post("/files", params={"path": name + ".dir"}, content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400
    assert r.json()["message"] == f"path is a directory: {HOME}/{name}.dir"

    # The same path twice in one multipart request.
    files = [("file", (f"{name}.dup", b"1")), ("file", (f"{name}.dup", b"2"))]
    r = api.post("/files", files=files)
    assert r.status_code == 400

    # Full filenames (with directories) are used as sent; non-file parts are ignored.
    r = api.post("/files", files=[("file", (f"{name}/sub/f.txt", b"full")), ("other", ("ignored.txt", b"x"))])
    assert r.status_code == 200, r.text
    assert r.json() == [{"path": f"{HOME}/{name}/sub/f.txt", "name": "f.txt", "type": "file"}]

    r = api.post("/files", content=b"--nope\r\n", headers={"Content-Type": "multipart/form-data; boundary=abc"})
    assert r.status_code == 400

    r = api.post("/files", params={"path": name, "username": "nobody_here"}, content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 401
    assert r.json()["message"].startswith("error looking up user 'nobody_here'")

    r = api.post("/files", params={"path": "~root/x"}, content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400
    r = api.post("/files", params={"path": "a\x00b"}, content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400

    r = api.post(
        "/files",
        params={"path": name + ".m"},
        content=b"x",
        headers={"Content-Type": "application/octet-stream", "X-Metadata-" + "k" * 300: "v"},
    )
    assert r.status_code == 400 and r.json()["message"].startswith("invalid metadata")
    _healthy(sandbox)


def test_files_bad_downloads(sandbox: Sandbox):
    api = sandbox._envd_api
    missing = _name("missing")
    r = api.get("/files", params={"path": missing})
    assert r.status_code == 404
    assert r.json() == {"code": 404, "message": f"path '{HOME}/{missing}' does not exist",
                        "error_code": "not_found"}
    r = api.get("/files", params={"path": HOME})
    assert r.status_code == 400
    assert r.json()["message"] == f"path '{HOME}' is a directory"
    r = api.get("/files", params={"path": "/dev/zero"})
    assert r.status_code == 400
    name = _name("dl")
    sandbox.files.write(name, "0123456789")
    r = api.get("/files", params={"path": name}, headers={"Range": "bytes=2-4"})
    assert r.status_code == 206 and r.content == b"234"
    r = api.get("/files", params={"path": name}, headers={"Accept-Encoding": "br, identity;q=0"})
    assert r.status_code == 406
    r = api.get("/files", params={"path": name, "username": "nobody_here"})
    assert r.status_code == 401
    _healthy(sandbox)


def test_sdk_errors_for_bad_paths(sandbox: Sandbox):
    with pytest.raises(InvalidArgumentException):
        sandbox.files.get_info("~root/x")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.write("~root/x", "x")
    name = _name("f")
    sandbox.files.write(name, "x")
    with pytest.raises(SandboxException):
        sandbox.files.write(f"{name}/below", "x")


def test_signed_urls(sandbox: Sandbox):
    if sandbox._envd_access_token is None:
        pytest.skip("the sandbox is not secure (no envd access token)")
    name = _name("signed")
    sandbox.files.write(name, "signed content")

    def fetch(url, data=None):
        req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
        if data is not None:
            req.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()

    assert fetch(sandbox.download_url(name, "user")) == (200, b"signed content")
    assert fetch(sandbox.download_url(name, "user", use_signature_expiration=120)) == (200, b"signed content")
    with pytest.raises(urllib.error.HTTPError) as e:
        fetch(sandbox.download_url(name, "user", use_signature_expiration=-120))
    assert e.value.code == 401
    assert json.loads(e.value.read()) == {"code": 401, "message": "signature is already expired",
                                             "error_code": "security_denied"}
    status, body = fetch(sandbox.upload_url(name + ".up", "user"), data=b"uploaded")
    assert status == 200
    assert json.loads(body)[0]["path"] == f"{HOME}/{name}.up"
    assert sandbox.files.read(name + ".up") == "uploaded"
