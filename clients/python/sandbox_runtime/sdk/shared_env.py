"""Clients of sandboxd's session API (``/workspace/se/*``, ``docs/sessions.md``).

- :class:`SharedEnvSandbox`: async, one session; created on first use (an existing session of
  that id is reused), with ``execute_code``, ``execute(command, *args)``, file helpers and
  ``close()``.
- :class:`SharedEnvClient`: sync, any session: ``create_session``, ``delete_session``,
  ``create_file``, ``list_files``, ``upload_file``, ``download_file``, ``execute_command``,
  ``execute_code``, ``get_status``, ``cleanup_all``.

With several servers, a session lives on the server chosen by rendezvous hashing of its id
(:func:`sandbox_runtime.sdk.placement.choose_server`), so every client finds it. Uploads and
downloads stream (constant memory). Errors raise the subclasses of
:class:`sandbox_runtime.errors.SandboxRuntimeError` named by the daemon's ``error_code``.
"""

from __future__ import annotations

import base64
import os
from typing import IO, Any, Dict, List, Optional, Sequence, Union

import httpx

from ..errors import InvalidRequestError
from . import config
from .config import PREFIX, check, file_path, seg
from .placement import choose_server

Source = Union[str, os.PathLike, bytes, IO[bytes]]

DEFAULT_REQUEST_TIMEOUT = 60.0


def _upload_part(source: Source, remote_name: Optional[str]):
    """A multipart ``file`` part: (filename, file object or bytes)."""
    if isinstance(source, (bytes, bytearray)):
        if not remote_name:
            raise ValueError("remote_name is required when uploading bytes")
        return remote_name, bytes(source), None
    if isinstance(source, (str, os.PathLike)):
        name = remote_name or os.path.basename(os.fspath(source))
        f = open(source, "rb")
        return name, f, f
    name = remote_name or os.path.basename(getattr(source, "name", "") or "")
    if not name:
        raise ValueError("remote_name is required for this file object")
    return name, source, None


