"""Inbound connections: who gets a Noise handshake, and a slot that ends with the connection.

py-libp2p 0.8.1's `Swarm._handle_inbound_connection` takes one of 250 inbound slots and, after
a successful upgrade, keeps it until the swarm stops (`await self.manager.wait_finished()`),
even when the connection is long closed: 250 handshakes with throwaway keys closed a site to
every new inbound connection, members included. `InboundGate.install` replaces that method on
our swarm instance (the TCP listener calls it by attribute, per connection) with `_handle`:

1. admission, before any byte is read: a connection from an address known to be a member's
   takes a slot in a reserved pool (or the general one when that is full), with at most
   `member_handshakes_per_address` in flight from its address; any other address needs a
   slot in the general pool, fewer than `handshakes_per_address` handshakes in flight from
   its address, and a non-empty outsider bucket for its address. Refused connections are
   closed at once (no handshake). The per-address caps are on concurrency, not rate: a
   member address is never refused for what came from it before.
2. the Noise handshake (then yamux), bounded by `handshake_s`. The peer ID is known after
   Noise: a peer outside the roster is closed right there (never muxed, never registered in
   the swarm) and spends a token of its address's bucket, as does a failed or timed-out
   handshake. Members never spend tokens and member addresses are never refused.
3. the handshake slot is released when the handshake ends; the task then waits for the
   connection to close (trio closes the socket when the listener's handler returns) and
   counts it in `established` until then.

Member addresses are the IP addresses in members' roster multiaddrs plus the last few
addresses each member authenticated from. A member that shares an address with an outsider
flooding us, and whose address is in neither, is refused with that address until the
bucket refills (documented in the transport's cost model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.network.connection.raw_connection import RawConnection

from node.net.libp2p.buckets import BucketTable, Reporter
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
    addresses_tracked: int


async def close_quietly(conn: Any) -> None:
    """Close a raw/secured/muxed connection without letting it stall us or raise."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_WAIT_S):
        try:
            await conn.close()
        except Exception as exc:
            log.debug("closing %s: %s: %s", type(conn).__name__, type(exc).__name__, exc)


class Admission:
    """Handshake slots: a reserved pool for member addresses, a general pool, per-address caps
    on concurrency, and a per-address outsider bucket that only non-member addresses obey."""

    def __init__(self, *, roster: Roster, limits: Libp2pLimits, clock: Callable[[], float]) -> None:
        self._roster = roster
        self._limits = limits
        self.buckets = BucketTable(
            size=limits.address_table,
            burst=limits.outsider_burst,
            per_s=limits.outsider_per_s,
            clock=clock,
        )
        self._in_flight: dict[str, int] = {}  # handshakes per address key
        self.general = 0
        self.reserved = 0

    def admit(self, key: str) -> str | None:
        """The pool the handshake may use ("member" or "general"), or None if refused."""
        member = self._roster.is_member_address(key)
        limits = self._limits
        per_address = (
            limits.member_handshakes_per_address if member else limits.handshakes_per_address
        )
        if self._in_flight.get(key, 0) >= per_address:
            return None
        if member and self.reserved < limits.member_handshakes:
            pool = "member"
            self.reserved += 1
        elif self.general < limits.handshakes and (member or not self.buckets.empty(key)):
            pool = "general"
            self.general += 1
        else:
            return None
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return pool

    def release(self, key: str, pool: str) -> None:
        if pool == "member":
            self.reserved -= 1
        else:
            self.general -= 1
        left = self._in_flight[key] - 1
        if left:
            self._in_flight[key] = left
        else:
            del self._in_flight[key]

    def charge(self, key: str) -> None:
        """An outsider's or a failed handshake from `key`: one token less for the address."""
        self.buckets.spend(key)

    def refusal_reason(self, key: str) -> str:
        if self.buckets.empty(key) and not self._roster.is_member_address(key):
            return "too many outsider or failed handshakes from this address"
        return "too many handshakes in progress"


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
        pool = self._admission.admit(key)
        if pool is None:
            self._refused += 1
            self._reporter.report(
                host,
                f"connection refused before the handshake: {self._admission.refusal_reason(key)}",
                key=("refused", key),
            )
            await close_quietly(read_write_closer)
            return
        try:
            conn = await self._upgrade(RawConnection(read_write_closer, False), key, host)
        finally:
            self._admission.release(key, pool)
        if conn is None:
            return
        self._established += 1
        try:
            await conn.event_closed.wait()
        finally:
            self._established -= 1

    async def _upgrade(self, raw: RawConnection, key: str, host: str) -> Any:
        """Noise, the roster check, yamux and registration; None if the connection was closed."""
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
        self._roster.saw(site, key)
        try:
            with trio.fail_at(deadline):
                muxed = await upgrader.upgrade_connection(secured, pid)
            return await self._swarm.add_conn(muxed, direction="inbound")
        except Exception as exc:
            log.info("inbound connection of %s failed: %s: %s", site, type(exc).__name__, exc)
            await close_quietly(secured)
            return None
