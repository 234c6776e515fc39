"""Helpers for the libp2p transport tests: sites on 127.0.0.1 port 0, raw hosts and raw Noise
handshakes that an attacker would use, and an on_reject recorder tests can wait on."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

import multiaddr
import trio
from libp2p.abc import IHost, INetStream, ISecureConn
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PERMANENT_ADDR_TTL
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.upgrader import TransportUpgrader

from node.net.libp2p.transport import (
    PROTOCOL_ID,
    Libp2pLimits,
    Libp2pTimeouts,
    Libp2pTransport,
    PeerInfo,
    build_host,
    key_pair_from_seed,
    peer_id_from_seed,
)

LISTEN = ["/ip4/127.0.0.1/tcp/0"]
MAX_BYTES = 16 << 20
TEST_BOUND_S = 30
FAST = Libp2pTimeouts(
    dial_s=3,
    stream_open_s=3,
    io_s=3,
    message_s=20,
    send_attempts=3,
    backoff_initial_s=0.05,
    backoff_max_s=0.5,
    negotiate_s=3,
    handshake_s=3,
)


def seed(name: str) -> bytes:
    return hashlib.sha256(f"gossipmed-test-site-{name}".encode()).digest()


def roster(*names: str) -> dict[str, PeerInfo]:
    return {n: PeerInfo(peer_id_from_seed(seed(n))) for n in names}


class Rejections:
    """on_reject callback that tests can wait on."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self._changed = trio.Event()

    def __call__(self, peer_id: str, reason: str) -> None:
        self.items.append((peer_id, reason))
        self._changed.set()
        self._changed = trio.Event()

    def count(self, reason_part: str) -> int:
        return sum(reason_part in r for _, r in self.items)

    async def wait_for(self, peer_id: str, reason_part: str) -> None:
        while not any(p == peer_id and reason_part in r for p, r in self.items):
            await self._changed.wait()

    async def wait_count(self, reason_part: str, n: int) -> None:
        while self.count(reason_part) < n:
            await self._changed.wait()


@asynccontextmanager
async def open_site(
    name: str,
    members: Mapping[str, PeerInfo],
    *,
    neighbours: Collection[str] | None = None,
    on_reject: Rejections | None = None,
    timeouts: Libp2pTimeouts = FAST,
    limits: Libp2pLimits | None = None,
    listen: list[str] = LISTEN,
) -> AsyncIterator[Libp2pTransport]:
    """A site whose neighbours are, unless given, all the other members."""
    async with Libp2pTransport.open(
        local_name=name,
        seed=seed(name),
        members=members,
        neighbours=[m for m in members if m != name] if neighbours is None else neighbours,
        listen=listen,
        max_bytes=MAX_BYTES,
        on_reject=on_reject,
        timeouts=timeouts,
        limits=limits,
    ) as transport:
        yield transport


def introduce(*sites: Libp2pTransport) -> None:
    """Tell every site the real (port-0 resolved) addresses of every other one."""
    for site in sites:
        for other in sites:
            if other is not site:
                site.update_peer(other.local_name, PeerInfo(other.peer_id, other.listen_addrs))


@asynccontextmanager
async def open_sites(names: list[str]) -> AsyncIterator[dict[str, Libp2pTransport]]:
    peers = roster(*names)
    async with AsyncExitStack() as stack:
        sites = {n: await stack.enter_async_context(open_site(n, peers)) for n in names}
        introduce(*sites.values())
        yield sites


def run(test: Callable[[], Awaitable[None]], *, bound_s: float = TEST_BOUND_S) -> None:
    async def bounded() -> None:
        with trio.fail_after(bound_s):
            await test()

    trio.run(bounded)


def payload(n: int, salt: int) -> bytes:
    return hashlib.shake_256(f"{salt}".encode()).digest(n)


@asynccontextmanager
async def raw_member_host(name: str, target: Libp2pTransport) -> AsyncIterator[IHost]:
    """A bare libp2p host with a roster member's key, to write arbitrary bytes on the protocol."""
    host = build_host(key_pair_from_seed(seed(name)), FAST)
    async with host.run([multiaddr.Multiaddr(a) for a in LISTEN]):
        target_id = ID.from_base58(target.peer_id)
        addrs = [multiaddr.Multiaddr(a) for a in target.listen_addrs]
        host.get_peerstore().add_addrs(target_id, addrs, PERMANENT_ADDR_TTL)  # it may redial
        await host.get_network().dial_peer(target_id)
        yield host


async def open_protocol_stream(host: IHost, target: Libp2pTransport) -> INetStream:
    return await host.new_stream(ID.from_base58(target.peer_id), [PROTOCOL_ID])


async def send_raw_and_close(host: IHost, target: Libp2pTransport, data: bytes) -> None:
    stream = await open_protocol_stream(host, target)
    await stream.write(data)
    await stream.close()


def upgrader_for(key_pair: KeyPair) -> TransportUpgrader:
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    return TransportUpgrader(
        {TProtocol(NOISE_PROTOCOL_ID): noise}, {TProtocol(YAMUX_PROTOCOL_ID): Yamux}
    )


async def noise_handshake(
    target: Libp2pTransport, key_pair: KeyPair, *, source: str
) -> tuple[TransportUpgrader, ISecureConn]:
    """Dial `target` from the loopback address `source` and run Noise as `key_pair`.

    libp2p's own dialer cannot choose a source address; this is what an outsider with a
    throwaway key (or a member behind a shared address) does on the wire.
    """
    addr = multiaddr.Multiaddr(target.listen_addrs[0])
    stream = await trio.open_tcp_stream(
        str(addr.value_for_protocol("ip4")),
        int(addr.value_for_protocol("tcp")),
        local_address=source,
    )
    raw = RawConnection(TrioTCPStream(stream), True)
    upgrader = upgrader_for(key_pair)
    try:
        secured = await upgrader.upgrade_security(raw, True, ID.from_base58(target.peer_id))
    except BaseException:
        with trio.CancelScope(shield=True):
            await raw.close()
        raise
    return upgrader, secured
