"""Async round driver: one Peer over one Transport, as the daemon runs it.

A pump task feeds every inbound message to `peer.receive`; `run_round` sends this round's
envelopes, then waits until every neighbour of the round has been heard or the timeout
passes, and completes the round with whatever arrived (once per exchange when the peer has
several `gossip_steps`). A silent neighbour therefore costs at
most one timeout per round and never stalls the site.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from gossipmed.errors import TransportError
from gossipmed.metrics import RoundRecord
from node.peer import Peer
from node.transport import Transport

log = logging.getLogger(__name__)
T = TypeVar("T")


class RoundDriver:
    def __init__(self, peer: Peer, transport: Transport, *, offload: bool = False) -> None:
        """`offload=True` runs training and mixing in a worker thread so the pump keeps
        receiving meanwhile (the daemon); tests use the inline default."""
        self.peer = peer
        self.transport = transport
        self.offload = offload
        self._arrival = trio.Event()
        self.send_failures = 0

    async def pump(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Receive forever (until cancelled or the transport closes)."""
        task_status.started()
        while True:
            try:
                data = await self.transport.receive()
            except TransportError:
                return
            self.peer.receive(data)
            arrived, self._arrival = self._arrival, trio.Event()
            arrived.set()

    async def run_round(self, round: int, *, timeout: float) -> RoundRecord:
        """Train, then `peer.gossip_steps` exchanges, each waiting up to `timeout`."""
        envelopes = await self._call(self.peer.outgoing, round)
        for step in range(self.peer.gossip_steps):
            if step > 0:
                await self._call(self.peer.mix_step, round, step - 1)
                envelopes = await self._call(self.peer.seal_outgoing, round, step)
            for recipient, data in envelopes.items():
                try:
                    await self.transport.send(recipient, data)
                except TransportError as exc:
                    self.send_failures += 1
                    log.warning("round %d: send to %s failed: %s", round, recipient, exc)
            expected = self.peer.expected(round, step)
            with trio.move_on_after(timeout if math.isfinite(timeout) else math.inf):
                while not expected <= self.peer.heard(round, step):
                    await self._arrival.wait()
        return await self._call(self.peer.complete_round, round)

    async def _call(self, fn: Callable[..., T], *args: int) -> T:
        if self.offload:
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)


async def run_round(peer: Peer, transport: Transport, round: int, *, timeout: float) -> RoundRecord:
    """One round with a pump that lives only as long as the round (tests, one-shot tools)."""
    driver = RoundDriver(peer, transport)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.pump)
        record = await driver.run_round(round, timeout=timeout)
        nursery.cancel_scope.cancel()
    return record
