"""Client of sandboxd's session API (``/workspace/se/*``); see docs/sessions.md.

``from sandbox_runtime import SharedEnvSandbox`` or, as the design documents write it,
``from sandbox_runtime.sdk.shared_env import SharedEnvSandbox``.
"""

from .errors import (
    InvalidRequestError,
    NotFoundError,
    ResourceError,
    RuntimeError,
    SandboxRuntimeError,
    SecurityError,
    TimeoutError,
)
from .sdk.placement import choose_server
from .sdk.shared_env import SharedEnvClient, SharedEnvSandbox

__all__ = [
    "SharedEnvSandbox",
    "SharedEnvClient",
    "choose_server",
    "SandboxRuntimeError",
    "TimeoutError",
    "ResourceError",
    "SecurityError",
    "RuntimeError",
    "NotFoundError",
    "InvalidRequestError",
]
