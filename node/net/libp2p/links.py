"""Who opens each connection: outbound-only sites dial and keep their links open.

A hospital whose firewall allows only outbound connections is `reachable = false` in the
consortium file, and each of its edges names it as the end that dials. Its transport then
keeps one connection per such neighbour open (`DIAL_KEEP_OPEN`): it dials at start, pings the
connection every `keepalive_s` (so a silently dead connection, or a firewall's idle timeout,
is noticed) and redials with exponential backoff, capped at `redial_max_s`, whenever the
connection is gone. Both directions of traffic use that connection: libp2p opens a stream on
any open connection to the peer, whichever side dialled it (measured with py-libp2p 0.8.1:
once the hospital has dialled, the neighbour's sends reuse its connection; after it drops, the
neighbour would dial the address it learnt through identify, which a firewall swallows until
`dial_s`). So the reachable end of such an edge (`DIAL_NEVER`) never dials: a send waits, at
most `dial_s` per attempt, for the hospital's connection to be there.

Connection events come from the swarm's notifee callbacks; waits are on events, never polls.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.peer.id import ID

from node.net.libp2p.config import DIAL_KEEP_OPEN, DIAL_NEVER, DIAL_ON_DEMAND, Libp2pTimeouts
from node.net.libp2p.inbound import finish_stream
from node.net.libp2p.roster import Roster

# Under the transport's logger, so one level setting (the daemon's) covers all of it.
log = logging.getLogger("node.net.libp2p.transport").getChild("links")

Dial = Callable[[ID], Awaitable[None]]
Forget = Callable[[ID], Awaitable[None]]


def dial_policy(dialer: str | None, *, local: str) -> str:
    """This site's policy towards a neighbour, from the consortium file's dialler of their
    edge (None: either end may dial)."""
    if dialer is None:
        return DIAL_ON_DEMAND
    return DIAL_KEEP_OPEN if dialer == local else DIAL_NEVER


@dataclass(frozen=True)
class LinkInfo:
    """One member's connection as status pages show it."""

    connected: bool
    direction: str | None  # "inbound" / "outbound" for the first open connection
    dial: str  # the member's dial policy (node.net.libp2p.config.DIAL_POLICIES)
    dials: int  # connections this site's keeper opened to it (kept-open links only)
    dial_failures: int


class Links(INotifee):
    def __init__(
        self,
        *,
        host: Any,
        roster: Roster,
        timeouts: Libp2pTimeouts,
        dial: Dial,
        forget: Forget,
    ) -> None:
        self._host = host
        self._roster = roster
        self._timeouts = timeouts
        self._dial = dial
        self._forget = forget
        self._changed = trio.Event()
        self._keepers: dict[str, tuple[ID, trio.CancelScope]] = {}
        self._nursery: trio.Nursery | None = None
        self._dials: dict[str, int] = {}
        self._failures: dict[str, int] = {}

    def install(self) -> None:
        self._host.get_network().register_notifee(self)

    # ---- state -----------------------------------------------------------------------

    def is_connected(self, pid: ID) -> bool:
        return any(not c.is_closed for c in self._host.get_network().get_connections(pid))

    def info(self, site: str) -> LinkInfo | None:
        peer = self._roster.by_site.get(site)
        if peer is None:
            return None
        conns = [
            c
            for c in self._host.get_network().get_connections(ID.from_base58(peer.peer_id))
            if not c.is_closed
        ]
        direction = getattr(conns[0], "direction", None) if conns else None
        name = getattr(direction, "name", None)  # libp2p's Direction is an IntEnum
        return LinkInfo(
            connected=bool(conns),
            direction=name.lower() if isinstance(name, str) else None,
            dial=peer.dial,
            dials=self._dials.get(site, 0),
            dial_failures=self._failures.get(site, 0),
        )

    async def wait_connected(self, pid: ID, timeout: float) -> bool:
        """Wait (at most `timeout`) for any connection to `pid`, opened by either side."""
        with trio.move_on_after(timeout):
            while not self.is_connected(pid):
                await self._changed.wait()
            return True
        return False

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Until `condition()` holds, re-checked after every connection event (tests, status)."""
        while not condition():
            await self._changed.wait()

    def _poke(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    # ---- keepers ---------------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.reconcile()

    def reconcile(self) -> None:
        """One keeper per neighbour whose link this site keeps open (after roster changes)."""
        want: dict[str, ID] = {
            site: ID.from_base58(info.peer_id)
            for site, info in self._roster.by_site.items()
            if info.dial == DIAL_KEEP_OPEN and self._roster.is_neighbour(site)
        }
        for site, (pid, scope) in list(self._keepers.items()):
            if want.get(site) != pid:
                scope.cancel()
                del self._keepers[site]
        if self._nursery is None:
            return
        for site, pid in want.items():
            if site not in self._keepers:
                scope = trio.CancelScope()
                self._keepers[site] = (pid, scope)
                self._nursery.start_soon(self._keep, site, pid, scope)

    def stop(self) -> None:
        for _pid, scope in self._keepers.values():
            scope.cancel()
        self._keepers.clear()
        self._nursery = None

    async def _keep(self, site: str, pid: ID, scope: trio.CancelScope) -> None:
        t = self._timeouts
        delay = t.backoff_initial_s
        with scope:
            while True:
                if self.is_connected(pid):
                    delay = t.backoff_initial_s
                    with trio.move_on_after(t.keepalive_s):
                        while self.is_connected(pid):
                            await self._changed.wait()
                    if self.is_connected(pid) and not await self._ping(site, pid):
                        await self._forget(pid)
                    continue
                try:
                    await self._dial(pid)
                    self._dials[site] = self._dials.get(site, 0) + 1
                    self._poke()
                    log.info("%s: connection opened (this site dials it)", site)
                except Exception as exc:  # libp2p raises many unrelated types; all mean "failed"
                    self._failures[site] = self._failures.get(site, 0) + 1
                    self._poke()
                    log.info(
                        "%s: dial failed, again in %.1f s: %s: %s",
                        site,
                        delay,
                        type(exc).__name__,
                        exc,
                    )
                    await trio.sleep(delay)
                    delay = min(max(delay, 0.05) * 2, t.redial_max_s)

    async def _ping(self, site: str, pid: ID) -> bool:
        """One ping round trip on the kept connection, bounded by `io_s`."""
        stream: INetStream | None = None
        try:
            with trio.fail_after(self._timeouts.io_s):
                stream = await self._host.new_stream(pid, [PING_PROTOCOL_ID])
                await perform_ping_roundtrip(stream)
            return True
        except Exception as exc:
            log.info("%s: keepalive ping failed, redialling: %s: %s", site, type(exc).__name__, exc)
            return False
        finally:
            if stream is not None:
                await finish_stream(stream, graceful=True)

    # ---- INotifee --------------------------------------------------------------------

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._poke()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._poke()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None
