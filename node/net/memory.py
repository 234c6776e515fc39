"""In-memory `Transport` for tests and single-process experiments: trio memory channels.

Same contract as the libp2p transport: best-effort delivery of opaque bytes by site name,
TransportError when the recipient is unknown, gone or not keeping up (a bounded inbox, so a
slow site cannot make a fast one buffer without limit).
"""

from __future__ import annotations

import trio

from gossipmed.errors import TransportError

DEFAULT_INBOX = 256


class MemoryNetwork:
    """A switchboard; `endpoint(name)` gives each site its transport."""

    def __init__(self, *, inbox_size: int = DEFAULT_INBOX) -> None:
        self.inbox_size = inbox_size
        self._inboxes: dict[str, trio.MemorySendChannel[tuple[str, bytes]]] = {}

    def endpoint(self, name: str) -> MemoryTransport:
        if name in self._inboxes:
            raise TransportError(f"site {name!r} already has an endpoint")
        send, receive = trio.open_memory_channel[tuple[str, bytes]](self.inbox_size)
        self._inboxes[name] = send
        return MemoryTransport(name=name, network=self, inbox=receive)

    def _deliver(self, sender: str, recipient: str, data: bytes) -> None:
        channel = self._inboxes.get(recipient)
        if channel is None:
            raise TransportError(f"no site called {recipient!r} on this network")
        try:
            channel.send_nowait((sender, data))
        except trio.WouldBlock:
            raise TransportError(f"inbox of {recipient!r} is full; message dropped") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportError(f"site {recipient!r} has left the network") from None

    def has(self, name: str) -> bool:
        return name in self._inboxes

    def _leave(self, name: str) -> None:
        channel = self._inboxes.pop(name, None)
        if channel is not None:
            channel.close()


class MemoryTransport:
    def __init__(
        self,
        *,
        name: str,
        network: MemoryNetwork,
        inbox: trio.MemoryReceiveChannel[tuple[str, bytes]],
    ) -> None:
        self._name = name
        self._network = network
        self._inbox = inbox
        self._closed = False

    @property
    def local_name(self) -> str:
        return self._name

    async def send(self, recipient: str, data: bytes) -> None:
        if self._closed:
            raise TransportError(f"transport of {self._name!r} is closed")
        self._network._deliver(self._name, recipient, bytes(data))
        await trio.lowlevel.checkpoint()

    async def receive_from(self) -> tuple[str, bytes]:
        try:
            return await self._inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportError(f"transport of {self._name!r} is closed") from None

    async def receive(self) -> bytes:
        return (await self.receive_from())[1]

    def connected(self, site: str) -> bool:
        return not self._closed and self._network.has(site)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._network._leave(self._name)
        await self._inbox.aclose()