class SharedEnvClient:
    """Synchronous client of every session on ``servers``."""

    def __init__(
        self,
        servers: Optional[Sequence[str]] = None,
        api_key: Optional[str] = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.servers = config.resolve_servers(servers)
        self._timeout = request_timeout
        self._http = httpx.Client(
            headers={"X-API-Key": config.resolve_api_key(api_key)},
            timeout=httpx.Timeout(request_timeout),
        )

    # -- plumbing
    def server_for(self, session_id: str) -> str:
        """The server that holds ``session_id``."""
        return choose_server(session_id, self.servers)

    def _url(self, session_id: str, route: str, tail: str = "") -> str:
        return f"{self.server_for(session_id)}{PREFIX}/{route}/{seg(session_id)}{tail}"

    def _call(self, method: str, url: str, **kw) -> Any:
        resp = self._http.request(method, url, **kw)
        check(resp)
        return resp.json() if resp.content else None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "SharedEnvClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sessions
    def healthy(self) -> Dict[str, bool]:
        """Each server's health."""
        out = {}
        for s in self.servers:
            try:
                out[s] = self._http.get(f"{s}{PREFIX}/healthy").status_code == 200
            except httpx.HTTPError:
                out[s] = False
        return out

    def create_session(
        self,
        session_id: str,
        size: Any = None,
        timeout: Optional[int] = None,
        template: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        allowed_commands: Optional[Sequence[str]] = None,
        max_processes: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Creates a session (``size`` like ``"50M"``, ``timeout`` in seconds)."""
        body = config.session_body(size, timeout, template, env, allowed_commands, max_processes)
        return self._call("POST", self._url(session_id, "session"), json=body)

    def delete_session(self, session_id: str) -> Dict[str, Any]:
        return self._call("DELETE", self._url(session_id, "session"))

    def get_status(self, session_id: str) -> Dict[str, Any]:
        return self._call("GET", self._url(session_id, "status"))

    def cleanup_all(self, force: bool = False) -> List[str]:
        """Removes every session on every server; without ``force`` a server refuses while
        processes run in any of its sessions (raises before later servers are asked)."""
        removed: List[str] = []
        for s in self.servers:
            r = self._call("POST", f"{s}{PREFIX}/cleanup-all", json={"force": force})
            removed.extend(r.get("removed", []))
        return removed

    # -- files
    def create_file(
        self, session_id: str, filename: str, content: Union[str, bytes] = "", mode: Any = None
    ) -> Dict[str, Any]:
        body: Dict[str, Any] = {"filename": filename}
        if isinstance(content, (bytes, bytearray)):

            body["content"] = base64.b64encode(bytes(content)).decode()
            body["encoding"] = "base64"
        else:
            body["content"] = content
        if mode is not None:
            body["mode"] = oct(mode)[2:].rjust(4, "0") if isinstance(mode, int) else mode
        return self._call("POST", self._url(session_id, "create"), json=body)

    def list_files(self, session_id: str, path: Optional[str] = None) -> List[Dict[str, Any]]:
        params = {"path": path} if path else None
        return self._call("GET", self._url(session_id, "files"), params=params)["files"]

    def upload_files(
        self, session_id: str, files: Sequence[Any], path: Optional[str] = None
    ) -> List[str]:
        """Uploads several files in one streamed request: each item is a local path, or a
        ``(remote_name, local path | bytes | file object)`` pair. All appear or none."""
        parts, opened = [], []
        try:
            for item in files:
                if isinstance(item, tuple):
                    remote, source = item
                else:
                    remote, source = None, item
                name, payload, handle = _upload_part(source, remote)
                if handle is not None:
                    opened.append(handle)
                parts.append(("file", (name, payload, "application/octet-stream")))
            params = {"path": path} if path else None
            r = self._call(
                "POST",
                self._url(session_id, "upload"),
                files=parts,
                params=params,
                timeout=httpx.Timeout(self._timeout, read=None, write=None),
            )
            return r["files"]
        finally:
            for h in opened:
                h.close()

    def upload_file(
        self,
        session_id: str,
        source: Source,
        remote_name: Optional[str] = None,
        path: Optional[str] = None,
    ) -> str:
        """Uploads one file (streamed) and returns its name in the session."""
        return self.upload_files(session_id, [(remote_name, source)], path=path)[0]

    def download_file(
        self, session_id: str, filename: str, local_path: Union[str, os.PathLike, None] = None
    ) -> Union[bytes, str]:
        """The file's bytes, or with ``local_path`` the file streamed there (returns the path)."""
        url = self._url(session_id, "download", "/" + file_path(filename))
        with self._http.stream("GET", url, timeout=httpx.Timeout(self._timeout, read=None)) as resp:
            if not resp.is_success:
                resp.read()
                check(resp)
            if local_path is None:
                return resp.read()
            with open(local_path, "wb") as f:
                for chunk in resp.iter_bytes(config.CHUNK):
                    f.write(chunk)
            return os.fspath(local_path)

    # -- execution
    def execute_command(
        self,
        session_id: str,
        command: str,
        *args: Any,
        shell: bool = False,
        timeout: Optional[int] = None,
        cwd: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> Dict[str, Any]:
        """Runs ``command`` (no shell unless ``shell=True``): stdout, stderr, exit_code, duration."""
        body = config.exec_body(command, args, shell, timeout, cwd, env)
        return self._call(
            "POST",
            self._url(session_id, "execute"),
            json=body,
            timeout=config.http_timeout(timeout or 300, self._timeout),
        )

    def execute_code(
        self,
        session_id: str,
        code: str,
        filename: Optional[str] = None,
        script_type: Optional[str] = None,
        args: Sequence[Any] = (),
        timeout: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> Dict[str, Any]:
        body = config.code_body(code, filename, script_type, args, timeout, env)
        return self._call(
            "POST",
            self._url(session_id, "execute_code"),
            json=body,
            timeout=config.http_timeout(timeout or 300, self._timeout),
        )


class SharedEnvSandbox:
    """One session, used asynchronously. The session is created on first use (or reused when
    it exists); ``close()`` ends the HTTP client, ``delete()`` the session."""

    def __init__(
        self,
        session_id: str,
        servers: Optional[Sequence[str]] = None,
        api_key: Optional[str] = None,
        size: Any = None,
        timeout: Optional[int] = None,
        template: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        allowed_commands: Optional[Sequence[str]] = None,
        max_processes: Optional[int] = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.session_id = session_id
        self.servers = config.resolve_servers(servers)
        self.server = choose_server(session_id, self.servers)
        self._session_body = config.session_body(
            size, timeout, template, env, allowed_commands, max_processes
        )
        self._timeout = request_timeout
        self._http = httpx.AsyncClient(
            headers={"X-API-Key": config.resolve_api_key(api_key)},
            timeout=httpx.Timeout(request_timeout),
        )
        self._ready = False
        self.info: Optional[Dict[str, Any]] = None

    def _url(self, route: str, tail: str = "") -> str:
        return f"{self.server}{PREFIX}/{route}/{seg(self.session_id)}{tail}"

    async def _call(self, method: str, url: str, **kw) -> Any:
        resp = await self._http.request(method, url, **kw)
        check(resp)
        return resp.json() if resp.content else None

    async def ensure(self) -> Dict[str, Any]:
        """Creates the session unless it exists; returns its info or status."""
        if not self._ready:
            try:
                self.info = await self._call("POST", self._url("session"), json=self._session_body)
            except InvalidRequestError as e:
                if e.status != 409:
                    raise
                self.info = await self._call("GET", self._url("status"))
            self._ready = True
        return self.info or {}

    async def execute_code(
        self,
        code: str,
        filename: Optional[str] = None,
        script_type: Optional[str] = None,
        args: Sequence[Any] = (),
        timeout: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> Dict[str, Any]:
        """Writes ``code`` to ``filename`` in the session and runs it with the interpreter of
        ``script_type`` (default: from the extension, else python)."""
        await self.ensure()
        body = config.code_body(code, filename, script_type, args, timeout, env)
        return await self._call(
            "POST",
            self._url("execute_code"),
            json=body,
            timeout=config.http_timeout(timeout or 300, self._timeout),
        )

    async def execute(
        self,
        command: str,
        *args: Any,
        shell: bool = False,
        timeout: Optional[int] = None,
        cwd: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> Dict[str, Any]:
        """Runs ``command`` with ``args`` (no shell unless ``shell=True``)."""
        await self.ensure()
        body = config.exec_body(command, args, shell, timeout, cwd, env)
        return await self._call(
            "POST",
            self._url("execute"),
            json=body,
            timeout=config.http_timeout(timeout or 300, self._timeout),
        )

    async def create_file(self, filename: str, content: Union[str, bytes] = "", mode: Any = None):
        await self.ensure()
        body: Dict[str, Any] = {"filename": filename}
        if isinstance(content, (bytes, bytearray)):

            body["content"] = base64.b64encode(bytes(content)).decode()
            body["encoding"] = "base64"
        else:
            body["content"] = content
        if mode is not None:
            body["mode"] = oct(mode)[2:].rjust(4, "0") if isinstance(mode, int) else mode
        return await self._call("POST", self._url("create"), json=body)

    async def list_files(self, path: Optional[str] = None) -> List[Dict[str, Any]]:
        await self.ensure()
        params = {"path": path} if path else None
        return (await self._call("GET", self._url("files"), params=params))["files"]

    async def upload_files(self, files: Sequence[Any], path: Optional[str] = None) -> List[str]:
        """Like :meth:`SharedEnvClient.upload_files`, streamed from local files."""
        await self.ensure()
        parts, opened = [], []
        try:
            for item in files:
                remote, source = item if isinstance(item, tuple) else (None, item)
                name, payload, handle = _upload_part(source, remote)
                if handle is not None:
                    opened.append(handle)
                parts.append(("file", (name, payload, "application/octet-stream")))
            params = {"path": path} if path else None
            # httpx's async client streams multipart from sync file objects
            r = await self._call(
                "POST",
                self._url("upload"),
                files=parts,
                params=params,
                timeout=httpx.Timeout(self._timeout, read=None, write=None),
            )
            return r["files"]
        finally:
            for h in opened:
                h.close()

    async def upload_file(
        self, source: Source, remote_name: Optional[str] = None, path: Optional[str] = None
    ) -> str:
        return (await self.upload_files([(remote_name, source)], path=path))[0]

    async def download_file(
        self, filename: str, local_path: Union[str, os.PathLike, None] = None
    ) -> Union[bytes, str]:
        await self.ensure()
        url = self._url("download", "/" + file_path(filename))
        async with self._http.stream(
            "GET", url, timeout=httpx.Timeout(self._timeout, read=None)
        ) as resp:
            if not resp.is_success:
                await resp.aread()
                check(resp)
            if local_path is None:
                return await resp.aread()
            with open(local_path, "wb") as f:
                async for chunk in resp.aiter_bytes(config.CHUNK):
                    f.write(chunk)
            return os.fspath(local_path)

    async def read_file(self, filename: str) -> str:
        return (await self.download_file(filename)).decode()

    async def get_status(self) -> Dict[str, Any]:
        await self.ensure()
        return await self._call("GET", self._url("status"))

    async def delete(self) -> None:
        """Ends the session and removes its files."""
        await self._call("DELETE", self._url("session"))
        self._ready = False

    async def close(self) -> None:
        """Closes the HTTP client (the session stays until deleted or timed out)."""
        await self._http.aclose()

    async def __aenter__(self) -> "SharedEnvSandbox":
        await self.ensure()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
