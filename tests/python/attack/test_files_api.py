"""The envd API and `/files` as an attacker holding one sandbox's token (or none): traversal,
symlinks out, NUL bytes, encodings, tampered and expired signatures, missing and foreign tokens.

Host-side checks: the host secret must not come back in any response, the host canary dir must
not gain files, the neighbour's files must stay unread and unwritten. These attempts are
requests, not scripts, so the host self-check mode does not apply to them; each carries a
positive control instead (the same request shape reads a sandbox file, the right token or
signature is accepted), and the secret check is the canary check verified in that mode.
"""

import time
import uuid

import httpx
import pytest
from attacklib import Escape
from e2b.sandbox.signature import get_signature


def _client(daemon, sbx, token: str | None = "own") -> httpx.Client:
    h = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
    if token == "own":
        token = sbx._envd_access_token
    if token is not None:
        h["X-Access-Token"] = token
    return httpx.Client(base_url=daemon.url, headers=h, timeout=30)


def _sign(path: str, op: str, user: str, token: str, exp: int | None) -> str:
    """The SDK's own recipe, with an absolute expiry (a past one for the expired case)."""
    sig = get_signature(path, op, user, token, None if exp is None else exp - int(time.time()))
    return sig["signature"]


READ_PATHS = [
    "{f}", "/../../../../..{f}", "..{f}", "../../../../../../..{f}", "/proc/1/root{f}", "/proc/self/root{f}",
    "/proc/self/cwd/../../../../..{f}", "/proc/1/cwd{f}", "//{f}", "/./.{f}", "~/../../../..{f}",
]


def _no_secret(canaries, responses, what):
    out = "\n".join(f"{r.request.url} {r.status_code} {r.text[:300]}" for r in responses)
    canaries.check(out, what)
    if bad := [r for r in responses if r.status_code >= 500]:
        # Not an escape, but an attempt the API did not answer cleanly (see issue 14 item 12).
        print("5xx answers:", [(str(r.request.url), r.status_code) for r in bad])
    return out


def test_files_read_traversal(daemon, attacker, canaries):
    """GET /files and Filesystem.Stat/ListDir with `..`, /proc links, doubled slashes, `~`."""
    f = str(canaries.secret_file)
    with _client(daemon, attacker) as c:
        rs = []
        for p in READ_PATHS:
            path = p.format(f=f)
            rs.append(c.get("/files", params={"path": path, "username": "root"}))
            rs.append(c.post("/filesystem.Filesystem/ListDir", json={"path": path.rsplit("/", 1)[0], "depth": 2}))
        # percent-encoded and raw traversal in the query string itself
        rs.append(c.get("/files?path=%2F..%2F..%2F..%2F.." + f.replace("/", "%2F") + "&username=root"))
        rs.append(c.get("/files?path=/%2e%2e/%2e%2e/%2e%2e" + f + "&username=root"))
        _no_secret(canaries, rs, "files read traversal")
        # Positive control: the same shapes reach a file that does exist inside the sandbox.
        attacker.commands.run(f"mkdir -p {canaries.dir} && echo inside > {f}", user="root")
        for p in READ_PATHS[:3]:
            r = c.get("/files", params={"path": p.format(f=f), "username": "root"})
            assert r.text.strip() == "inside", (p, r.status_code, r.text)
        attacker.commands.run(f"rm -rf {canaries.dir}", user="root")


def test_files_write_traversal(daemon, attacker, canaries):
    """POST /files (raw and multipart filenames), MakeDir, Move and Remove aimed at the host
    canary dir through `..` and /proc links: the host dir must stay as it was."""
    d = str(canaries.dir)
    with _client(daemon, attacker) as c:
        rs = []
        for tmpl in ["/../../../..{d}/pwned", "/proc/1/root{d}/pwned", "/proc/self/cwd/../../..{d}/pwned", "..{d}/pwned"]:
            p = tmpl.format(d=d)
            rs.append(c.post("/files", params={"path": p, "username": "root"}, content=b"pwned",
                             headers={"Content-Type": "application/octet-stream"}))
            rs.append(c.post("/files", params={"username": "root"}, files=[("file", (p, b"pwned"))]))
            rs.append(c.post("/filesystem.Filesystem/MakeDir", json={"path": p + "dir"}))
            rs.append(c.post("/filesystem.Filesystem/Remove", json={"path": p.replace("pwned", "secret.txt")}))
        attacker.files.write("/tmp/movable", "pwned")
        rs.append(c.post("/filesystem.Filesystem/Move", json={"source": "/tmp/movable", "destination": f"/../../..{d}/pwned"}))
        _no_secret(canaries, rs, "files write traversal")


