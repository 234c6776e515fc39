"""The `Transport` protocol: moves opaque envelope bytes between named sites.

Authenticity, confidentiality and freshness are the envelope's job (gossipmed.envelope), so a
transport only has to deliver bytes best-effort; a lost message is handled by the round
timeout, never by the transport retrying forever.
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

    async def receive(self) -> bytes:
        """Wait for the next inbound message from any sender (callers bound the wait)."""
        ...

    async def aclose(self) -> None:
        """Release sockets/tasks; idempotent."""
        ...
