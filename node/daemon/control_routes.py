"""What the control endpoint serves: a table from path to page, and the page builders.

Kept apart from the socket code (node.daemon.control_server) so a new page is one entry in a
table and every page gets the server's connection cap, timeouts and Host check without
repeating them.

    GET /                the dashboard (node/report/dashboard/: HTML, JS and CSS shipped as
    GET /dashboard.js    package data, no external resource); it polls /dashboard.json
    GET /dashboard.css
    GET /dashboard.json  status + the site's recent metrics (node.report.dashboard)
    GET /status          the status JSON;  GET /metrics  Prometheus text

Every response forbids framing and any resource from elsewhere (Content-Security-Policy), so
the page cannot be made to load or send anything off the machine. Only the page's own files
(`PUBLIC_PATHS`: code, no data) are served without the start's token
(node.daemon.control_auth); the server refuses every other path without it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.report.dashboard import ASSETS, asset, encode, site_snapshot
from node.report.history import MetricsTail

StatusProvider = Callable[[], dict[str, Any]]
History = Callable[[], Mapping[str, list[list[Any]]]]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Response:
    status: str  # e.g. "200 OK"
    content_type: str
    body: bytes

    def encode(self) -> bytes:
        """HTTP/1.0 wire form; every response closes its connection."""
        head = (
            f"HTTP/1.0 {self.status}\r\n"
            f"Content-Type: {self.content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            "Cache-Control: no-store\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            f"Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\n"
            "X-Frame-Options: DENY\r\n"
            "Referrer-Policy: no-referrer\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode("ascii") + self.body


Route = Callable[[StatusProvider], Response]


def text(status: str, message: str) -> Response:
    return Response(status, "text/plain; charset=utf-8", message.encode("utf-8"))


def status_page(status: StatusProvider) -> Response:
    body = json.dumps(status(), sort_keys=True, allow_nan=False).encode()
    return Response("200 OK", "application/json", body)


def metrics_page(status: StatusProvider) -> Response:
    return Response(
        "200 OK", "text/plain; version=0.0.4", prometheus_text(status()).encode("utf-8")
    )


def asset_path(name: str) -> str:
    return "/" if name == "index.html" else f"/{name}"


# What a browser loads before its script can send the token from the URL fragment.
PUBLIC_PATHS = frozenset(asset_path(name) for name in ASSETS)


def asset_routes() -> dict[str, Route]:
    """`/` and the page's script and style sheet (read once)."""
    routes: dict[str, Route] = {}
    for name, content_type in ASSETS.items():
        routes[asset_path(name)] = _fixed(Response("200 OK", content_type, asset(name)))
    return routes


def _fixed(page: Response) -> Route:
    def route(_status: StatusProvider) -> Response:
        return page

    return route


def dashboard_routes(history: History | None = None) -> dict[str, Route]:
    """The dashboard of a daemon: its status and `history()` (rows of its metrics)."""

    def data(status: StatusProvider) -> Response:
        rows = history() if history is not None else {}
        return Response("200 OK", "application/json", encode(site_snapshot(status(), rows)))

    return {**asset_routes(), "/dashboard.json": data}


def site_routes(metrics_file: Path) -> dict[str, Route]:
    """Everything a daemon serves, the dashboard's history read from its metrics file."""
    return {**DEFAULT_ROUTES, **dashboard_routes(MetricsTail(metrics_file).rows)}


def directory_routes() -> dict[str, Route]:
    """`gossipmed dashboard PATH`: the status provider is the folder's snapshot itself."""

    def snapshot(status: StatusProvider) -> Response:
        return Response("200 OK", "application/json", encode(status()))

    return {**asset_routes(), "/dashboard.json": snapshot, "/status": snapshot}


DEFAULT_ROUTES: Mapping[str, Route] = {
    **dashboard_routes(),
    "/status": status_page,
    "/metrics": metrics_page,
}


def route_response(
    path: str, status: StatusProvider, routes: Mapping[str, Route] = DEFAULT_ROUTES
) -> Response:
    """The page for one GET path; the query string is ignored."""
    page = routes.get(path.split("?", 1)[0])
    if page is None:
        return text("404 Not Found", "not found: try /, /status or /metrics\n")
    return page(status)


def handle_request(path: str, status: StatusProvider) -> bytes:
    """The whole response for one GET path with the default routes (for tests)."""
    return route_response(path, status).encode()


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
    spent = status.get("phase") == "budget_spent"  # secure aggregation: no further rounds
    gauge("gossipmed_budget_spent", "1 when the site has stopped with its budget spent", spent)
    traffic = status.get("bytes") or {}
    gauge("gossipmed_bytes_sent", "envelope bytes delivered", traffic.get("sent"))
    gauge("gossipmed_bytes_received", "envelope bytes accepted", traffic.get("received"))
    gauge("gossipmed_rejected", "inbound messages rejected", status.get("rejected"))
    gauge("gossipmed_send_failures", "sends given up at a round deadline", status.get("failures"))
    last = status.get("last_metrics") or {}
    for key in (
        "train_loss",
        "eval_loss",
        "accuracy",
        "accuracy_norm",
        "eval_perplexity",
        "consensus_distance",
        "seconds",
    ):
        gauge(f"gossipmed_last_{key}", f"{key} of the last completed round", last.get(key))
    now = time.time()
    for peer in status.get("peers") or []:
        labels = f',peer="{_label(str(peer.get("name", "")))}"'
        gauge("gossipmed_peer_connected", "libp2p connection open", peer.get("connected"), labels)
        heard = peer.get("last_heard")
        if isinstance(heard, int | float):
            gauge("gossipmed_peer_seconds_since_heard", "age of last update", now - heard, labels)
    return "\n".join(lines) + "\n"
