"""Settings and identities of the libp2p transport: what a member is, and every bound we keep.

All numbers here are limits on what a peer can make us spend. The defaults are explained next
to each field; `Libp2pTransport`'s module docstring adds them up into what an outsider and a
member can cost a site.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import multiaddr
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from gossipmed.errors import ConfigError, IdentityError

PROTOCOL_ID = TProtocol("/gossipmed/update/1.0.0")
ACK_ACCEPTED = b"\x00"
SEED_BYTES = 32

# Who opens the connection to a member (from the consortium file's reachability and dial list):
DIAL_ON_DEMAND = "on-demand"  # this site dials when it has something to send (both reachable)
DIAL_KEEP_OPEN = "keep-open"  # this site dials, keeps it open, redials (this site is unreachable)
DIAL_NEVER = "never"  # the member dials us; we wait for its connection (it is unreachable)
DIAL_POLICIES = (DIAL_ON_DEMAND, DIAL_KEEP_OPEN, DIAL_NEVER)


@dataclass(frozen=True)
class PeerInfo:
    """Where to reach one roster member: its libp2p peer ID and multiaddrs (no /p2p suffix),
    and who opens the connection (`dial`, one of DIAL_POLICIES)."""

    peer_id: str
    addrs: Sequence[str] = ()
    dial: str = DIAL_ON_DEMAND

    def __post_init__(self) -> None:
        if self.dial not in DIAL_POLICIES:
            raise ConfigError(f"dial must be one of {', '.join(DIAL_POLICIES)}, got {self.dial!r}")
        try:
            ID.from_base58(self.peer_id)
        except Exception as exc:
            raise ConfigError(f"invalid libp2p peer ID {self.peer_id!r}: {exc}") from exc
        addrs = tuple(self.addrs)
        for addr in addrs:
            try:
                multiaddr.Multiaddr(addr)
            except Exception as exc:
                raise ConfigError(f"invalid multiaddr {addr!r}: {exc}") from exc
        object.__setattr__(self, "addrs", addrs)


def _positive(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _at_least_one(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class Libp2pTimeouts:
    """Bounds on every network wait; a missing or slow peer costs a bounded time, never forever.

    `keepalive_s` and `redial_max_s` are for connections this site keeps open itself (it is
    unreachable, so its neighbours cannot dial it): each is checked with a libp2p ping after
    `keepalive_s` without one, and redialled with backoff from `backoff_initial_s` up to
    `redial_max_s` between attempts while it is down.

    `min_rate_bps` and `rate_grace_s` drop an inbound update stream whose average rate since
    it opened falls below `min_rate_bps` once `rate_grace_s` have passed: a stream must have
    delivered `min_rate_bps * (elapsed - rate_grace_s)` bytes at every moment. With the
    defaults an honest 8 MiB update passes on any link that gives the stream >= 28 KiB/s
    (0.23 Mbit/s; then `message_s` = 300 s is the binding limit), and a stream trickling a
    byte every few seconds is dropped 10 s after it opened.

    `first_byte_s` closes an inbound connection that has not sent a byte by then: an honest
    dialer writes its multistream header at once, so only a connection held open to occupy a
    handshake slot waits longer.
    """

    dial_s: float = 5.0
    stream_open_s: float = 5.0
    io_s: float = 10.0  # one read or one write of <= 1 MiB
    message_s: float = 300.0  # a whole envelope, either direction
    send_attempts: int = 3
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    negotiate_s: int = 5  # multistream-select, inbound and outbound
    handshake_s: float = 10.0  # an inbound connection's Noise + yamux upgrade
    first_byte_s: float = 1.0  # an inbound connection says nothing this long: closed
    min_rate_bps: float = 16 * 1024.0
    rate_grace_s: float = 10.0
    keepalive_s: float = 20.0  # a kept-open connection is pinged when idle this long
    redial_max_s: float = 10.0  # longest pause between redials of a kept-open connection

    def __post_init__(self) -> None:
        _positive(
            self,
            "dial_s",
            "stream_open_s",
            "io_s",
            "message_s",
            "backoff_max_s",
            "handshake_s",
            "first_byte_s",
            "min_rate_bps",
            "keepalive_s",
            "redial_max_s",
        )
        for name in ("backoff_initial_s", "rate_grace_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be >= 0, got {value!r}")
        _at_least_one(self, "send_attempts", "negotiate_s")


@dataclass(frozen=True)
class Libp2pLimits:
    """Per-peer and per-address resource limits (none is a pool one peer can drain alone).

    Members and neighbours:
    - `streams_per_neighbour`: concurrent inbound update streams of one neighbour; a member
      that is not a neighbour gets none. `extra_streams_per_member` more inbound streams of
      any protocol (libp2p's identify and ping) are allowed per member; streams past that are
      reset when they open, before protocol negotiation.
    - `queue_per_neighbour`: envelopes of one neighbour accepted but not yet taken by
      `receive_from`; a full share refuses that neighbour's next envelope (it retries).
    - `refused_streams_burst` / `refused_streams_per_s`: a member whose streams keep being
      refused (over its limit, or not a neighbour) faster than this is disconnected.

    Unauthenticated connections (before the Noise handshake names the peer):
    - `handshakes`: concurrent handshakes from addresses not known to belong to a member;
      `handshakes_per_address` of them per address (IPv4 address or IPv6 /64).
    - `member_handshakes`: concurrent handshakes reserved for addresses of members (roster
      addresses and addresses a member authenticated from), so a flood from elsewhere does
      not lock members out; `member_handshakes_per_address` of them (or of the general pool)
      per member address, so one address cannot hold them all (several hospitals behind one
      NAT share this).
    - at any of these caps a new connection takes the slot of one still waiting for its
      handshake: the oldest that has sent no byte, else the oldest unauthenticated one (a
      newcomer from a non-member address never displaces a member address's connection);
      see node.net.libp2p.admission.
    - `outsider_burst` / `outsider_per_s`: token bucket per address, spent by each failed
      (silent, evicted) handshake or handshake of a peer outside the roster. An empty bucket
      refuses the address's next connections before any handshake; member addresses are
      never refused.
    - `address_table`: addresses remembered for the buckets above (least recent forgotten).
    - `reports_burst` / `reports_per_s`: `on_reject` calls per peer or address; the rest are
      counted and summarised in the next report, so an attacker cannot flood the audit log.
    """

    streams_per_neighbour: int = 2
    extra_streams_per_member: int = 2
    queue_per_neighbour: int = 4
    refused_streams_burst: int = 32
    refused_streams_per_s: float = 2.0
    handshakes: int = 64
    handshakes_per_address: int = 4
    member_handshakes: int = 32
    member_handshakes_per_address: int = 16
    outsider_burst: int = 10
    outsider_per_s: float = 0.5
    address_table: int = 4096
    reports_burst: int = 20
    reports_per_s: float = 0.2

    def __post_init__(self) -> None:
        _at_least_one(
            self,
            "streams_per_neighbour",
            "queue_per_neighbour",
            "refused_streams_burst",
            "handshakes",
            "handshakes_per_address",
            "member_handshakes",
            "member_handshakes_per_address",
            "outsider_burst",
            "address_table",
            "reports_burst",
        )
        if not isinstance(self.extra_streams_per_member, int) or self.extra_streams_per_member < 0:
            raise ConfigError("extra_streams_per_member must be an integer >= 0")
        _positive(self, "refused_streams_per_s", "outsider_per_s", "reports_per_s")


def key_pair_from_seed(seed: bytes) -> KeyPair:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise IdentityError(f"an Ed25519 seed must be {SEED_BYTES} bytes")
    try:
        return create_new_key_pair(bytes(seed))
    except ValueError as exc:
        raise IdentityError(f"seed does not give a usable Ed25519 key: {exc}") from exc


def peer_id_from_seed(seed: bytes) -> str:
    """The libp2p peer ID a site with this identity seed will have (for the roster)."""
    return ID.from_pubkey(key_pair_from_seed(seed).public_key).to_base58()
