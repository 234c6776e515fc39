"""Libp2pTransport on loopback: delivery, connection reuse, roster gate, hostile bytes, redial.

Every test is one `trio.run` bounded by `trio.fail_after`; hosts bind 127.0.0.1 port 0 and
synchronise on received messages / on_reject events, never on sleeps.
"""

from __future__ import annotations

import dataclasses
from contextlib import AsyncExitStack

import pytest
import trio
from libp2p.peer.id import ID
from libp2p_support import (
    FAST,
    MAX_BYTES,
    Rejections,
    introduce,
    open_protocol_stream,
    open_site,
    open_sites,
    payload,
    raw_member_host,
    roster,
    run,
    seed,
    send_raw_and_close,
)

from gossipmed.errors import TransportError
from node.net.framing import encode_frame, encode_uvarint
from node.net.libp2p.transport import (
    ACK_ACCEPTED,
    Libp2pLimits,
    PeerInfo,
    peer_id_from_seed,
)

pytestmark = pytest.mark.network


def test_three_sites_exchange_messages_both_ways_including_8_mib() -> None:
    async def main() -> None:
        async with open_sites(["a", "b", "c"]) as sites:
            sent: dict[str, set[tuple[str, bytes]]] = {n: set() for n in sites}
            for i, (src, dst) in enumerate(
                [("a", "b"), ("b", "a"), ("a", "c"), ("c", "b"), ("b", "c"), ("c", "a")]
            ):
                data = payload(8 << 20 if src == "a" and dst == "b" else 1000 + i, i)
                await sites[src].send(dst, data)
                sent[dst].add((src, data))
            for name, site in sites.items():
                got = {await site.receive_from() for _ in sent[name]}
                assert got == sent[name]

    run(main)


def test_second_send_reuses_the_connection() -> None:
    async def main() -> None:
        async with open_sites(["a", "b"]) as sites:
            a, b = sites["a"], sites["b"]
            network = a.host.get_network()
            b_id = ID.from_base58(b.peer_id)
            await a.send("b", b"round 1")
            assert await b.receive() == b"round 1"
            before = list(network.get_connections(b_id))
            assert len(before) == 1
            await a.send("b", b"round 2")
            assert await b.receive() == b"round 2"
            assert network.get_connections(b_id) == before

    run(main)


def test_peer_outside_the_roster_is_refused_and_reported() -> None:
    async def main() -> None:
        rejections = Rejections()
        async with (
            open_site("a", roster("a"), on_reject=rejections) as a,
            # The outsider has a valid key and knows a, but a does not know it.
            open_site("mallory", roster("a", "mallory")) as mallory,
        ):
            mallory.update_peer("a", PeerInfo(a.peer_id, a.listen_addrs))
            with pytest.raises(TransportError):
                await mallory.send("a", b"let me in")
            await rejections.wait_for(mallory.peer_id, "not in the roster")
            assert {p for p, _ in rejections.items} == {mallory.peer_id}
            with trio.move_on_after(0.2):  # nothing may have been queued
                await a.receive()
                pytest.fail("an envelope from a non-member was delivered")

    run(main)


def test_garbage_from_a_member_is_dropped_and_later_messages_still_arrive() -> None:
    async def main() -> None:
        rejections = Rejections()
        touchy = dataclasses.replace(FAST, io_s=1.0)
        async with (
            open_site("a", roster("a", "b", "eve"), on_reject=rejections, timeouts=touchy) as a,
            open_site("b", roster("a", "b")) as b,
            raw_member_host("eve", a) as eve,
        ):
            introduce(a, b)
            hostile = [
                (b"\xff" * 12, "varint longer"),
                (encode_uvarint(2**40) + b"x" * 100, "limit is"),
                (encode_uvarint(MAX_BYTES + 1), "limit is"),
                (encode_uvarint(1000) + b"y" * 10, "ended after 10 of 1000"),
                (b"", "ended before a frame"),  # audited, logged at INFO
            ]
            for data, reason in hostile:
                await send_raw_and_close(eve, a, data)
                await rejections.wait_for("eve", reason)

            stalled = await open_protocol_stream(eve, a)
            await stalled.write(encode_uvarint(50) + b"z")  # then nothing, stream left open
            await rejections.wait_for("eve", "too slow")

            legit = await open_protocol_stream(eve, a)
            await legit.write(encode_frame(b"eve, well-formed"))
            assert await legit.read(1) == ACK_ACCEPTED
            await legit.close()
            assert await a.receive_from() == ("eve", b"eve, well-formed")

            await b.send("a", b"b is unaffected")
            assert await a.receive_from() == ("b", b"b is unaffected")
            assert len(rejections.items) == len(hostile) + 1

    run(main)


