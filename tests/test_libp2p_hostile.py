"""Issue #13 findings 2 and 4 against the real transport on loopback.

Finding 2: an outsider must not close a site to new connections (libp2p 0.8.1 kept an
inbound slot per upgraded connection until the swarm stopped: 250 handshakes with throwaway
keys locked everyone out), outsiders are throttled per address, members never are.
Finding 4: a member, neighbour or not, must not make a site deaf with slow streams.

Outsiders dial from 127.0.0.2 / 127.0.0.3 (Linux routes all of 127.0.0.0/8 to loopback).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import multiaddr
import pytest
import trio
import trio.testing
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p_support import (
    FAST,
    Rejections,
    introduce,
    noise_handshake,
    open_protocol_stream,
    open_site,
    payload,
    raw_member_host,
    roster,
    run,
    seed,
)

from node.net.framing import encode_uvarint
from node.net.libp2p.transport import Libp2pLimits, Libp2pTransport, PeerInfo, key_pair_from_seed

pytestmark = [pytest.mark.network, pytest.mark.slow]

LIBP2P_INBOUND_SLOTS = 250  # py-libp2p 0.8.1: max_connections 300 - min_connections 50


async def outsider_handshakes(target: Libp2pTransport, n: int, *, source: str) -> int:
    """`n` connection attempts with fresh keys; returns how many got through Noise."""
    completed = 0
    for _ in range(n):
        try:
            _, secured = await noise_handshake(target, create_new_key_pair(), source=source)
        except Exception:
            continue  # refused before the handshake
        completed += 1
        await secured.close()
    return completed


def test_300_outsider_handshakes_do_not_close_the_site_to_a_member_that_moved() -> None:
    # Throttle off: every one of the 300 gets a full handshake, more than libp2p's 250 slots.
    unthrottled = Libp2pLimits(
        outsider_burst=1000, handshakes_per_address=1000, handshakes=1000, reports_burst=1000
    )

    async def main() -> None:
        rejections = Rejections()
        peers = roster("v", "m")
        async with open_site("v", peers, on_reject=rejections, limits=unthrottled) as v:
            async with open_site("m", peers) as m1:
                introduce(v, m1)
                await m1.send("v", b"before the attack")
                assert await v.receive_from() == ("m", b"before the attack")

            n = 300
            assert n > LIBP2P_INBOUND_SLOTS
            assert await outsider_handshakes(v, n, source="127.0.0.2") == n
            await rejections.wait_count("not in the roster", n)
            await trio.testing.wait_all_tasks_blocked()
            stats = v.stats()
            assert stats.outsiders_closed == n
            assert stats.handshakes_in_progress == 0
            assert stats.established == 0  # m1 is gone; no outsider was ever registered

            # m restarts on a new port and v is not told: only m's own dial can deliver.
            async with open_site("m", peers) as m2:
                m2.update_peer("v", PeerInfo(v.peer_id, v.listen_addrs))
                await m2.send("v", b"after 300 outsiders")
                assert await v.receive_from() == ("m", b"after 300 outsiders")
                assert v.stats().established == 1

    run(main, bound_s=120)


def test_a_member_connection_gives_its_slot_back_when_it_closes() -> None:
    """libp2p kept the slot of every registered connection until the swarm stopped, so a member
    whose link flaps (or a member reconnecting on purpose) used them all up."""

    async def main() -> None:
        peers = roster("v", "m", "b")
        async with open_site("v", peers) as v, open_site("b", peers) as b:
            introduce(v, b)
            v_id = ID.from_base58(v.peer_id)
            n = LIBP2P_INBOUND_SLOTS + 10
            for _ in range(n):
                upgrader, secured = await noise_handshake(
                    v, key_pair_from_seed(seed("m")), source="127.0.0.1"
                )
                await upgrader.upgrade_connection(secured, v_id)  # registered by v
                await secured.close()  # the link drops
            await trio.testing.wait_all_tasks_blocked()
            assert v.stats().established == 0
            assert v.stats().handshakes_in_progress == 0
            await b.send("v", b"a new connection is still accepted")
            assert await v.receive_from() == ("b", b"a new connection is still accepted")

    run(main, bound_s=120)


def test_outsiders_are_throttled_per_address_before_any_handshake() -> None:
    limits = Libp2pLimits()

    async def main() -> None:
        rejections = Rejections()
        peers = roster("v", "n")
        async with (
            open_site("v", peers, on_reject=rejections, limits=limits) as v,
            open_site("n", peers) as n,
        ):
            introduce(v, n)
            start = trio.current_time()
            completed = await outsider_handshakes(v, 300, source="127.0.0.3")
            elapsed = trio.current_time() - start
            await trio.testing.wait_all_tasks_blocked()
            stats = v.stats()
            allowed = limits.outsider_burst + limits.outsider_per_s * elapsed + 1
            assert completed == stats.outsiders_closed <= allowed
            assert stats.refused_before_handshake == 300 - completed
            assert stats.handshakes_in_progress == 0
            # The audit sees the attack without one line per attempt.
            reports = [r for p, r in rejections.items if p == "127.0.0.3"]
            assert 1 <= len(reports) <= limits.reports_burst + limits.reports_per_s * elapsed + 1
            assert len(rejections.items) < 300 / 4

            # A member at another address is not affected in any way.
            await n.send("v", b"member at 127.0.0.1")
            assert await v.receive_from() == ("n", b"member at 127.0.0.1")

    run(main, bound_s=120)


async def drained(stream: trio.SocketStream) -> None:
    """Read until the site closes the connection."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass  # reset rather than closed: closed all the same


