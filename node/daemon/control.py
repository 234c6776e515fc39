"""The daemon's local control endpoint: HTTP/1.0 on 127.0.0.1, read-only.

    GET /status    one JSON object (what `gossipmed status` prints)
    GET /metrics   the same numbers in Prometheus text format

Bound to loopback only and read-only (no request changes the daemon). Loopback still reaches
every local account and every page of a local browser, so every page with data needs the
fresh token each start writes with the port into SITE_DIR/control.json (0600;
node.daemon.control_auth), and the server caps concurrent connections below the
file-descriptor limit (evicting the oldest connection without the token at the cap), times out
idle clients and checks the Host header (node.daemon.control_server). Pages:
node.daemon.control_routes; client: node.daemon.control_client. This module gathers their
public names.
"""

from __future__ import annotations

from node.daemon.control_client import (
    MAX_RESPONSE_BYTES,
    DaemonNotRunning,
    fetch,
    fetch_status,
    read_control_file,
)
from node.daemon.control_routes import (
    DEFAULT_ROUTES,
    Response,
    Route,
    StatusProvider,
    handle_request,
    prometheus_text,
)
from node.daemon.control_server import (
    CONTROL_HOST,
    CONTROL_VERSION,
    HEAD_TIMEOUT_S,
    MAX_REQUEST_HEAD,
    RESPONSE_TIMEOUT_S,
    ControlLimits,
    ControlServer,
    connection_cap,
    serve_control,
)

__all__ = [
    "CONTROL_HOST",
    "CONTROL_VERSION",
    "DEFAULT_ROUTES",
    "HEAD_TIMEOUT_S",
    "MAX_REQUEST_HEAD",
    "MAX_RESPONSE_BYTES",
    "RESPONSE_TIMEOUT_S",
    "ControlLimits",
    "ControlServer",
    "DaemonNotRunning",
    "Response",
    "Route",
    "StatusProvider",
    "connection_cap",
    "fetch",
    "fetch_status",
    "handle_request",
    "prometheus_text",
    "read_control_file",
    "serve_control",
]