def test_oversized_send_is_refused_locally() -> None:
    async def main() -> None:
        async with open_sites(["a", "b"]) as sites:
            with pytest.raises(TransportError, match="limit"):
                await sites["a"].send("b", bytes(MAX_BYTES + 1))
            with pytest.raises(TransportError, match="not in the roster"):
                await sites["a"].send("zed", b"x")

    run(main)


def test_peer_that_restarts_on_a_new_port_is_reached_again() -> None:
    async def main() -> None:
        peers = roster("a", "b")
        async with open_site("a", peers) as a:
            async with open_site("b", peers) as b1:
                introduce(a, b1)
                await a.send("b", b"before")
                assert await b1.receive() == b"before"
            # b is down: the send fails (and libp2p now has b in its negative dial cache).
            with pytest.raises(TransportError):
                await a.send("b", b"while down")
            async with open_site("b", peers) as b2:
                assert b2.peer_id == b1.peer_id
                introduce(a, b2)
                await a.send("b", b"after")
                assert await b2.receive() == b"after"

    run(main)


def test_peer_that_restarts_on_the_same_address_is_redialled_without_help() -> None:
    async def main() -> None:
        peers = roster("a", "b")
        async with open_site("a", peers) as a:
            async with open_site("b", peers) as b1:
                introduce(a, b1)
                b_addrs = b1.listen_addrs  # a port the OS gave us via port 0
                await a.send("b", b"before")
                assert await b1.receive() == b"before"
            with pytest.raises(TransportError):
                await a.send("b", b"while down")
            # No update_peer: a must unblock the negative cache and drop the dead connection.
            async with open_site("b", peers, listen=b_addrs) as b2:
                await a.send("b", b"after")
                assert await b2.receive() == b"after"

    run(main)


def test_transport_peer_id_is_the_one_gossipmed_identity_derives() -> None:
    from gossipmed.consortium.crypto import Identity

    identity = Identity(ed25519_seed=seed("a"), x25519_secret=seed("a-box"))
    assert peer_id_from_seed(identity.ed25519_seed) == identity.peer_id

    async def main() -> None:
        async with open_site("a", roster("a")) as a:
            assert a.peer_id == identity.peer_id

    run(main)


def test_neighbours_sending_at_once_within_their_share_all_arrive() -> None:
    lanes = Libp2pLimits().streams_per_neighbour  # concurrent sends each neighbour may make

    async def main() -> None:
        async with open_sites(["a", "b", "c"]) as sites:
            expected: set[tuple[str, bytes]] = set()
            got: set[tuple[str, bytes]] = set()

            async def sender(src: str, lane: int) -> None:
                for i in range(5):
                    data = payload(300_000, 1000 * ord(src) + 10 * lane + i)
                    expected.add((src, data))
                    await sites[src].send("a", data)

            async with trio.open_nursery() as nursery:
                for src in ("b", "c"):
                    for lane in range(lanes):
                        nursery.start_soon(sender, src, lane)
                for _ in range(2 * lanes * 5):
                    got.add(await sites["a"].receive_from())
            assert got == expected

    run(main)