def test_files_symlinks_out(daemon, attacker, canaries):
    """Symlinks made inside that point at the host secret and the host canary dir, then read,
    write, list, watch and move through them with the files API."""
    f, d = str(canaries.secret_file), str(canaries.dir)
    attacker.commands.run(f"ln -sfn {f} /tmp/lnk-file; ln -sfn {d} /tmp/lnk-dir; ln -sfn /proc/1/root/{d} /tmp/lnk-proc",
                          user="root")
    with _client(daemon, attacker) as c:
        rs = [
            c.get("/files", params={"path": "/tmp/lnk-file", "username": "root"}),
            c.get("/files", params={"path": "/tmp/lnk-dir/secret.txt", "username": "root"}),
            c.get("/files", params={"path": "/tmp/lnk-proc/secret.txt", "username": "root"}),
            c.post("/filesystem.Filesystem/ListDir", json={"path": "/tmp/lnk-dir", "depth": 3}),
            c.post("/filesystem.Filesystem/Stat", json={"path": "/tmp/lnk-dir/secret.txt"}),
            c.post("/files", params={"path": "/tmp/lnk-dir/pwned", "username": "root"}, content=b"x",
                   headers={"Content-Type": "application/octet-stream"}),
            c.post("/files", params={"path": "/tmp/lnk-file", "username": "root"}, content=b"overwritten",
                   headers={"Content-Type": "application/octet-stream"}),
            c.post("/filesystem.Filesystem/Move", json={"source": "/tmp/lnk-dir/secret.txt", "destination": "/tmp/stolen"}),
            c.post("/filesystem.Filesystem/CreateWatcher", json={"path": "/tmp/lnk-dir", "recursive": True}),
        ]
        rs.append(c.get("/files", params={"path": "/tmp/stolen", "username": "root"}))
        _no_secret(canaries, rs, "files symlinks out")


def test_files_nul_and_control_bytes(daemon, attacker, canaries):
    """NUL, newlines and other control bytes in paths, usernames and multipart filenames,
    aimed at the host secret's path (a NUL could cut a path checked elsewhere)."""
    f = str(canaries.secret_file)
    with _client(daemon, attacker) as c:
        rs = [
            c.get("/files", params={"path": f"/tmp\x00{f}", "username": "root"}),
            c.get("/files", params={"path": f"{f}\x00.txt", "username": "root"}),
            c.get("/files", params={"path": "/tmp/x", "username": "root\x00"}),
            c.get("/files", params={"path": f"/tmp/\r\n{f}", "username": "root"}),
            c.post("/filesystem.Filesystem/Stat", json={"path": f"/tmp\u0000/../..{f}"}),
            c.post("/files", params={"username": "root"}, files=[("file", (f"/tmp/a\x00/../..{canaries.dir}/pwned", b"x"))]),
        ]
        _no_secret(canaries, rs, "files NUL")


def test_files_long_and_deep_paths(daemon, attacker, canaries):
    """Paths of 8 KiB and 64 KiB, 4,000 components of `..`, names of 256+ bytes: no secret and
    nothing written on the host (the status codes are checked by the issue-14 tests)."""
    f = str(canaries.secret_file)
    with _client(daemon, attacker) as c:
        rs = [
            c.get("/files", params={"path": "/" + "a" * 8192, "username": "root"}),
            c.get("/files", params={"path": "/.." * 4000 + f, "username": "root"}),
            c.post("/filesystem.Filesystem/Stat", json={"path": "/" + "x/" * 30000}),
            c.post("/files", params={"path": "/tmp/" + "n" * 300, "username": "root"}, content=b"x",
                   headers={"Content-Type": "application/octet-stream"}),
        ]
        _no_secret(canaries, rs, "files long paths")
        assert c.get("/health").status_code == 204


