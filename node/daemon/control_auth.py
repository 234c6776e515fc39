"""Who may read the control endpoint: the holder of a token written at start into the 0600
control file, or printed by `gossipmed dashboard`.

Loopback reaches every local account, so the port alone must not hand out a site's metrics.
Each start draws a fresh token from the OS CSPRNG. The CLI sends it as
`Authorization: Bearer TOKEN` (also what a Prometheus scrape config's `authorization`
section sends); the browser gets it in the URL fragment (`#token=...`, never sent to the
server, not in logs or Referer), and the page's script keeps it in sessionStorage, which is
scoped to this origin, and sends it as the same header. No cookies.

Only the page's own files (HTML, script, style sheet: code, no data) are served without it;
everything that carries a site's state needs it.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Iterable
from pathlib import Path

TOKEN_BYTES = 32
AUTH_HEADER = "authorization"
SCHEME = "Bearer"


def new_token() -> str:
    """A fresh bearer token (256 bits from the OS CSPRNG)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def auth_header(token: str) -> tuple[str, str]:
    """The header a client sends."""
    return "Authorization", f"{SCHEME} {token}"


def presents(values: Iterable[str], token: str) -> bool:
    """Whether exactly one Authorization header carries `token` (compared in constant time)."""
    values = list(values)
    if len(values) != 1:
        return False
    scheme, _, offered = values[0].partition(" ")
    if scheme.lower() != SCHEME.lower():
        return False
    return hmac.compare_digest(offered.encode(), token.encode())


def dashboard_url(host: str, port: int, token: str) -> str:
    """The page's address with its token in the fragment (the part a browser keeps)."""
    return f"http://{host}:{port}/#token={token}"


def log_dashboard(log: logging.Logger, site_dir: Path, port: int, token: str) -> None:
    """The dashboard's address, with the token its page needs. The token goes only where the
    site's own files are (a terminal, the 0600 log file); the journal is readable by more
    accounts, so there the line points at `gossipmed status --url` instead."""
    from node.daemon import systemd
    from node.daemon.control_client import CONTROL_HOST

    if systemd.stderr_is_journal():
        log.info(
            "dashboard on http://%s:%d/ (its address with the token: gossipmed status --site %s "
            "--url)",
            CONTROL_HOST,
            port,
            site_dir,
        )
    else:
        log.info("dashboard: %s", dashboard_url(CONTROL_HOST, port, token))