def test_an_honest_line_of_sites_rejects_nothing() -> None:
    async def main() -> None:
        peers = roster("a", "b", "c")
        edges = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
        rejections = {n: Rejections() for n in peers}
        async with AsyncExitStack() as stack:
            sites = {
                n: await stack.enter_async_context(
                    open_site(n, peers, neighbours=edges[n], on_reject=rejections[n])
                )
                for n in peers
            }
            introduce(*sites.values())
            for r in range(3):
                for src, dst in (("a", "b"), ("c", "b"), ("b", "a"), ("b", "c")):
                    await sites[src].send(dst, payload(1000, r))
                    assert await sites[dst].receive_from() == (src, payload(1000, r))
            assert sites["b"].connected("a") and sites["b"].connected("c")
            for site in sites.values():  # what libp2p runs every 30 s and on disconnects
                await site.host.get_network().auto_connector.maybe_connect()  # type: ignore[attr-defined]
            assert not sites["a"].connected("c")  # nothing dials a non-neighbour
        assert {n: r.items for n, r in rejections.items()} == {n: [] for n in peers}

    run(main)


def test_each_neighbour_has_its_own_share_of_the_inbox() -> None:
    async def main() -> None:
        rejections = Rejections()
        peers = roster("a", "b", "c")
        small = Libp2pLimits(queue_per_neighbour=2)
        async with (
            open_site("a", peers, on_reject=rejections, limits=small) as a,
            open_site("b", peers) as b,
            open_site("c", peers) as c,
        ):
            introduce(a, b, c)
            await b.send("a", b"b1")
            await b.send("a", b"b2")
            with pytest.raises(TransportError):  # nobody took b's two envelopes yet
                await b.send("a", b"b3")
            await rejections.wait_for("b", "receive queue full")
            await c.send("a", b"c1")  # b's full share does not touch c's
            assert [await a.receive_from() for _ in range(3)] == [
                ("b", b"b1"),
                ("b", b"b2"),
                ("c", b"c1"),
            ]
            await b.send("a", b"b4")  # b's share is free again
            assert await a.receive_from() == ("b", b"b4")

    run(main)


def test_a_member_that_is_not_a_neighbour_is_refused_at_the_stream_and_reported() -> None:
    async def main() -> None:
        rejections = Rejections()
        peers = roster("a", "b", "m")
        async with (
            open_site("a", peers, neighbours=["b"], on_reject=rejections) as a,
            open_site("b", peers, neighbours=["a"]) as b,
            open_site("m", peers, neighbours=["a"]) as m,  # m believes it has an edge to a
        ):
            introduce(a, b, m)
            with pytest.raises(TransportError):
                await m.send("a", b"from a member without an edge to a")
            await rejections.wait_for("m", "not a neighbour")
            with pytest.raises(TransportError, match="not a neighbour"):
                await a.send("m", b"a never sends to a non-neighbour")
            await b.send("a", b"b is a neighbour")
            assert await a.receive_from() == ("b", b"b is a neighbour")

            a.set_neighbours(["b", "m"])  # the graph changed (roster reload)
            await m.send("a", b"now an edge")
            assert await a.receive_from() == ("m", b"now an edge")
            a.set_neighbours(["b"])
            with pytest.raises(TransportError):
                await m.send("a", b"edge removed again")

    run(main)


def test_a_port_already_in_use_is_an_error_not_a_silently_shared_listener() -> None:
    async def main() -> None:
        peers = roster("a", "b")
        async with open_site("a", peers) as a:
            with pytest.raises(TransportError, match="in use"):
                async with open_site("b", peers, listen=a.listen_addrs):
                    pytest.fail("a second host listened on the same port")

    run(main)


def test_errors_raised_inside_the_context_come_out_unwrapped() -> None:
    class RoundFailed(Exception):
        pass

    async def main() -> None:
        with pytest.raises(RoundFailed):
            async with open_site("a", roster("a")):
                raise RoundFailed

    run(main)


def test_a_revoked_member_is_disconnected_and_refused() -> None:
    async def main() -> None:
        rejections = Rejections()
        peers = roster("a", "b")
        async with open_site("a", peers, on_reject=rejections) as a, open_site("b", peers) as b:
            introduce(a, b)
            await b.send("a", b"while a member")
            assert await a.receive() == b"while a member"
            a.remove_peer("b")
            with pytest.raises(TransportError):
                await b.send("a", b"after revocation")
            await rejections.wait_for(b.peer_id, "not in the roster")
            with pytest.raises(TransportError, match="not in the roster"):
                await a.send("b", b"to a revoked member")

    run(main)
