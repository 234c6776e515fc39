"""The `Transport` protocol: moves opaque envelope bytes between named sites.

Authenticity, confidentiality and freshness are the envelope's job (gossipmed.wire.envelope), so a
transport only has to deliver bytes best-effort; a lost message is handled by the round
timeout, never by the transport retrying forever. What the transport does vouch for is the
*connection*: who is at the other end (libp2p: the Noise-authenticated peer ID), so it can
refuse outsiders and non-neighbours before their bytes reach the envelope code.
"""

from __future__ import annotations

from typing import Protocol


class Transport(Protocol):
    """Async (trio) byte pipe between sites, addressed by site name from the roster."""

    @property
    def local_name(self) -> str:
        """This site's name in the roster."""
        ...

    async def send(self, recipient: str, data: bytes) -> None:
        """Deliver `data` to `recipient`, bounded by the transport's own timeouts.

        Raises TransportError when the recipient cannot be reached; callers log and go on.
        """
        ...

    async def receive_from(self) -> tuple[str, bytes]:
        """The next inbound message and the site the connection belongs to (callers bound
        the wait). Raises TransportError once the transport is closed."""
        ...

    def connected(self, site: str) -> bool:
        """Whether an open connection to `site` exists (for status; no I/O)."""
        ...

    async def aclose(self) -> None:
        """Release sockets/tasks; idempotent."""
        ...
