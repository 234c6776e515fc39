"""Inbound connections: who gets a Noise handshake, and a slot that ends with the connection.

py-libp2p 0.8.1's `Swarm._handle_inbound_connection` takes one of 250 inbound slots and, after
a successful upgrade, keeps it until the swarm stops (`await self.manager.wait_finished()`),
even when the connection is long closed: 250 handshakes with throwaway keys closed a site to
every new inbound connection, members included. `InboundGate.install` replaces that method on
our swarm instance (the TCP listener calls it by attribute, per connection) with `_handle`:

1. admission, before any byte is read (node.net.libp2p.admission): a connection from an
   address known to be a member's takes a slot in a reserved pool (or the general one when
   that is full), with at most `member_handshakes_per_address` in flight from its address;
   any other address needs a slot in the general pool, fewer than `handshakes_per_address`
   handshakes in flight from its address, and a non-empty outsider bucket for its address.
   When the caps are reached the newcomer takes the slot of a waiting connection, silent
   ones first, then the oldest; only an empty bucket or no displaceable connection refuses
   it, closed at once (no handshake). The per-address caps are on concurrency, not rate: a
   member address is never refused for what came from it before.
2. the first byte must arrive within `first_byte_s` (an honest dialer speaks at once), then
   the Noise handshake (then yamux), bounded by `handshake_s`. The peer ID is known after
   Noise: a peer outside the roster is closed right there (never muxed, never registered in
   the swarm) and spends a token of its address's bucket, as does a failed or timed-out
   handshake. Members never spend tokens and member addresses are never refused.
3. the handshake slot is released when the handshake ends; the task then waits for the
   connection to close (trio closes the socket when the listener's handler returns) and
   counts it in `established` until then.

Member addresses are the IP addresses in members' roster multiaddrs plus the last few
addresses each member authenticated from. A member that shares an address with an outsider
flooding us, and whose address is in neither, is refused with that address until the
bucket refills (documented in the transport's cost model). A silent or evicted connection
counts as a failed handshake and spends a token of its address's bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.io.abc import ReadWriteCloser
from libp2p.network.connection.raw_connection import RawConnection

from node.net.libp2p.admission import Admission, Pending
from node.net.libp2p.buckets import Reporter
from node.net.libp2p.config import Libp2pLimits, Libp2pTimeouts
from node.net.libp2p.roster import Roster, address_key

# Under the transport's logger, so one level setting (the daemon's) covers all of it.
log = logging.getLogger("node.net.libp2p.transport").getChild("gate")

CLOSE_WAIT_S = 1.0
UNKNOWN_ADDRESS = "?"  # a transport without IP addresses: one shared (untrusted) key


@dataclass(frozen=True)
class GateStats:
    """Counters for tests and status pages."""

    handshakes_in_progress: int
    member_handshakes_in_progress: int
    established: int
    outsiders_closed: int
    failed_handshakes: int
    refused_before_handshake: int
    evicted_before_handshake: int
    addresses_tracked: int


async def close_quietly(conn: Any) -> None:
    """Close a raw/secured/muxed connection without letting it stall us or raise."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_WAIT_S):
        try:
            await conn.close()
        except Exception as exc:
            log.debug("closing %s: %s: %s", type(conn).__name__, type(exc).__name__, exc)