def _signed_url(daemon, sbx, path, op, token, exp=None, sig=None, user="user"):
    q = {"path": path, "username": user, "signature": sig or _sign(path, op, user, token, exp)}
    if exp is not None:
        q["signature_expiration"] = str(exp)
    return httpx.URL(daemon.url + "/files", params=q)


def test_signatures_tampered_expired_foreign(daemon, attacker, neighbour, canaries):
    """Signed /files URLs that must all be refused: a flipped signature character, an expired
    one, one for another path, a made-up token (routed by signature alone); and, sent to the
    neighbour with its routing header, signatures made with the attacker's token, a read
    signature used to write, an expired write. The right signature is accepted (the check can
    pass), and a signature made with the attacker's own token only ever reaches the attacker."""
    tok, ntok = attacker._envd_access_token, neighbour._envd_access_token
    assert tok and ntok, "sandboxes must be secure"
    secret_path = "/home/user/neighbour-secret.txt"
    attacker.files.write("/home/user/mine.txt", "mine")
    exp_past = int(time.time()) - 60
    good = _signed_url(daemon, attacker, "/home/user/mine.txt", "read", tok)
    sig = dict(good.params)["signature"]
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    by_signature = [
        _signed_url(daemon, attacker, "/home/user/mine.txt", "read", tok, sig=flipped),
        _signed_url(daemon, attacker, "/home/user/mine.txt", "read", tok, exp=exp_past),
        _signed_url(daemon, attacker, secret_path, "read", tok, sig=sig),
        _signed_url(daemon, attacker, "/home/user/mine.txt", "read", "not-the-token"),
        httpx.URL(daemon.url + "/files", params={"path": secret_path, "username": "user"}),
        httpx.URL(daemon.url + "/files", params={"path": secret_path, "signature": "", "username": "user"}),
    ]
    to_neighbour = [
        ("GET", _signed_url(daemon, neighbour, secret_path, "read", tok)),
        ("GET", _signed_url(daemon, neighbour, secret_path, "read", tok, user="root")),
        ("GET", _signed_url(daemon, neighbour, secret_path, "read", ntok, sig=flipped)),
        ("POST", _signed_url(daemon, neighbour, "/home/user/pwned.txt", "read", ntok)),
        ("POST", _signed_url(daemon, neighbour, "/home/user/pwned.txt", "write", tok)),
        ("POST", _signed_url(daemon, neighbour, "/home/user/pwned.txt", "write", ntok, exp=exp_past)),
    ]
    nh = {"E2b-Sandbox-Id": neighbour.sandbox_id, "E2b-Sandbox-Port": "49983", "Content-Type": "application/octet-stream"}
    with httpx.Client(timeout=30) as c:
        assert c.get(good).text == "mine", "the right signature must work"
        rs = [c.get(u) for u in by_signature]
        rs += [c.request(m, u, headers=nh, content=b"pwned" if m == "POST" else None) for m, u in to_neighbour]
        # The attacker's valid write signature, without routing headers, lands in the attacker.
        own = _signed_url(daemon, neighbour, "/home/user/own.txt", "write", tok)
        assert c.post(own, content=b"x", headers={"Content-Type": "application/octet-stream"}).status_code == 200
    out = "\n".join(f"{r.status_code} {r.text[:200]}" for r in rs)
    canaries.check(out, "signatures")
    if neighbour.secret in out or any(r.status_code < 400 for r in rs):
        raise Escape(f"a bad signature was accepted:\n{out}")
    if neighbour.files.exists("/home/user/pwned.txt") or neighbour.files.exists("/home/user/own.txt"):
        raise Escape("a bad signature wrote into the neighbour")
    assert attacker.files.exists("/home/user/own.txt")


