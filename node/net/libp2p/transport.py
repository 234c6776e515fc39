"""`Transport` over py-libp2p for one site daemon, hardened against outsiders and members.

Interface (the daemon's side):

    async with Libp2pTransport.open(local_name=..., seed=..., members=..., neighbours=...,
                                    listen=[...], max_bytes=..., on_reject=..., timeouts=...,
                                    limits=...) as t:
        await t.send(site, envelope)           # site must be a current neighbour
        site, envelope = await t.receive_from()  # site of the Noise-authenticated sender
        t.connected(site); t.set_neighbours(names); t.update_peer(site, info)
        t.remove_peer(site); t.listen_addrs; t.peer_id; t.stats(); t.link(site)

`members` are all active roster members (connections from them are kept, never throttled);
`neighbours`, a subset, are the only members whose update streams are accepted. `on_reject`
is called as `on_reject(who, reason)` for every refused connection or stream: `who` is the
site name for a member, the peer ID for an authenticated outsider and the remote IP address
for a connection refused before its handshake. It is rate limited per `who` (see
`Libp2pLimits.reports_*`), so the daemon can audit every call.

Who dials (`PeerInfo.dial`, from the consortium file): by default a site dials a neighbour
when it has something to send. A site that is unreachable (`DIAL_KEEP_OPEN` for each of its
neighbours) dials every neighbour at start, keeps the connections open and redials with
backoff; its neighbours (`DIAL_NEVER` for it) never dial it and send over its connection
(node.net.libp2p.links).

Wire protocol `/gossipmed/update/1.0.0`: the sender opens a stream, writes
`uvarint(len) || envelope`, and waits for one ack byte (0x00) that the receiver writes only
after the envelope passed the neighbour, size and rate checks and was queued. Anything else
(reset, EOF, timeout) is a failed send; the sender disconnects, redials with exponential
backoff and sends again (envelopes are replay-guarded, so a duplicate after a lost ack is
harmless). Connections are kept and reused across rounds (every libp2p dial waits ~250 ms),
a failed dial is followed by `unblock_peer` (libp2p's 60 s negative cache), a dead
connection by `host.disconnect` before the redial; nothing here blocks the trio loop (yamux
resets a stream after 5 s without reads).

What a peer can still cost a site, with the default limits:
- an outsider (valid key, not in the roster): its connection is closed right after the
  Noise handshake, before yamux, and never registered in the swarm. Per address (IPv4, or
  IPv6 /64) it gets 10 handshakes, then one per 2 s; past that its connections are closed at
  accept, before any cryptography. Measured (scripts/bench_outsiders.py, 300 connections
  from 127.0.0.2, 2-core shared machine at load ~6, 2026-12-01): 1.8 ms of the site's CPU
  per outsider handshake, 0.37 ms per connection overall once throttled (10 handshakes,
  290 refused at accept). Connections refused at accept still cost that much Python, so a
  flood of thousands per second is the firewall's job. At most 4 handshakes per address
  and 64 overall are in flight, each for at most `handshake_s` = 10 s: an attacker with
  many addresses can delay members whose address we do not know yet; members at roster
  addresses or addresses they connected from before have 32 reserved handshake slots (16
  per address) and are never refused for what came from their address before. A connection
  that sends nothing is closed after `first_byte_s` = 1 s, and at any cap a newcomer takes
  the slot of the oldest connection that has sent nothing (then of the oldest
  unauthenticated one; a non-member address never displaces a member address's), so silent
  connections from a member's own address (a shared NAT) cannot keep it out. Memory: one
  handshake's buffers per slot (Noise frames <= 64 KiB). The address table holds 4096
  addresses; an attacker with more than that gets a fresh bucket per forgotten address.
- a member that is not a neighbour: every stream it opens is reset before protocol
  negotiation and reported; 32 refusals in a burst (then 2/s) disconnect it. It may
  reconnect (members are not throttled), which costs it a handshake per cycle. Memory: its
  yamux buffers, bounded by the flow-control windows it was granted (py-libp2p does not
  enforce them; node.net.libp2p.guard does).
- a neighbour: at most 2 update streams (+2 for identify/ping) at once, each dropped when its
  average rate falls below 16 KiB/s after 10 s (so a byte-every-few-seconds sender holds
  its own slots for ~10 s) or when it exceeds `message_s`. Memory per neighbour:
  queue_per_neighbour (4) x max_bytes queued, plus per open update stream 2 x max_bytes
  (body buffer and its final copy) and at most one yamux window (<= 16 MiB). Another
  neighbour's slots, queue share and time are never touched. What a signed envelope does
  to the model is the envelope's and the mixing rule's business, not the transport's.
- every `on_reject` report: at most 20 per peer or address, then one per 5 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PERMANENT_ADDR_TTL

from gossipmed.errors import ConfigError, TransportError
from node.net.libp2p.buckets import RejectCallback, Reporter
from node.net.libp2p.config import (
    ACK_ACCEPTED,
    PROTOCOL_ID,
    Libp2pLimits,
    Libp2pTimeouts,
    PeerInfo,
    key_pair_from_seed,
    peer_id_from_seed,
)
from node.net.libp2p.gate import GateStats, InboundGate
from node.net.libp2p.guard import MemberGuard
from node.net.libp2p.host import build_host, refuse_ports_in_use
from node.net.libp2p.inbound import Inbox, UpdateReceiver
from node.net.libp2p.links import LinkInfo, Links
from node.net.libp2p.outbound import Outbound
from node.net.libp2p.roster import Roster

__all__ = [
    "ACK_ACCEPTED",
    "PROTOCOL_ID",
    "Libp2pLimits",
    "Libp2pTimeouts",
    "Libp2pTransport",
    "LinkInfo",
    "PeerInfo",
    "build_host",
    "key_pair_from_seed",
    "peer_id_from_seed",
]


class Libp2pTransport:
    """Transport for one site daemon; create it with `async with Libp2pTransport.open(...)`."""

    def __init__(
        self,
        *,
        local_name: str,
        key_pair: KeyPair,
        members: Mapping[str, PeerInfo],
        neighbours: Collection[str],
        max_bytes: int,
        on_reject: RejectCallback | None,
        timeouts: Libp2pTimeouts,
        limits: Libp2pLimits,
    ) -> None:
        if max_bytes < 1:
            raise ConfigError("max_bytes must be >= 1")
        self._local_name = local_name
        self._max_bytes = max_bytes
        self._roster = Roster()
        for site, info in members.items():
            if site != local_name:
                self._roster.set(site, info)
        self._roster.set_neighbours(neighbours)
        self._host = build_host(key_pair, timeouts)
        self._reporter = Reporter(
            on_reject,
            burst=limits.reports_burst,
            per_s=limits.reports_per_s,
            table=limits.address_table,
            clock=trio.current_time,
        )
        self._inbox = Inbox(per_site=limits.queue_per_neighbour)
        network = self._swarm()
        self._gate = InboundGate(
            swarm=network,
            roster=self._roster,
            reporter=self._reporter,
            limits=limits,
            timeouts=timeouts,
        )
        self._gate.install()
        MemberGuard(
            swarm=network,
            roster=self._roster,
            reporter=self._reporter,
            limits=limits,
            disconnect=self._spawn_drop,
        ).install()
        self._receiver = UpdateReceiver(
            roster=self._roster,
            inbox=self._inbox,
            reporter=self._reporter,
            limits=limits,
            timeouts=timeouts,
            max_bytes=max_bytes,
        )
        self._links = Links(
            host=self._host,
            roster=self._roster,
            timeouts=timeouts,
            dial=self._connect,
            forget=self._forget,
        )
        self._links.install()
        self._outbound = Outbound(
            host=self._host, timeouts=timeouts, wait_connected=self._links.wait_connected
        )
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._host_done = trio.Event()
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        local_name: str,
        seed: bytes,
        members: Mapping[str, PeerInfo],
        neighbours: Collection[str],
        listen: Sequence[str],
        max_bytes: int,
        on_reject: RejectCallback | None = None,
        timeouts: Libp2pTimeouts | None = None,
        limits: Libp2pLimits | None = None,
    ) -> AsyncIterator[Libp2pTransport]:
        """Start the host listening on `listen` and yield the transport; closes on exit.
        `members` are the other active roster members, `neighbours` the graph neighbours
        among them (the only ones whose update streams are accepted)."""
        try:
            listen_addrs = [multiaddr.Multiaddr(a) for a in listen]
        except Exception as exc:
            raise ConfigError(f"invalid listen multiaddr in {list(listen)!r}: {exc}") from exc
        transport = cls(
            local_name=local_name,
            key_pair=key_pair_from_seed(seed),
            members=members,
            neighbours=neighbours,
            max_bytes=max_bytes,
            on_reject=on_reject,
            timeouts=timeouts or Libp2pTimeouts(),
            limits=limits or Libp2pLimits(),
        )
        refuse_ports_in_use(listen_addrs)
        try:
            async with trio.open_nursery() as nursery:
                transport._nursery = nursery
                await nursery.start(transport._run_host, listen_addrs)
                transport._links.start(nursery)
                try:
                    listening = transport.listen_addrs
                    if len(listening) < len(listen_addrs):  # libp2p only logs a failed listen
                        raise TransportError(
                            f"could not listen on all of {[str(a) for a in listen_addrs]}; "
                            f"listening on {listening}"
                        )
                    yield transport
                finally:
                    await transport.aclose()
        except BaseExceptionGroup as group:
            # Hand the caller's own exception back unwrapped (e.g. a GossipmedError raised in
            # the `async with` body) instead of a group created by our private nursery.
            inner: BaseException = group
            while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
                inner = inner.exceptions[0]
            if inner is group:
                raise
            raise inner from inner.__cause__  # keep its cause, hide the group as context

    async def _run_host(
        self,
        listen_addrs: list[multiaddr.Multiaddr],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,  # trio-stubs (via libp2p) lack TaskStatus
    ) -> None:
        try:
            async with self._host.run(listen_addrs):
                self._host.set_stream_handler(PROTOCOL_ID, self._receiver.handle)
                self._sync_peerstore()
                task_status.started()
                try:
                    await self._stop.wait()
                finally:
                    # Leaving host.run() alone leaves the TCP listener accepting (0.8.1).
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await self._host.close()
        finally:
            self._host_done.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._links.stop()
        self._inbox.close()
        self._stop.set()
        with trio.CancelScope(shield=True):
            await self._host_done.wait()

    # ---- identity, roster, state -----------------------------------------------------

    @property
    def local_name(self) -> str:
        return self._local_name

    @property
    def peer_id(self) -> str:
        return self._host.get_id().to_base58()

    @property
    def listen_addrs(self) -> list[str]:
        """Actual listening multiaddrs (port 0 resolved), without the /p2p suffix."""
        return [str(a) for a in self._host.get_transport_addrs()]

    @property
    def host(self) -> IHost:
        """The underlying libp2p host, for inspection (tests, status); do not reconfigure."""
        return self._host

    @property
    def neighbours(self) -> frozenset[str]:
        return self._roster.neighbours

    def stats(self) -> GateStats:
        """Inbound connection counters (handshakes in flight, established, refused)."""
        return self._gate.stats()

    def link(self, site: str) -> LinkInfo | None:
        """The connection to member `site` and who dials it, for status pages."""
        return self._links.info(site)

    async def wait_link(self, site: str, condition: Callable[[LinkInfo], bool]) -> LinkInfo:
        """Wait (unbounded: the caller bounds it) until `site`'s link satisfies `condition`."""

        def holds() -> bool:
            info = self._links.info(site)
            return info is not None and condition(info)

        await self._links.wait_until(holds)
        info = self._links.info(site)
        assert info is not None
        return info

    def _swarm(self) -> Any:
        # unblock_peer and the methods our gate replaces live on Swarm, not on INetwork.
        return self._host.get_network()

    def site_for_peer(self, peer_id: str) -> str | None:
        try:
            return self._roster.site_of(ID.from_base58(peer_id))
        except Exception:
            return None

    def connected(self, site: str) -> bool:
        """Whether an open connection to member `site` exists (either direction)."""
        info = self._roster.by_site.get(site)
        if info is None:
            return False
        conns = self._swarm().get_connections(ID.from_base58(info.peer_id))
        return any(not c.is_closed for c in conns)

    def set_neighbours(self, names: Collection[str]) -> None:
        """Graph neighbours changed: only these members' update streams are accepted now."""
        self._roster.set_neighbours(names)
        self._links.reconcile()

    def update_peer(self, site: str, info: PeerInfo) -> None:
        """Add a member or change its addresses (e.g. it restarted on a new port)."""
        replaced = self._roster.set(site, info)
        if replaced is not None:
            self._spawn_drop(replaced)
        self._set_addrs(ID.from_base58(info.peer_id), info.addrs)
        self._links.reconcile()

    def remove_peer(self, site: str) -> None:
        """Revoke a member: its connections are closed and its streams refused."""
        pid = self._roster.remove(site)
        self._links.reconcile()
        if pid is not None:
            self._host.get_peerstore().clear_addrs(pid)
            self._spawn_drop(pid)

    def _sync_peerstore(self) -> None:
        for info in self._roster.by_site.values():
            self._set_addrs(ID.from_base58(info.peer_id), info.addrs)

    def _set_addrs(self, pid: ID, addrs: Sequence[str]) -> None:
        # Replace, not merge: the swarm dials one TCP address per peer, possibly a stale one.
        store = self._host.get_peerstore()
        store.clear_addrs(pid)
        if addrs:
            store.add_addrs(pid, [multiaddr.Multiaddr(a) for a in addrs], PERMANENT_ADDR_TTL)
        self._swarm().unblock_peer(pid)

    async def _connect(self, pid: ID) -> None:
        await self._outbound.connect(pid)

    async def _forget(self, pid: ID) -> None:
        await self._outbound.forget(pid)

    def _spawn_drop(self, pid: ID) -> None:
        if self._nursery is not None and not self._closed:
            self._nursery.start_soon(self._outbound.forget, pid)

    # ---- sending ---------------------------------------------------------------------

    async def send(self, recipient: str, data: bytes) -> None:
        if self._closed:
            raise TransportError("transport is closed")
        info = self._roster.by_site.get(recipient)
        if info is None:
            raise TransportError(f"{recipient!r} is not in the roster")
        if not self._roster.is_neighbour(recipient):
            raise TransportError(f"{recipient!r} is not a neighbour")
        if len(data) > self._max_bytes:
            raise TransportError(
                f"message of {len(data)} bytes exceeds the {self._max_bytes}-byte limit"
            )
        await self._outbound.send(recipient, ID.from_base58(info.peer_id), data, dial=info.dial)

    # ---- receiving -------------------------------------------------------------------

    async def receive(self) -> bytes:
        _, data = await self.receive_from()
        return data

    async def receive_from(self) -> tuple[str, bytes]:
        """Next inbound envelope and the site name of its Noise-authenticated sender."""
        return await self._inbox.get()