def tcp_target(site: Libp2pTransport) -> tuple[str, int]:
    addr = multiaddr.Multiaddr(site.listen_addrs[0])
    return str(addr.value_for_protocol("ip4")), int(addr.value_for_protocol("tcp"))


def test_stalled_handshakes_hold_a_slot_for_a_bounded_time_and_count_against_the_address() -> None:
    timeouts = dataclasses.replace(FAST, handshake_s=1.0, first_byte_s=0.5)
    limits = Libp2pLimits()

    async def main() -> None:
        async with open_site("v", roster("v"), timeouts=timeouts, limits=limits) as v:
            host, port = tcp_target(v)
            stalled = []
            for _ in range(limits.handshakes_per_address - 1):  # connect, then say nothing
                stalled.append(await trio.open_tcp_stream(host, port, local_address="127.0.0.3"))
            talker = await trio.open_tcp_stream(host, port, local_address="127.0.0.3")
            await talker.send_all(b"/")  # one byte, then nothing: bounded by handshake_s
            await trio.testing.wait_all_tasks_blocked()
            assert v.stats().handshakes_in_progress == limits.handshakes_per_address

            # The address is at its cap: a newcomer takes the oldest silent one's slot.
            one_more = await trio.open_tcp_stream(host, port, local_address="127.0.0.3")
            await drained(stalled[0])
            assert v.stats().evicted_before_handshake == 1
            assert v.stats().refused_before_handshake == 0

            for stream in (*stalled, talker, one_more):
                await drained(stream)  # closed by v: silent ones after first_byte_s
            await trio.testing.wait_all_tasks_blocked()
            stats = v.stats()
            assert stats.failed_handshakes == limits.handshakes_per_address + 1
            assert stats.handshakes_in_progress == 0
            for stream in (*stalled, talker, one_more):
                await stream.aclose()

    run(main)


async def silent_flood(target: Libp2pTransport, *, per_s: float, source: str) -> None:
    """Open `per_s` TCP connections a second from `source` that never send a byte; each is
    kept open until the target closes it. Runs until cancelled."""
    host, port = tcp_target(target)

    async def hold() -> None:
        try:
            stream = await trio.open_tcp_stream(host, port, local_address=source)
        except OSError:
            return
        async with stream:
            await drained(stream)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in itertools.count():
            await trio.sleep_until(start + i / per_s)
            nursery.start_soon(hold)


def test_a_member_behind_an_address_flooding_silent_connections_still_delivers() -> None:
    """Issue #20 finding 5: 20 silent connections from a member's own address (a hospital NAT)
    held every handshake slot that address may use, and the member never got in."""
    limits = Libp2pLimits()

    async def main() -> None:
        peers = roster("v", "m")
        async with open_site("v", peers) as v, open_site("m", peers) as m:
            introduce(v, m)  # m's roster address: 127.0.0.1, the flood's address too
            async with trio.open_nursery() as nursery:
                flood = functools.partial(silent_flood, v, per_s=200, source="127.0.0.1")
                nursery.start_soon(flood)
                while v.stats().handshakes_in_progress < limits.member_handshakes_per_address:
                    await trio.sleep(0.05)  # the address's slots are all held by the flood
                await m.send("v", b"through the flood")  # at most FAST.send_attempts (3) tries
                assert await v.receive_from() == ("m", b"through the flood")
                assert v.stats().evicted_before_handshake > 0
                nursery.cancel_scope.cancel()

    run(main, bound_s=60)


