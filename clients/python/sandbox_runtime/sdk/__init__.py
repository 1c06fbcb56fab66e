"""The session API's clients."""

from .placement import choose_server
from .shared_env import SharedEnvClient, SharedEnvSandbox

__all__ = ["SharedEnvClient", "SharedEnvSandbox", "choose_server"]