def test_tokens_missing_and_foreign(daemon, attacker, neighbour, canaries):
    """envd calls to the neighbour with no token, a wrong one, and the attacker's own token;
    control-plane calls with no API key, a sandbox token as the key, and a key prefix."""
    with _client(daemon, neighbour) as own_c:
        assert own_c.get("/files", params={"path": "/home/user/neighbour-secret.txt"}).text == neighbour.secret
    with _client(daemon, neighbour, token=None) as none_c, \
            _client(daemon, neighbour, token=attacker._envd_access_token) as foreign_c, \
            _client(daemon, neighbour, token="x" * 64) as wrong_c:
        rs = []
        for c in (none_c, foreign_c, wrong_c):
            rs.append(c.get("/files", params={"path": "/home/user/neighbour-secret.txt"}))
            rs.append(c.post("/files", params={"path": "/home/user/pwned.txt"}, content=b"x",
                             headers={"Content-Type": "application/octet-stream"}))
            rs.append(c.post("/filesystem.Filesystem/ListDir", json={"path": "/home/user"}))
            rs.append(c.post("/process.Process/List", json={}))
            rs.append(c.post("/process.Process/Start", json={"process": {"cmd": "/bin/touch", "args": ["/tmp/pwned"]}},
                             headers={"Content-Type": "application/json", "Connect-Protocol-Version": "1"}))
    with httpx.Client(base_url=daemon.url, timeout=30) as c:
        for h in [{}, {"X-API-Key": attacker._envd_access_token}, {"X-API-Key": daemon.key[:-1]},
                  {"X-API-Key": daemon.key + "0"}, {"Authorization": f"Bearer {daemon.key}x"}]:
            rs.append(c.get("/sandboxes", headers=h))
            rs.append(c.delete(f"/sandboxes/{neighbour.sandbox_id}", headers=h))
    out = "\n".join(f"{r.request.method} {r.request.url.path} {r.status_code} {r.text[:200]}" for r in rs)
    canaries.check(out, "tokens")
    if neighbour.secret in out or any(r.status_code < 400 for r in rs):
        raise Escape(f"a call without the right credential was accepted:\n{out}")
    if neighbour.files.exists("/home/user/pwned.txt") or neighbour.files.exists("/tmp/pwned"):
        raise Escape("a foreign token wrote into the neighbour")
    assert neighbour.is_running()


def test_files_api_into_agent_fds(daemon, attacker, canaries):
    """Read and write the agent's own descriptors through the files API (/proc/1/fd/*: its log
    file and cgroup files on the host) and its environ/memory: no host data, no host write."""
    import glob

    logs = glob.glob(f"{daemon.data_dir}/sandboxes/{attacker.sandbox_id}/agent.log")
    before = [open(p, "rb").read() for p in logs]
    marker = f"files-api-into-agent-{uuid.uuid4().hex}"
    with _client(daemon, attacker) as c:
        rs = []
        for n in range(0, 30):
            rs.append(c.post("/files", params={"path": f"/proc/1/fd/{n}", "username": "root"}, content=marker.encode(),
                             headers={"Content-Type": "application/octet-stream"}))
        for p in ["/proc/1/environ", "/proc/1/mem", "/proc/1/fd/1", "/proc/1/exe"]:
            rs.append(c.get("/files", params={"path": p, "username": "root"}, headers={"Range": "bytes=0-4095"}))
        out = "\n".join(f"{r.request.url.params.get('path')} {r.status_code} {r.text[:100]}" for r in rs)
    canaries.check(out, "agent fds")
    after = [open(p, "rb").read() for p in logs]
    if any(marker.encode() in a for a in after) and before != after:
        raise Escape("a write through the files API landed in the agent's host log file")
    if daemon.key in out:
        raise Escape("the daemon's key leaked")


@pytest.mark.parametrize("user", ["user", "root"])
def test_files_api_host_paths_as_users(daemon, attacker, canaries, user):
    """The host secret's path and the canary dir as both sandbox users, through the SDK."""
    from e2b.exceptions import SandboxException

    outs = []
    for p in [str(canaries.secret_file), f"/proc/1/root{canaries.secret_file}"]:
        try:
            outs.append(attacker.files.read(p, user=user))
        except SandboxException as e:
            outs.append(str(e))
    try:
        attacker.files.write(f"{canaries.dir}/pwned", "x", user=user)
    except SandboxException as e:
        outs.append(str(e))
    canaries.check("\n".join(outs), f"SDK files as {user}")