def test_a_member_sharing_an_address_with_outsiders_is_never_refused() -> None:
    async def main() -> None:
        rejections = Rejections()
        peers = roster("v", "m")
        async with open_site("v", peers, on_reject=rejections) as v:
            # m's roster entry says it is behind 127.0.0.2, like hospitals behind one NAT.
            v.update_peer("m", PeerInfo(peers["m"].peer_id, ["/ip4/127.0.0.2/tcp/9"]))
            n = 5 * Libp2pLimits().outsider_burst
            assert await outsider_handshakes(v, n, source="127.0.0.2") == n
            await trio.testing.wait_all_tasks_blocked()
            assert v.stats().refused_before_handshake == 0

            upgrader, secured = await noise_handshake(
                v, key_pair_from_seed(seed("m")), source="127.0.0.2"
            )
            muxed = await upgrader.upgrade_connection(secured, ID.from_base58(v.peer_id))
            await trio.testing.wait_all_tasks_blocked()
            assert v.connected("m")
            assert v.stats().established == 1
            await muxed.close()

    run(main, bound_s=60)


async def trickle_streams(
    host: IHost, target: Libp2pTransport, *, lanes: int, under_way: trio.Event
) -> None:
    """Slow-sender attack: `lanes` streams at once, each announcing a 100 kB frame and then
    sending one byte every 2 s; a stream that dies is reopened. Sets `under_way` once every
    lane wrote its first bytes or was refused twice. Runs until cancelled."""
    tries = 0

    def tried(weight: int) -> None:
        nonlocal tries
        tries += weight
        if tries >= 2 * lanes:
            under_way.set()

    async def lane() -> None:
        while True:
            try:
                stream = await open_protocol_stream(host, target)
                await stream.write(encode_uvarint(100_000))
                tried(2)
                while True:
                    await trio.sleep(2.0)
                    await stream.write(b"x")
            except Exception:
                tried(1)
                await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        for _ in range(lanes):
            nursery.start_soon(lane)


def test_slow_senders_cannot_make_a_site_deaf_to_its_honest_neighbours() -> None:
    # One second of grace, then at least 64 KiB/s: the attackers' 3-byte prefix and then a
    # byte every 2 s is far below, an honest 256 kB update on loopback far above.
    timeouts = dataclasses.replace(FAST, rate_grace_s=1.0, min_rate_bps=64 * 1024.0)
    rounds = 6

    async def main() -> None:
        rejections = Rejections()
        peers = roster("v", "h1", "h2", "z", "n")
        edges = {"v": ["h1", "h2", "z"], "h1": ["v"], "h2": ["v"]}
        async with (
            open_site(
                "v", peers, neighbours=edges["v"], on_reject=rejections, timeouts=timeouts
            ) as v,
            open_site("h1", peers, neighbours=edges["h1"]) as h1,
            open_site("h2", peers, neighbours=edges["h2"]) as h2,
            raw_member_host("z", v) as z,  # a neighbour gone bad
            raw_member_host("n", v) as n,  # a member with no edge to v
            trio.open_nursery() as attack,
        ):
            introduce(v, h1, h2)
            under_way = {"z": trio.Event(), "n": trio.Event()}
            for name, host in (("z", z), ("n", n)):
                attack.start_soon(
                    functools.partial(trickle_streams, host, v, lanes=5, under_way=under_way[name])
                )
            for event in under_way.values():
                await event.wait()

            for r in range(rounds):
                updates = {"h1": payload(256_000, 10 * r + 1), "h2": payload(256_000, 10 * r + 2)}
                got: set[tuple[str, bytes]] = set()
                with trio.fail_after(5):  # well under a round timeout
                    async with trio.open_nursery() as round_:
                        for site in (h1, h2):
                            round_.start_soon(site.send, "v", updates[site.local_name])
                        for _ in updates:
                            got.add(await v.receive_from())
                assert got == set(updates.items()), f"round {r}: heard {sorted(s for s, _ in got)}"

            await rejections.wait_for("z", "below the minimum rate")  # its slots taken back
            attack.cancel_scope.cancel()
        assert any(p == "z" and "concurrent" in r for p, r in rejections.items)
        assert any(p == "n" and "not a neighbour" in r for p, r in rejections.items)

        assert not any(p in ("h1", "h2") for p, _ in rejections.items), rejections.items

    run(main, bound_s=90)
