"""Client side of the control endpoint: find the port and this start's token in
SITE/control.json (0600: only the site's owner reads it) and GET a page with the token.

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
from node.daemon.control_auth import auth_header, dashboard_url

CONTROL_FILE = "control.json"
"""In the site folder while the daemon runs: its control port and this start's token."""

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


def token_of(info: dict[str, Any], control_file: Path) -> str:
    token = info.get("token")
    if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable():
        raise DaemonNotRunning(
            f"{control_file} holds no token: the daemon predates token checks; restart it"
        )
    return token


def site_dashboard_url(control_file: Path) -> str:
    """The daemon's dashboard address with this start's token in the fragment."""
    info = read_control_file(control_file)
    return dashboard_url(CONTROL_HOST, info["port"], token_of(info, control_file))


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(control_file: Path, path: str = "/status", *, timeout: float = 5.0) -> bytes:
    """GET `path` from the daemon whose control file this is."""
    info = read_control_file(control_file)
    url = f"http://{CONTROL_HOST}:{info['port']}{path}"
    request = urllib.request.Request(url, headers=dict([auth_header(token_of(info, control_file))]))
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
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
