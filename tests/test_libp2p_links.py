"""Outbound-only sites over real libp2p on loopback: the unreachable site dials and keeps the
connection open, its neighbour sends back over that connection and never dials it, and a
dropped connection is redialled by the unreachable end.

Each test is one bounded `trio.run`; waits are on link events and received messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.peer.id import ID
from libp2p_support import FAST, open_site, run, seed

from gossipmed.errors import ConfigError, TransportError
from node.net.libp2p.transport import (
    Libp2pTransport,
    PeerInfo,
    peer_id_from_seed,
)

pytestmark = pytest.mark.network

HOSPITAL, CITY = "hospital", "city"


def pid(name: str) -> str:
    return peer_id_from_seed(seed(name))


@asynccontextmanager
async def outbound_pair(
    *, hospital_timeouts: object = FAST
) -> AsyncIterator[tuple[Libp2pTransport, Libp2pTransport]]:
    """The city is reachable; the hospital is not: the city knows no address for it and never
    dials it, the hospital dials the city and keeps the connection open."""
    assert isinstance(hospital_timeouts, type(FAST))
    async with open_site(
        CITY, {CITY: PeerInfo(pid(CITY)), HOSPITAL: PeerInfo(pid(HOSPITAL), dial="never")}
    ) as city:
        members = {
            HOSPITAL: PeerInfo(pid(HOSPITAL)),
            CITY: PeerInfo(pid(CITY), city.listen_addrs, dial="keep-open"),
        }
        async with open_site(HOSPITAL, members, timeouts=hospital_timeouts) as hospital:
            yield hospital, city


def test_the_unreachable_site_dials_at_start_and_both_directions_use_its_connection() -> None:
    async def main() -> None:
        async with outbound_pair() as (hospital, city):
            # nothing was sent yet: the hospital's keeper opened the connection on its own
            link = await city.wait_link(HOSPITAL, lambda i: i.connected)
            assert link.direction == "inbound" and link.dial == "never"
            await city.send(HOSPITAL, b"from the city")
            assert await hospital.receive_from() == (CITY, b"from the city")
            await hospital.send(CITY, b"from the hospital")
            assert await city.receive_from() == (HOSPITAL, b"from the hospital")
            conns = city.host.get_network().get_connections(ID.from_base58(hospital.peer_id))
            assert len(conns) == 1  # the city never opened one of its own
            link = await hospital.wait_link(CITY, lambda i: i.dials > 0)  # dial_peer returns late
            assert (link.direction, link.dial, link.dials) == ("outbound", "keep-open", 1)

    run(main)


def test_a_dropped_connection_is_redialled_by_the_unreachable_end() -> None:
    async def main() -> None:
        async with outbound_pair() as (hospital, city):
            await city.wait_link(HOSPITAL, lambda i: i.connected)
            await city.host.disconnect(ID.from_base58(hospital.peer_id))  # e.g. a reset link
            await hospital.wait_link(CITY, lambda i: i.dials >= 2 and i.connected)
            await city.send(HOSPITAL, b"after the drop")
            assert await hospital.receive() == b"after the drop"
            link = city.link(HOSPITAL)
            assert link is not None and link.direction == "inbound"

    run(main)


def test_a_failing_keepalive_ping_makes_the_unreachable_end_redial() -> None:
    async def main() -> None:
        quick = dataclasses.replace(FAST, keepalive_s=0.2)
        async with outbound_pair(hospital_timeouts=quick) as (hospital, city):
            await hospital.wait_link(CITY, lambda i: i.connected)
            city.host.remove_stream_handler(PING_PROTOCOL_ID)  # pings now fail
            await hospital.wait_link(CITY, lambda i: i.dials >= 2)

    run(main)


def test_the_reachable_end_never_dials_an_unreachable_neighbour() -> None:
    """The city's roster even lists an address for the hospital: a TCP listener that records
    every connection attempt. The city's send waits for the hospital's connection, which never
    comes, fails after its attempts, and the listener saw nothing."""

    async def main() -> None:
        attempts: list[object] = []
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def record(stream: trio.SocketStream) -> None:
            attempts.append(stream.socket.getpeername())
            await stream.aclose()

        short = dataclasses.replace(FAST, dial_s=0.3, send_attempts=2, backoff_initial_s=0.05)
        members = {
            CITY: PeerInfo(pid(CITY)),
            HOSPITAL: PeerInfo(pid(HOSPITAL), [f"/ip4/127.0.0.1/tcp/{port}"], dial="never"),
        }
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, record, listeners)
            async with open_site(CITY, members, timeouts=short) as city:
                with pytest.raises(TransportError, match="it is unreachable and dials us"):
                    await city.send(HOSPITAL, b"nobody to take it")
            nursery.cancel_scope.cancel()
        assert attempts == []

    run(main)


def test_dial_policy_must_be_known() -> None:
    with pytest.raises(ConfigError, match="dial must be one of"):
        PeerInfo(pid(CITY), dial="sometimes")
