"""Which server holds a session: rendezvous (highest random weight) hashing of the session id
over the server list. Every client with the same list picks the same server without any
coordination, and removing a server moves only the sessions it held."""

from __future__ import annotations

import hashlib
from typing import Sequence


def _weight(server: str, session_id: str) -> int:
    digest = hashlib.sha256(f"{server}\0{session_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def choose_server(session_id: str, servers: Sequence[str]) -> str:
    """The server of ``session_id`` among ``servers`` (normalised URLs)."""
    if not servers:
        raise ValueError("no servers given")
    return max(servers, key=lambda s: (_weight(s, session_id), s))
