"""The daemon's local control endpoint: HTTP/1.0 on 127.0.0.1, read-only (pages in
node.daemon.control_routes).

Loopback is not a trust boundary: any local account, and any web page a local browser
opens, can connect. So, whatever a client sends:
- every page with data needs the start's token (node.daemon.control_auth); a request
  without it gets 401 and its connection is closed once its head is read. Only the
  dashboard's own files (code, no data) are served without it;
- at most `ControlLimits.max_connections` connections are served at once. At the cap a new
  connection takes the slot of the oldest one that has not presented the token (it is
  closed); only when every slot is held by a token holder is the new one closed at once
  (RST), never queued in the daemon. So another account re-opening idle connections cannot
  keep the owner off /status. (A request head already in the socket buffer counts as
  presented; the owner's connection is exposed only between its connect and its send, and
  only to a client that re-opens a whole cap's worth of connections in that time.) The cap
  is derived from the process's RLIMIT_NOFILE soft limit (`connection_cap`) so a flood
  cannot take the descriptors the daemon needs for its checkpoints, its ledger and libp2p;
- a connection has `head_timeout_s` from accept to send its whole request head (at most
  `max_head_bytes`), and `response_timeout_s` to take the answer;
- the `Host` header must be 127.0.0.1 or localhost (with or without our port): a browser
  page whose name was re-bound to 127.0.0.1 (DNS rebinding) sends its own name and gets 421
  with no data. A request without exactly one Host header gets 421 too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from gossipmed.errors import GossipmedError
from gossipmed.storage.atomic import atomic_write_json
from node.daemon.control_auth import new_token
from node.daemon.control_client import CONTROL_HOST
from node.daemon.control_request import (  # noqa: F401  (re-exported for callers)
    ALLOWED_HOSTS,
    Request,
    head_presents_token,
    host_allowed,
    parse_head,
    read_head,
    respond,
)
from node.daemon.control_routes import DEFAULT_ROUTES, Route, StatusProvider, text

log = logging.getLogger(__name__)

CONTROL_VERSION = 1
MAX_REQUEST_HEAD = 8192
HEAD_TIMEOUT_S = 2.0
RESPONSE_TIMEOUT_S = 5.0
# The cap is a quarter of the descriptors left after a reserve for the daemon, at most 64:
# soft limit 1024 -> 64, 256 -> 32, 160 or less -> 1. One status page needs one connection.
FD_RESERVE = 128
FD_SHARE = 4
MAX_CONNECTIONS_CEILING = 64
LISTEN_BACKLOG = 128  # the kernel's queue of not-yet-accepted connections (no descriptors)
ACCEPT_BACKOFF_S = 0.1
REFUSED_LOG_INTERVAL_S = 60.0
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def connection_cap(soft_limit: int | None = None) -> int:
    """Concurrent control connections allowed under a RLIMIT_NOFILE soft limit (default:
    this process's): (soft - FD_RESERVE) // FD_SHARE, between 1 and MAX_CONNECTIONS_CEILING."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY or soft_limit < 0:
        return MAX_CONNECTIONS_CEILING
    return max(1, min(MAX_CONNECTIONS_CEILING, (soft_limit - FD_RESERVE) // FD_SHARE))


class ControlConfigError(GossipmedError, ValueError):
    """Limits for the control endpoint that cannot work."""


@dataclass(frozen=True)
class ControlLimits:
    max_connections: int
    head_timeout_s: float = HEAD_TIMEOUT_S
    response_timeout_s: float = RESPONSE_TIMEOUT_S
    max_head_bytes: int = MAX_REQUEST_HEAD

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ControlConfigError("control endpoint: max_connections must be at least 1")
        if not (self.head_timeout_s > 0 and self.response_timeout_s > 0):
            raise ControlConfigError("control endpoint: timeouts must be positive")
        if self.max_head_bytes < 64:
            raise ControlConfigError("control endpoint: max_head_bytes must be at least 64")

    @classmethod
    def from_rlimit(cls) -> ControlLimits:
        return cls(max_connections=connection_cap())


# --- the server -----------------------------------------------------------------------------


def unread_bytes(stream: trio.SocketStream, limit: int) -> bytes:
    """What the client sent that has not been read yet (peeked, left in place)."""
    try:
        fd = stream.socket.fileno()
        with socket.socket(fileno=os.dup(fd)) as view:
            return view.recv(limit, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing waiting (EAGAIN), or no descriptor to spare: nothing known
        return b""


def _reset(stream: trio.SocketStream) -> None:
    """Close at once with RST: no handshake to wait for, the descriptor is free now."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


@dataclass(eq=False)
class Slot:
    """One served connection; cancelling `scope` ends it."""

    stream: trio.SocketStream
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    head: bytearray = field(default_factory=bytearray)  # request head read so far
    has_token: bool = False
    evicted: bool = False


class ControlServer:
    """Accept loops with a connection cap; the counters are for tests and logs."""

    def __init__(
        self,
        status: StatusProvider,
        *,
        port: int,
        limits: ControlLimits,
        token: str,
        routes: Mapping[str, Route] = DEFAULT_ROUTES,
    ) -> None:
        self.status = status
        self.port = port
        self.limits = limits
        self.token = token
        self.routes = routes
        self.active = 0  # connections being served now
        self.peak = 0
        self.accepted = 0  # served (or timed out) since start
        self.refused = 0  # closed at once because the cap was reached
        self.evicted = 0  # closed to make room: held a slot without presenting the token
        self._slots: dict[Slot, None] = {}  # oldest first
        self._last_warning = -float("inf")

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(self)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:  # EMFILE and the like: the daemon's own use comes first
                self._warn(f"accept failed ({errno.errorcode.get(exc.errno or 0, exc)})")
                await trio.sleep(ACCEPT_BACKOFF_S)
                continue
            if self.active >= self.limits.max_connections and not self._evict_one():
                self.refused += 1
                self._warn(f"{self.limits.max_connections} connections open, closing new ones")
                _reset(stream)
                continue
            self.active += 1
            self.accepted += 1
            self.peak = max(self.peak, self.active)
            slot = Slot(stream)
            self._slots[slot] = None
            nursery.start_soon(self._handle, slot)

    def _evict_one(self) -> bool:
        """Free the slot of the oldest connection that has sent nothing, else of the oldest
        that has not presented the token; False if every slot is a token holder's.

        A head already in the socket buffer counts as read: under a stream of re-opened
        idle connections the owner's request may not have been scheduled yet."""
        victim: Slot | None = None
        for slot in self._slots:
            if slot.has_token:
                continue
            seen = bytes(slot.head) + unread_bytes(slot.stream, self.limits.max_head_bytes + 1)
            if not seen:
                victim = slot
                break
            if head_presents_token(seen, self.token):
                slot.has_token = True
            elif victim is None:
                victim = slot
        if victim is None:
            return False
        self._release(victim)
        victim.evicted = True
        victim.scope.cancel()
        self.evicted += 1
        return True

    def _release(self, slot: Slot) -> None:
        if slot in self._slots:
            del self._slots[slot]
            self.active -= 1

    async def _handle(self, slot: Slot) -> None:
        stream = slot.stream
        try:
            with slot.scope:
                await self._exchange(stream, slot)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._release(slot)
            with trio.CancelScope(shield=True):
                if slot.evicted:
                    _reset(stream)  # its descriptor is free at once
                else:
                    await stream.aclose()

    async def _exchange(self, stream: trio.SocketStream, slot: Slot) -> None:
        limits = self.limits
        head: bytes | None = None
        with trio.move_on_after(limits.head_timeout_s):
            try:
                head = await read_head(stream, limits.max_head_bytes, slot.head)
            except ValueError:
                reply = text("431 Request Header Fields Too Large", "request head too large\n")
                with trio.move_on_after(limits.response_timeout_s):
                    await stream.send_all(reply.encode())
                return
        if head is None:  # idle past the timeout, or closed before a whole head
            return
        slot.has_token = head_presents_token(head, self.token)
        reply = respond(
            head, port=self.port, status=self.status, routes=self.routes, token=self.token
        )
        with trio.move_on_after(limits.response_timeout_s):
            await stream.send_all(reply.encode())

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= REFUSED_LOG_INTERVAL_S:
            self._last_warning = now
            log.warning(
                "control endpoint: %s (%d refused since start; cap %d)",
                what,
                self.refused,
                self.limits.max_connections,
            )


async def serve_control(
    status: StatusProvider,
    *,
    port: int = 0,
    control_file: Path | None = None,
    limits: ControlLimits | None = None,
    routes: Mapping[str, Route] = DEFAULT_ROUTES,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled. Reports the ControlServer (its `port` and this start's fresh
    `token`) via task_status and writes both to `control_file` (0600); removes that file on
    the way out."""
    limits = limits or ControlLimits.from_rlimit()
    listeners = await trio.open_tcp_listeners(port, host=CONTROL_HOST, backlog=LISTEN_BACKLOG)
    bound = int(listeners[0].socket.getsockname()[1])
    token = new_token()
    server = ControlServer(status, port=bound, limits=limits, token=token, routes=routes)
    log.info(
        "control endpoint on %s:%d (at most %d connections)",
        CONTROL_HOST,
        bound,
        limits.max_connections,
    )
    try:
        if control_file is not None:
            atomic_write_json(
                control_file,
                {
                    "v": CONTROL_VERSION,
                    "host": CONTROL_HOST,
                    "port": bound,
                    "token": token,
                    "pid": os.getpid(),
                    "started_at": time.time(),
                },
            )
        await server.serve(listeners, task_status=task_status)
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()
        if control_file is not None:
            _remove_if_ours(control_file)


def _remove_if_ours(control_file: Path) -> None:
    try:
        info = json.loads(control_file.read_text(encoding="utf-8"))
        if info.get("pid") == os.getpid():
            control_file.unlink()
    except (OSError, ValueError):
        pass
