"""One request to the control endpoint: parse its head, check its Host header and token,
and build the answer (the socket side is node.daemon.control_server)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from node.daemon.control_auth import AUTH_HEADER, presents
from node.daemon.control_routes import (
    PUBLIC_PATHS,
    Response,
    Route,
    StatusProvider,
    route_response,
    text,
)

log = logging.getLogger("node.daemon.control_server")

ALLOWED_HOSTS = ("127.0.0.1", "localhost")


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


def authorized(request: Request, token: str) -> bool:
    return presents(request.header(AUTH_HEADER), token)


def respond(
    head: bytes, *, port: int, status: StatusProvider, routes: Mapping[str, Route], token: str
) -> Response:
    """The answer to one complete request head; the Host and token checks come before any
    page is built."""
    try:
        request = parse_head(head)
    except ValueError:
        return text("400 Bad Request", "bad request\n")
    hosts = request.header("host")
    if len(hosts) != 1 or not host_allowed(hosts[0], port):
        return text("421 Misdirected Request", "Host must be 127.0.0.1 or localhost\n")
    if request.method != "GET":
        return text("405 Method Not Allowed", "GET only\n")
    if request.target.split("?", 1)[0] not in PUBLIC_PATHS and not authorized(request, token):
        return text(
            "401 Unauthorized",
            "token required: open the address `gossipmed status --url --site SITE_DIR` "
            "prints, or send the token from control.json as `Authorization: Bearer TOKEN`\n",
        )
    try:
        return route_response(request.target, status, routes)
    except Exception:  # a page's bug must not end the daemon
        log.exception("control endpoint: building %s failed", request.target)
        return text("500 Internal Server Error", "internal error (see the daemon log)\n")


def head_complete(data: bytes | bytearray) -> bool:
    return b"\r\n\r\n" in data or b"\n\n" in data


def head_presents_token(data: bytes, token: str) -> bool:
    """Whether `data` holds a whole request head that carries `token`."""
    if not head_complete(data):
        return False
    try:
        return authorized(parse_head(data), token)
    except ValueError:
        return False


async def read_head(
    stream: trio.abc.ReceiveStream, limit: int, head: bytearray | None = None
) -> bytes | None:
    """The request head, or None if the client closed first; ValueError past `limit`. The
    bytes read so far accumulate in `head`, where the accept loop can look at them."""
    head = bytearray() if head is None else head
    while not head_complete(head):
        if len(head) > limit:
            raise ValueError("request head too large")
        chunk = await stream.receive_some(1024)
        if not chunk:
            return None
        head += chunk
    return bytes(head)
