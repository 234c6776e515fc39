"""Sending one envelope to a neighbour: reuse the connection, retry with backoff, redial clean.

Each attempt opens a stream on the kept connection (a fresh dial costs ~250 ms in libp2p),
writes `uvarint(len) || envelope` in 1 MiB writes, and waits for the receiver's ack byte.
After a failed attempt the connection is closed (`host.disconnect`) and the peer lifted from
libp2p's 60 s negative dial cache (`unblock_peer`), so the next attempt dials afresh.

A member whose dial policy is `DIAL_NEVER` (it is unreachable and dials us) is never dialled:
an attempt waits at most `dial_s` for its connection (node.net.libp2p.links) and fails if
none came, and the caller retries as for any failed send.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

from gossipmed.errors import TransportError
from node.net.framing import frame_header
from node.net.libp2p.config import ACK_ACCEPTED, DIAL_NEVER, PROTOCOL_ID, Libp2pTimeouts
from node.net.libp2p.inbound import finish_stream

CHUNK_BYTES = 1 << 20

# Under the transport's logger, so one level setting (the daemon's) covers all of it.
log = logging.getLogger("node.net.libp2p.transport").getChild("outbound")


class NotConnected(TransportError):
    """A member that dials us (it is unreachable) has no connection open to us."""


class Outbound:
    def __init__(
        self,
        *,
        host: IHost,
        timeouts: Libp2pTimeouts,
        wait_connected: Callable[[ID, float], Awaitable[bool]],
    ) -> None:
        self._host = host
        self._timeouts = timeouts
        self._wait_connected = wait_connected

    def _swarm(self) -> Any:
        return self._host.get_network()  # unblock_peer lives on Swarm, not on INetwork

    async def send(self, recipient: str, pid: ID, data: bytes, *, dial: str) -> None:
        t = self._timeouts
        delay = t.backoff_initial_s
        last: Exception | None = None
        for attempt in range(1, t.send_attempts + 1):
            try:
                await self._send_once(pid, data, dial=dial)
                return
            except Exception as exc:  # libp2p raises many unrelated types; all mean "failed"
                last = exc
                log.info(
                    "send to %s failed (attempt %d/%d): %s: %s",
                    recipient,
                    attempt,
                    t.send_attempts,
                    type(exc).__name__,
                    exc,
                )
                await self.forget(pid)
                if attempt < t.send_attempts:
                    await trio.sleep(delay)
                    delay = min(delay * 2, t.backoff_max_s)
        raise TransportError(
            f"cannot deliver to {recipient!r} after {t.send_attempts} attempts: "
            f"{type(last).__name__}: {last}"
        ) from last

    async def _send_once(self, pid: ID, data: bytes, *, dial: str) -> None:
        t = self._timeouts
        if dial == DIAL_NEVER:
            if not await self._wait_connected(pid, t.dial_s):
                raise NotConnected(f"no connection from {pid} (it is unreachable and dials us)")
        else:
            await self.connect(pid)
        with trio.fail_after(t.stream_open_s):
            stream = await self._host.new_stream(pid, [PROTOCOL_ID])
        ok = False
        try:
            with trio.fail_after(t.message_s):
                with trio.fail_after(t.io_s):
                    await stream.write(frame_header(len(data)))
                for offset in range(0, len(data), CHUNK_BYTES):
                    with trio.fail_after(t.io_s):
                        await stream.write(data[offset : offset + CHUNK_BYTES])
                with trio.fail_after(t.io_s):
                    ack = await stream.read(1)
            if ack != ACK_ACCEPTED:
                raise TransportError("receiver did not acknowledge the envelope")
            ok = True
        finally:
            await finish_stream(stream, graceful=ok)

    async def connect(self, pid: ID) -> None:
        """Dial `pid` unless a connection (either direction) is open; bounded by `dial_s`."""
        network = self._swarm()
        if any(not c.is_closed for c in network.get_connections(pid)):
            return
        network.unblock_peer(pid)
        with trio.fail_after(self._timeouts.dial_s):
            await network.dial_peer(pid)

    async def forget(self, pid: ID) -> None:
        """Close whatever is left of the connection so the next attempt dials afresh."""
        with trio.move_on_after(self._timeouts.io_s):
            try:
                await self._host.disconnect(pid)
            except Exception as exc:
                log.debug("disconnect %s: %s: %s", pid, type(exc).__name__, exc)
        self._swarm().unblock_peer(pid)
