"""The daemon's local control endpoint: HTTP/1.0 on 127.0.0.1, read-only.

    GET /status    one JSON object (what `gossipmed status` prints)
    GET /metrics   the same numbers in Prometheus text format

Bound to loopback only and read-only (no command changes the daemon), so it needs no
authentication; the port is written to SITE_DIR/control.json for clients to find. Requests
are tiny and bounded (request head <= 8 KiB, 5 s to send it), so a stuck client never
holds the daemon's trio loop.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from gossipmed.checkpoint import atomic_write_json
from gossipmed.errors import GossipmedError

CONTROL_HOST = "127.0.0.1"
MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT_S = 5.0
CONTROL_VERSION = 1

StatusProvider = Callable[[], dict[str, Any]]


class DaemonNotRunning(GossipmedError):
    """No daemon answers on the site's control endpoint."""


# --- server ------------------------------------------------------------------------------


async def _read_head(stream: trio.SocketStream) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        chunk = await stream.receive_some(1024)
        if not chunk:
            break
        head += chunk
        if len(head) > MAX_REQUEST_HEAD:
            raise ValueError("request head too large")
    return head


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def handle_request(path: str, status: StatusProvider) -> bytes:
    """The whole response for one GET path (separate from the socket code for tests)."""
    route = path.split("?", 1)[0]
    if route in ("/status", "/"):
        body = json.dumps(status(), sort_keys=True, allow_nan=False).encode()
        return _response("200 OK", "application/json", body)
    if route == "/metrics":
        return _response(
            "200 OK", "text/plain; version=0.0.4", prometheus_text(status()).encode("utf-8")
        )
    return _response("404 Not Found", "text/plain", b"not found: try /status or /metrics\n")


async def serve_control(
    status: StatusProvider,
    *,
    port: int = 0,
    control_file: Path | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port via task_status and control_file."""
    listeners = await trio.open_tcp_listeners(port, host=CONTROL_HOST)
    bound = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                head = await _read_head(stream)
                line = head.split(b"\n", 1)[0].decode("latin-1").strip().split()
                if len(line) < 2 or line[0] != "GET":
                    reply = _response("405 Method Not Allowed", "text/plain", b"GET only\n")
                else:
                    reply = handle_request(line[1], status)
                await stream.send_all(reply)
        except (trio.TooSlowError, trio.BrokenResourceError, ValueError, OSError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

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
    try:
        await trio.serve_listeners(handler, listeners, task_status=task_status)
    finally:
        if control_file is not None:
            _remove_if_ours(control_file)


def _remove_if_ours(control_file: Path) -> None:
    try:
        info = json.loads(control_file.read_text(encoding="utf-8"))
        if info.get("pid") == os.getpid():
            control_file.unlink()
    except (OSError, ValueError):
        pass


# --- client ------------------------------------------------------------------------------


def read_control_file(control_file: Path) -> dict[str, Any]:
    try:
        info = json.loads(control_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DaemonNotRunning(
            f"{control_file} not found: is the daemon running (`gossipmed run`)?"
        ) from None
    except (OSError, ValueError) as exc:
        raise DaemonNotRunning(f"cannot read {control_file}: {exc}") from exc
    if not isinstance(info, dict) or not isinstance(info.get("port"), int):
        raise DaemonNotRunning(f"{control_file} does not name a control port")
    return info


def fetch(control_file: Path, path: str = "/status", *, timeout: float = 5.0) -> bytes:
    """GET `path` from the daemon whose control file this is."""
    info = read_control_file(control_file)
    url = f"http://{CONTROL_HOST}:{info['port']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bytes(resp.read())
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DaemonNotRunning(
            f"no daemon answers at {url} (pid {info.get('pid')}): {exc}; "
            "it may have stopped or crashed (see its daemon.log)"
        ) from exc


def fetch_status(control_file: Path, *, timeout: float = 5.0) -> dict[str, Any]:
    raw = fetch(control_file, "/status", timeout=timeout)
    try:
        status = json.loads(raw)
    except ValueError as exc:
        raise DaemonNotRunning(f"control endpoint answered non-JSON: {exc}") from exc
    if not isinstance(status, dict):
        raise DaemonNotRunning("control endpoint answered something other than an object")
    return status


# --- Prometheus ----------------------------------------------------------------------------


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: Any) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float) and math.isfinite(value):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return None


def prometheus_text(status: Mapping[str, Any]) -> str:
    site = _label(str(status.get("site", "")))
    lines: list[str] = []

    def gauge(name: str, help_text: str, value: Any, labels: str = "") -> None:
        num = _num(value)
        if num is None:
            return
        if not any(line.startswith(f"# HELP {name} ") for line in lines):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
        lines.append(f'{name}{{site="{site}"{labels}}} {num}')

    gauge("gossipmed_round", "round in progress", status.get("round"))
    gauge("gossipmed_rounds_completed", "rounds completed since start", status.get("completed"))
    eps = status.get("epsilon") or {}
    gauge("gossipmed_epsilon_spent", "privacy budget spent (epsilon)", eps.get("spent"))
    gauge("gossipmed_epsilon_budget", "privacy budget (epsilon)", eps.get("budget"))
    traffic = status.get("bytes") or {}
    gauge("gossipmed_bytes_sent", "envelope bytes delivered", traffic.get("sent"))
    gauge("gossipmed_bytes_received", "envelope bytes accepted", traffic.get("received"))
    gauge("gossipmed_rejected", "inbound messages rejected", status.get("rejected"))
    gauge("gossipmed_send_failures", "sends given up at a round deadline", status.get("failures"))
    last = status.get("last_metrics") or {}
    for key in ("train_loss", "eval_loss", "accuracy", "consensus_distance", "seconds"):
        gauge(f"gossipmed_last_{key}", f"{key} of the last completed round", last.get(key))
    now = time.time()
    for peer in status.get("peers") or []:
        labels = f',peer="{_label(str(peer.get("name", "")))}"'
        gauge("gossipmed_peer_connected", "libp2p connection open", peer.get("connected"), labels)
        heard = peer.get("last_heard")
        if isinstance(heard, int | float):
            gauge("gossipmed_peer_seconds_since_heard", "age of last update", now - heard, labels)
    return "\n".join(lines) + "\n"
