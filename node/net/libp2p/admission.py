"""Handshake slots for inbound connections, and who gives up a slot when they are all taken.

A slot is held from accept until the Noise handshake names the peer. Pools: a reserved one for
member addresses (roster addresses and addresses a member authenticated from), a general one,
and a per-address cap on concurrency. When a new connection finds its address's cap or its
pools full, it takes the slot of a connection still waiting for its handshake, in this order:

1. the oldest one that has not sent a byte (an honest dialer speaks at once, so a silent
   connection is the cheapest kind to hold a slot with);
2. otherwise the oldest unauthenticated one, but a connection from an address that is not a
   member's never displaces one from a member's address.

So connections that say nothing cannot keep a member behind the same address (a hospital NAT)
out: each new connection, the member's included, displaces the oldest silent one. What can
still crowd a member out is a faster stream of connections that each send bytes from the
member's own address; those at least cost their sender a TCP connection and bytes each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from node.net.libp2p.buckets import BucketTable
from node.net.libp2p.config import Libp2pLimits
from node.net.libp2p.roster import Roster

MEMBER_POOL = "member"
GENERAL_POOL = "general"


@dataclass(eq=False)
class Pending:
    """One connection holding a handshake slot; cancelling `scope` ends its handshake."""

    key: str
    pool: str
    member_address: bool
    scope: trio.CancelScope
    spoke: bool = False  # it has sent at least one byte
    authenticated: bool = False  # Noise named a roster member: never displaced
    evicted: bool = False
    released: bool = field(default=False, repr=False)

    def heard(self) -> None:
        """First byte received: from now on only the handshake deadline bounds it."""
        if not self.spoke:
            self.spoke = True
            self.scope.deadline = math.inf


class Admission:
    """Handshake slots: a reserved pool for member addresses, a general pool, per-address caps
    on concurrency, a per-address outsider bucket that only non-member addresses obey, and
    eviction of waiting connections (see the module docstring) instead of refusing newcomers."""

    def __init__(self, *, roster: Roster, limits: Libp2pLimits, clock: Callable[[], float]) -> None:
        self._roster = roster
        self._limits = limits
        self.buckets = BucketTable(
            size=limits.address_table,
            burst=limits.outsider_burst,
            per_s=limits.outsider_per_s,
            clock=clock,
        )
        self._pending: dict[Pending, None] = {}  # insertion order: oldest first
        self._in_flight: dict[str, int] = {}  # slots per address key
        self.general = 0
        self.reserved = 0
        self.evicted = 0

    def admit(self, key: str, scope: trio.CancelScope) -> Pending | None:
        """A slot for a new connection from `key` (evicting another if needed), or None."""
        member = self._roster.is_member_address(key)
        if not member and self.buckets.empty(key):
            return None
        limits = self._limits
        per_address = (
            limits.member_handshakes_per_address if member else limits.handshakes_per_address
        )
        if self._in_flight.get(key, 0) >= per_address:
            same_address = self._victim((p for p in self._pending if p.key == key), member)
            if same_address is None:
                return None
            self.evict(same_address)
        pool = self._free_pool(member)
        if pool is None:
            pools = (MEMBER_POOL, GENERAL_POOL) if member else (GENERAL_POOL,)
            victim = self._victim((p for p in self._pending if p.pool in pools), member)
            if victim is None:
                return None
            self.evict(victim)
            pool = victim.pool
        pending = Pending(key=key, pool=pool, member_address=member, scope=scope)
        self._take(pending)
        return pending

    def _free_pool(self, member: bool) -> str | None:
        if member and self.reserved < self._limits.member_handshakes:
            return MEMBER_POOL
        if self.general < self._limits.handshakes:
            return GENERAL_POOL
        return None

    def _victim(self, candidates: Iterable[Pending], member: bool) -> Pending | None:
        """The oldest silent candidate, else the oldest unauthenticated one the newcomer may
        displace (a non-member address never displaces a member address's connection)."""
        oldest: Pending | None = None
        for p in candidates:
            if p.authenticated:
                continue
            if not p.spoke:
                return p
            if oldest is None and (member or not p.member_address):
                oldest = p
        return oldest

    def _take(self, pending: Pending) -> None:
        if pending.pool == MEMBER_POOL:
            self.reserved += 1
        else:
            self.general += 1
        self._in_flight[pending.key] = self._in_flight.get(pending.key, 0) + 1
        self._pending[pending] = None

    def evict(self, pending: Pending) -> None:
        """Give `pending`'s slot away now and end its handshake."""
        pending.evicted = True
        self.evicted += 1
        self.release(pending)
        pending.scope.cancel()

    def release(self, pending: Pending) -> None:
        """Free the slot (idempotent: an evicted connection's task releases it again)."""
        if pending.released:
            return
        pending.released = True
        del self._pending[pending]
        if pending.pool == MEMBER_POOL:
            self.reserved -= 1
        else:
            self.general -= 1
        left = self._in_flight[pending.key] - 1
        if left:
            self._in_flight[pending.key] = left
        else:
            del self._in_flight[pending.key]

    def charge(self, key: str) -> None:
        """An outsider's or a failed handshake from `key`: one token less for the address."""
        self.buckets.spend(key)

    def refusal_reason(self, key: str) -> str:
        if self.buckets.empty(key) and not self._roster.is_member_address(key):
            return "too many outsider or failed handshakes from this address"
        return "too many handshakes in progress"
