"""Client side of the control endpoint: find the port in SITE/control.json and GET a page.

The answer is read with a size cap (whatever listens on that port is not necessarily our
daemon), proxies from the environment are ignored (the request must stay on loopback), and
urllib sends `Host: 127.0.0.1:PORT`, which the server requires.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gossipmed.errors import GossipmedError

CONTROL_HOST = "127.0.0.1"
MAX_RESPONSE_BYTES = 8 << 20


class DaemonNotRunning(GossipmedError):
    """No daemon answers on the site's control endpoint."""


def read_control_file(control_file: Path) -> dict[str, Any]:
    try:
        info = json.loads(control_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DaemonNotRunning(
            f"{control_file} not found: is the daemon running (`gossipmed run`)?"
        ) from None
    except (OSError, ValueError) as exc:
        raise DaemonNotRunning(f"cannot read {control_file}: {exc}") from exc
    port = info.get("port") if isinstance(info, dict) else None
    if type(port) is not int or not 0 < port < 65536:
        raise DaemonNotRunning(f"{control_file} does not name a control port")
    return dict(info)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(control_file: Path, path: str = "/status", *, timeout: float = 5.0) -> bytes:
    """GET `path` from the daemon whose control file this is."""
    info = read_control_file(control_file)
    url = f"http://{CONTROL_HOST}:{info['port']}{path}"
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            body = bytes(resp.read(MAX_RESPONSE_BYTES + 1))
    except urllib.error.HTTPError as exc:
        raise DaemonNotRunning(
            f"the control endpoint at {url} answered {exc.code} {exc.reason}"
        ) from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DaemonNotRunning(
            f"no daemon answers at {url} (pid {info.get('pid')}): {exc}; "
            "it may have stopped or crashed (see its daemon.log)"
        ) from exc
    if len(body) > MAX_RESPONSE_BYTES:
        raise DaemonNotRunning(f"the answer from {url} exceeds {MAX_RESPONSE_BYTES} bytes")
    return body


def fetch_status(control_file: Path, *, timeout: float = 5.0) -> dict[str, Any]:
    raw = fetch(control_file, "/status", timeout=timeout)
    try:
        status = json.loads(raw)
    except ValueError as exc:
        raise DaemonNotRunning(f"control endpoint answered non-JSON: {exc}") from exc
    if not isinstance(status, dict):
        raise DaemonNotRunning("control endpoint answered something other than an object")
    return status
