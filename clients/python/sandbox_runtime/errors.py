"""Exceptions of the session API, one class per `error_code` of the daemon's error bodies."""

from __future__ import annotations

from typing import Any, Optional


class SandboxRuntimeError(Exception):
    """Base of every error the session API answers.

    Attributes: ``status`` (HTTP status), ``error_code`` (the daemon's stable code),
    ``resource`` (which limit, for resource errors), ``body`` (the whole JSON error body: failed
    executions carry ``stdout``, ``stderr``, ``exit_code`` and ``duration`` there).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        error_code: str = "",
        resource: Optional[str] = None,
        body: Optional[dict] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.resource = resource
        self.body: dict = body or {}

    @property
    def stdout(self) -> str:
        return self.body.get("stdout", "")

    @property
    def stderr(self) -> str:
        return self.body.get("stderr", "")

    def __getitem__(self, key: str) -> Any:
        return self.body[key]


class TimeoutError(SandboxRuntimeError):  # noqa: A001 - the documented name
    """An execution ran past its timeout and was killed (``error_code`` ``timeout``)."""


class ResourceError(SandboxRuntimeError):
    """A limit was reached: ``resource`` is ``memory``, ``disk``, ``processes``, ``time`` or
    ``sandboxes`` (``error_code`` ``resource_exhausted``)."""


class SecurityError(SandboxRuntimeError):
    """Refused by the API key, a path rule or a command policy (``security_denied``)."""


class RuntimeError(SandboxRuntimeError):  # noqa: A001 - the documented name
    """The sandbox or the daemon failed while doing what was asked (``runtime_error``)."""


class NotFoundError(SandboxRuntimeError):
    """The session or file does not exist (``not_found``)."""


class InvalidRequestError(SandboxRuntimeError):
    """The request is wrong: bad names or values, a session that already exists
    (``invalid_request``)."""


_BY_CODE = {
    "timeout": TimeoutError,
    "resource_exhausted": ResourceError,
    "security_denied": SecurityError,
    "runtime_error": RuntimeError,
    "not_found": NotFoundError,
    "invalid_request": InvalidRequestError,
}


def error_from_response(status: int, body: Any, text: str = "") -> SandboxRuntimeError:
    """The exception for an error response (``body`` is its parsed JSON, if any)."""
    if not isinstance(body, dict):
        body = {}
    code = body.get("error_code") or ""
    message = body.get("message") or text or f"HTTP {status}"
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = NotFoundError if status == 404 else (
            InvalidRequestError if 400 <= status < 500 else RuntimeError
        )
    return cls(message, status=status, error_code=code, resource=body.get("resource"), body=body)
