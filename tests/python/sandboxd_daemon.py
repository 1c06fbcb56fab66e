"""Start and drive a real `sandboxd serve` for the Python tests (used by conftest.py and by
test modules that need a daemon with other flags, such as test_pool.py)."""

import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("SANDBOXD_BIN", str(ROOT / "target" / "x86_64-unknown-linux-gnu" / "debug" / "sandboxd"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sandboxd exited with {proc.returncode}:\n{open(log_path).read()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status in (200, 204):
                    return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"sandboxd did not become healthy:\n{open(log_path).read()}")


def _api(url: str, key: str, method: str, path: str):
    req = urllib.request.Request(url + path, method=method, headers={"X-API-Key": key})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
        return r.status, body


def call_api(method: str, path: str, body=None):
    """A control-plane request to the daemon the E2B_* variables name: (status, raw body),
    error statuses included."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        os.environ["E2B_API_URL"] + path, data=data, method=method, headers={"X-API-Key": os.environ["E2B_API_KEY"]}
    )
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _set_env(url: str, key: str) -> None:
    os.environ["E2B_API_URL"] = url
    os.environ["E2B_SANDBOX_URL"] = url
    os.environ["E2B_VOLUME_API_URL"] = url
    os.environ["E2B_API_KEY"] = key
    os.environ["E2B_DOMAIN"] = url.split("//", 1)[1].replace("127.0.0.1", "localhost")
    os.environ.pop("E2B_DEBUG", None)


def _kill_all(url: str, key: str) -> None:
    try:
        _, body = _api(url, key, "GET", "/v2/sandboxes?state=running,paused&limit=100")
        for s in json.loads(body):
            try:
                _api(url, key, "DELETE", f"/sandboxes/{s['sandboxID']}")
            except Exception:
                pass
    except Exception:
        pass
    # volumes stay mounted on the host until deleted (docs/volumes.md)
    try:
        _, body = _api(url, key, "GET", "/volumes")
        for v in json.loads(body):
            try:
                _api(url, key, "DELETE", f"/volumes/{v['volumeID']}")
            except Exception:
                pass
    except Exception:
        pass


class Daemon:
    """A `sandboxd serve` of its own with extra flags (free loopback port, throwaway data dir),
    for test modules that need flags the session daemon does not have."""

    def __init__(self, extra_args=(), env=None):
        import tempfile

        self.data_dir = tempfile.mkdtemp(prefix="sandboxd-pytest-own-")
        self.log_path = self.data_dir + ".log"
        port = _free_port()
        self.url, self.key = f"http://127.0.0.1:{port}", "e2b_" + os.urandom(20).hex()
        self._env = dict(os.environ, SANDBOXD_API_KEY=self.key, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self._env.update(env or {})
        self._argv = [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", self.data_dir, *extra_args]
        self._start()

    def _start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._argv, env=self._env, stdout=subprocess.DEVNULL, stderr=log)
        _wait_healthy(self.url, self.proc, self.log_path)

    def restart(self):
        """SIGTERM (sandboxes keep running and are re-adopted), then the same daemon again."""
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._start()

    def stop(self):
        import shutil

        _kill_all(self.url, self.key)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        try:
            os.unlink(self.log_path)
        except OSError:
            pass
