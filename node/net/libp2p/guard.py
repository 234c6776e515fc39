"""Per-member guards on established connections: who may open streams, how many, how much
the muxer may buffer for them.

Installed on our swarm instance by `MemberGuard.install`:
- `add_conn` (both directions) registers only roster members, and wraps the member's yamux
  connection so it cannot buffer more than its flow-control windows allow: py-libp2p 0.8.1
  logs "peer exceeded receive window" and buffers the data anyway, so a member could
  otherwise fill our memory on a stream we are not reading. The wrapper sits on the yamux
  connection's `_read_data_body`, and raises `trio.TooSlowError`, which yamux's read loop
  turns into closing the connection.
- an `opened_stream` notifee, which runs when a remote opens a stream and before protocol
  negotiation: streams from members that are not graph neighbours are reset, and a
  neighbour gets at most `streams_per_neighbour + extra_streams_per_member` inbound streams
  at once. A member whose streams keep being refused is disconnected (it may reconnect: a
  member is never throttled, but each round costs it a handshake).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE, Yamux

from node.net.libp2p.buckets import BucketTable, Reporter
from node.net.libp2p.config import Libp2pLimits
from node.net.libp2p.gate import close_quietly
from node.net.libp2p.roster import Roster

# Under the transport's logger, so one level setting (the daemon's) covers all of it.
log = logging.getLogger("node.net.libp2p.transport").getChild("guard")

# Beyond the sum of the windows we granted: a frame already in flight when a window shrank,
# or a stream we just reset. Honest peers never come near it.
FLOW_SLACK_BYTES = 1 << 20
RESET_WAIT_S = 1.0


def inbound_stream_count(network: Any, pid: ID) -> int:
    """Streams the remote opened to us on all our connections to `pid` (still open)."""
    count = 0
    for conn in network.get_connections(pid):
        for stream in tuple(getattr(conn, "streams", ())):
            if not getattr(stream.muxed_stream, "is_initiator", True):
                count += 1
    return count


def guard_flow_control(muxed: Yamux, on_violation: Callable[[int, int], None]) -> None:
    """Close `muxed` when the remote sends more than the windows we granted it allow."""
    read_body: Callable[[int], Awaitable[bytes]] = muxed._read_data_body

    async def guarded(length: int) -> bytes:
        buffered = sum(len(b) for b in tuple(muxed.stream_buffers.values()))
        granted = sum(
            max(s.target_recv_window, DEFAULT_WINDOW_SIZE) for s in tuple(muxed.streams.values())
        )
        allowance = granted + DEFAULT_WINDOW_SIZE + FLOW_SLACK_BYTES  # + one new stream's SYN
        if buffered + length > allowance:
            on_violation(buffered + length, allowance)
            raise trio.TooSlowError  # yamux's read loop closes the connection on this
        return await read_body(length)

    muxed._read_data_body = guarded  # type: ignore[method-assign]


class MemberGuard(INotifee):
    def __init__(
        self,
        *,
        swarm: Any,
        roster: Roster,
        reporter: Reporter,
        limits: Libp2pLimits,
        disconnect: Callable[[ID], None],
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._swarm = swarm
        self._roster = roster
        self._reporter = reporter
        self._limits = limits
        self._disconnect = disconnect
        self._refusals = BucketTable(
            size=max(16, 4 * limits.address_table),
            burst=limits.refused_streams_burst,
            per_s=limits.refused_streams_per_s,
            clock=clock,
        )

    def install(self) -> None:
        original = self._swarm.add_conn

        async def add_conn(muxed_conn: Any, direction: str = "unknown") -> Any:
            pid: ID = muxed_conn.peer_id
            site = self._roster.site_of(pid)
            if site is None or not isinstance(muxed_conn, Yamux):
                await close_quietly(muxed_conn)
                raise SwarmException(f"refusing a {direction} connection to {pid}: not a member")

            def violated(wanted: int, allowance: int) -> None:
                self._reporter.report(
                    site,
                    f"flow control violated: {wanted} bytes buffered, window allows "
                    f"{allowance}; disconnected",
                )

            guard_flow_control(muxed_conn, violated)
            return await original(muxed_conn, direction=direction)

        self._swarm.add_conn = add_conn
        self._swarm.register_notifee(self)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        if getattr(getattr(stream, "muxed_stream", None), "is_initiator", True):
            return  # a stream we opened
        pid = stream.muxed_conn.peer_id
        site = self._roster.site_of(pid)
        limit = self._limits.streams_per_neighbour + self._limits.extra_streams_per_member
        if site is None:
            reason = "stream from a peer not in the roster"
        elif not self._roster.is_neighbour(site):
            reason = f"stream from member {site!r}, which is not a neighbour"
        elif inbound_stream_count(network, pid) > limit:
            reason = f"more than {limit} concurrent streams"
        else:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(RESET_WAIT_S):
            try:
                await stream.reset()
            except Exception as exc:
                log.debug("reset: %s: %s", type(exc).__name__, exc)
        who = site if site is not None else pid.to_base58()
        self._reporter.report(who, f"refused at the stream: {reason}")
        if not self._refusals.spend(pid):
            self._refusals.forget(pid)
            self._reporter.report(who, "too many refused streams; disconnected", key=(who, "cut"))
            self._disconnect(pid)

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None