class InboundGate:
    def __init__(
        self,
        *,
        swarm: Any,
        roster: Roster,
        reporter: Reporter,
        limits: Libp2pLimits,
        timeouts: Libp2pTimeouts,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._swarm = swarm
        self._roster = roster
        self._reporter = reporter
        self._timeouts = timeouts
        self._admission = Admission(roster=roster, limits=limits, clock=clock)
        self._established = 0
        self._outsiders = 0
        self._failed = 0
        self._refused = 0

    def install(self) -> None:
        """Route the swarm's inbound connections through `_handle` (call before listening)."""
        self._swarm._handle_inbound_connection = self._handle

    def stats(self) -> GateStats:
        a = self._admission
        return GateStats(
            handshakes_in_progress=a.general + a.reserved,
            member_handshakes_in_progress=a.reserved,
            established=self._established,
            outsiders_closed=self._outsiders,
            failed_handshakes=self._failed,
            refused_before_handshake=self._refused,
            evicted_before_handshake=a.evicted,
            addresses_tracked=len(a.buckets),
        )

    # ---- one inbound connection --------------------------------------------------------

    async def _handle(self, read_write_closer: Any, maddr: Any) -> None:
        try:
            remote = read_write_closer.get_remote_address()
        except Exception:
            remote = None
        host = str(remote[0]) if remote else UNKNOWN_ADDRESS
        key = address_key(host) or UNKNOWN_ADDRESS
        scope = trio.CancelScope(deadline=trio.current_time() + self._timeouts.first_byte_s)
        pending = self._admission.admit(key, scope)
        if pending is None:
            self._refused += 1
            self._reporter.report(
                host,
                f"connection refused before the handshake: {self._admission.refusal_reason(key)}",
                key=("refused", key),
            )
            await close_quietly(read_write_closer)
            return
        raw = RawConnection(FirstByteWatch(read_write_closer, pending.heard), False)
        conn = None
        try:
            with scope:
                conn = await self._upgrade(raw, pending, host)
        finally:
            self._admission.release(pending)
        if scope.cancelled_caught:  # silent past first_byte_s, or evicted by a newcomer
            self._failed += 1
            self._admission.charge(key)
            why = "evicted" if pending.evicted else "no byte within the first-byte limit"
            log.debug("inbound connection from %s closed before its handshake: %s", host, why)
            await close_quietly(raw)
            return
        if conn is None:
            return
        self._established += 1
        try:
            await conn.event_closed.wait()
        finally:
            self._established -= 1

    async def _upgrade(self, raw: RawConnection, pending: Pending, host: str) -> Any:
        """Noise, the roster check, yamux and registration; None if the connection was closed."""
        key = pending.key
        upgrader = self._swarm.upgrader
        deadline = trio.current_time() + self._timeouts.handshake_s  # Noise and yamux together
        try:
            with trio.fail_at(deadline):
                secured = await upgrader.upgrade_security(raw, False)
        except Exception as exc:  # garbage, wrong protocol, timeout: all "not a handshake"
            self._failed += 1
            self._admission.charge(key)
            log.debug("inbound handshake from %s failed: %s: %s", host, type(exc).__name__, exc)
            await close_quietly(raw)
            return None
        pid = secured.get_remote_peer()
        site = self._roster.site_of(pid)
        if site is None:
            self._outsiders += 1
            self._admission.charge(key)
            self._reporter.report(
                pid.to_base58(),
                f"connection from a peer not in the roster (address {host})",
                key=("outsider", key),
            )
            await close_quietly(secured)
            return None
        pending.authenticated = True  # a member: no newcomer may take its slot now
        self._roster.saw(site, key)
        try:
            with trio.fail_at(deadline):
                muxed = await upgrader.upgrade_connection(secured, pid)
            return await self._swarm.add_conn(muxed, direction="inbound")
        except Exception as exc:
            log.info("inbound connection of %s failed: %s: %s", site, type(exc).__name__, exc)
            await close_quietly(secured)
            return None


class FirstByteWatch(ReadWriteCloser):
    """The raw stream, telling `on_first_byte` when the remote has sent anything."""

    def __init__(self, stream: Any, on_first_byte: Callable[[], None]) -> None:
        self._stream = stream
        self._on_first_byte: Callable[[], None] | None = on_first_byte

    async def read(self, n: int | None = None) -> bytes:
        data: bytes = await self._stream.read(n)
        if data and self._on_first_byte is not None:
            self._on_first_byte()
            self._on_first_byte = None
        return data

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    async def close(self) -> None:
        await self._stream.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        address: tuple[str, int] | None = self._stream.get_remote_address()
        return address
