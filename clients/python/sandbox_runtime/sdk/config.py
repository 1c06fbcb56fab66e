"""Servers, API key and request building shared by the sync and async clients."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import quote

import httpx

from ..errors import error_from_response

#: Environment variables read when no API key is passed, in order.
API_KEY_ENV = ("SANDBOX_RUNTIME_API_KEY", "SANDBOXD_API_KEY", "E2B_API_KEY")
#: Environment variable with comma-separated server URLs, when none are passed.
SERVERS_ENV = "SANDBOX_RUNTIME_SERVERS"
#: Where the session API lives on a server.
PREFIX = "/workspace/se"
#: Chunk size of streamed downloads.
CHUNK = 1 << 20


def resolve_servers(servers: Optional[Sequence[str]]) -> List[str]:
    if servers is None:
        env = os.environ.get(SERVERS_ENV, "")
        servers = [s for s in (x.strip() for x in env.split(",")) if s]
    out = []
    for s in servers:
        s = s.strip().rstrip("/")
        if not s.startswith(("http://", "https://")):
            s = "http://" + s
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError(f"no servers: pass servers=[...] or set {SERVERS_ENV}")
    return out


def resolve_api_key(api_key: Optional[str]) -> str:
    if api_key:
        return api_key
    for name in API_KEY_ENV:
        v = os.environ.get(name)
        if v:
            return v
    raise ValueError(f"no API key: pass api_key=... or set one of {', '.join(API_KEY_ENV)}")


def seg(value: str) -> str:
    """One path segment, percent-encoded (`.` and `..` too, which URL clients would
    otherwise resolve away)."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe="")


def file_path(name: str) -> str:
    """A file name as the download route's last segment: wholly percent-encoded (the daemon
    decodes `%2F` back to `/`), so no URL client resolves `.` or `..` in it."""
    return seg(name)


def session_body(
    size: Any = None,
    timeout: Optional[int] = None,
    template: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    allowed_commands: Optional[Sequence[str]] = None,
    max_processes: Optional[int] = None,
) -> Dict[str, Any]:
    body: Dict[str, Any] = {}
    if size is not None:
        body["size"] = size
    if timeout is not None:
        body["timeout"] = timeout
    if template is not None:
        body["template"] = template
    if env:
        body["env"] = dict(env)
    if allowed_commands is not None:
        body["allowed_commands"] = list(allowed_commands)
    if max_processes is not None:
        body["max_processes"] = max_processes
    return body


def exec_body(command: str, args: Sequence[str], shell: bool, timeout, cwd, env) -> Dict[str, Any]:
    body: Dict[str, Any] = {"command": command, "args": [str(a) for a in args], "shell": shell}
    if timeout is not None:
        body["timeout"] = int(timeout)
    if cwd is not None:
        body["cwd"] = cwd
    if env:
        body["env"] = dict(env)
    return body


def code_body(code: str, filename, script_type, args, timeout, env) -> Dict[str, Any]:
    body: Dict[str, Any] = {"code": code}
    if filename is not None:
        body["filename"] = filename
    if script_type is not None:
        body["script_type"] = script_type
    if args:
        body["args"] = [str(a) for a in args]
    if timeout is not None:
        body["timeout"] = int(timeout)
    if env:
        body["env"] = dict(env)
    return body


def http_timeout(exec_timeout: Optional[float], base: float) -> httpx.Timeout:
    """Read timeout long enough for an execution of ``exec_timeout`` seconds."""
    read = base if exec_timeout is None else max(base, float(exec_timeout) + 30.0)
    return httpx.Timeout(connect=10.0, read=read, write=base, pool=base)


def check(resp: httpx.Response) -> None:
    """Raises the typed exception of an error response (body already read)."""
    if resp.is_success:
        return
    try:
        body = resp.json()
    except ValueError:
        body = None
    raise error_from_response(resp.status_code, body, resp.text)
