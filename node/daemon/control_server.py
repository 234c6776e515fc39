"""The daemon's local control endpoint: HTTP/1.0 on 127.0.0.1, read-only (pages in
node.daemon.control_routes).

Loopback is not a trust boundary: any local account, and any web page a local browser
opens, can connect. So, whatever a client sends:
- at most `ControlLimits.max_connections` connections are served at once; one more is
  closed at once (RST), never queued in the daemon. The cap is derived from the process's
  RLIMIT_NOFILE soft limit (`connection_cap`) so a flood cannot take the descriptors the
  daemon needs for its checkpoints, its ledger and libp2p;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from gossipmed.errors import GossipmedError
from gossipmed.storage.checkpoint import atomic_write_json
from node.daemon.control_client import CONTROL_HOST
from node.daemon.control_routes import (
    DEFAULT_ROUTES,
    Response,
    Route,
    StatusProvider,
    route_response,
    text,
)

log = logging.getLogger(__name__)

ALLOWED_HOSTS = ("127.0.0.1", "localhost")
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


# --- one request -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order received

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def parse_head(head: bytes) -> Request:
    """Request line and headers; ValueError for anything that is not plain HTTP/1.x."""
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise ValueError("malformed request line")
    headers = []
    for line in lines[1:]:
        if not line:
            break
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name or "\t" in name:
            raise ValueError("malformed header line")
        headers.append((name.lower(), value.strip(" \t")))
    return Request(method=parts[0], target=parts[1], headers=tuple(headers))


def host_allowed(host: str, port: int) -> bool:
    """Only our own names; a rebound DNS name, another port or a bare IP suffix fail."""
    value = host.lower()
    return any(value in (name, f"{name}:{port}") for name in ALLOWED_HOSTS)


def respond(
    head: bytes, *, port: int, status: StatusProvider, routes: Mapping[str, Route]
) -> Response:
    """The answer to one complete request head; the Host check comes before any page."""
    try:
        request = parse_head(head)
    except ValueError:
        return text("400 Bad Request", "bad request\n")
    hosts = request.header("host")
    if len(hosts) != 1 or not host_allowed(hosts[0], port):
        return text("421 Misdirected Request", "Host must be 127.0.0.1 or localhost\n")
    if request.method != "GET":
        return text("405 Method Not Allowed", "GET only\n")
    try:
        return route_response(request.target, status, routes)
    except Exception:  # a page's bug must not end the daemon
        log.exception("control endpoint: building %s failed", request.target)
        return text("500 Internal Server Error", "internal error (see the daemon log)\n")


async def read_head(stream: trio.abc.ReceiveStream, limit: int) -> bytes | None:
    """The request head, or None if the client closed first; ValueError past `limit`."""
    head = bytearray()
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        if len(head) > limit:
            raise ValueError("request head too large")
        chunk = await stream.receive_some(1024)
        if not chunk:
            return None
        head += chunk
    return bytes(head)


# --- the server -----------------------------------------------------------------------------


def _reset(stream: trio.SocketStream) -> None:
    """Close at once with RST: no handshake to wait for, the descriptor is free now."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


class ControlServer:
    """Accept loops with a connection cap; the counters are for tests and logs."""

    def __init__(
        self,
        status: StatusProvider,
        *,
        port: int,
        limits: ControlLimits,
        routes: Mapping[str, Route] = DEFAULT_ROUTES,
    ) -> None:
        self.status = status
        self.port = port
        self.limits = limits
        self.routes = routes
        self.active = 0  # connections being served now
        self.peak = 0
        self.accepted = 0  # served (or timed out) since start
        self.refused = 0  # closed at once because the cap was reached
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
            if self.active >= self.limits.max_connections:
                self.refused += 1
                self._warn(f"{self.limits.max_connections} connections open, closing new ones")
                _reset(stream)
                continue
            self.active += 1
            self.accepted += 1
            self.peak = max(self.peak, self.active)
            nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._exchange(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.active -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _exchange(self, stream: trio.SocketStream) -> None:
        limits = self.limits
        head: bytes | None = None
        with trio.move_on_after(limits.head_timeout_s):
            try:
                head = await read_head(stream, limits.max_head_bytes)
            except ValueError:
                reply = text("431 Request Header Fields Too Large", "request head too large\n")
                with trio.move_on_after(limits.response_timeout_s):
                    await stream.send_all(reply.encode())
                return
        if head is None:  # idle past the timeout, or closed before a whole head
            return
        reply = respond(head, port=self.port, status=self.status, routes=self.routes)
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
    """Serve until cancelled. Reports the ControlServer (its `port`) via task_status and
    writes the port to `control_file` (0600); removes that file on the way out."""
    limits = limits or ControlLimits.from_rlimit()
    listeners = await trio.open_tcp_listeners(port, host=CONTROL_HOST, backlog=LISTEN_BACKLOG)
    bound = int(listeners[0].socket.getsockname()[1])
    server = ControlServer(status, port=bound, limits=limits, routes=routes)
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
