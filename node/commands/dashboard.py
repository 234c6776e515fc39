"""`gossipmed dashboard PATH`: the daemon's live page for a run, site or cluster folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve a live dashboard of a run, site or cluster folder on 127.0.0.1",
        description=(
            "Serve, on 127.0.0.1 only, the page a daemon serves at / of its control endpoint, "
            "for a folder that `gossipmed inspect` reads: a simulation run directory, a site "
            "folder or a cluster folder. It draws the topology with each site coloured by its "
            "round and its epsilon, a table of the sites (live state from each running "
            "daemon's /status), and charts of accuracy, consensus distance, bytes and epsilon "
            "per round; the page refreshes itself. Read-only. Stop with Ctrl-C. It prints the "
            "page's address with a fresh token in its #fragment (only that address shows "
            "data: other local accounts get 401); the token changes at every start."
        ),
    )
    p.add_argument("path", type=Path, metavar="PATH", help="run, site or cluster folder")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any)")
    p.add_argument(
        "--no-live", action="store_true", help="do not ask running daemons for their /status"
    )
    p.add_argument("--json", action="store_true", help="print the page's data once and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gossipmed.errors import ConfigError
    from node.report.dashboard import DirectoryView, encode

    if not args.path.is_dir():
        raise ConfigError(f"{args.path} is not a folder")
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port must be a TCP port (0: any free one)")
    view = DirectoryView(args.path, live=not args.no_live)
    if args.json:
        print(encode(view.snapshot()).decode())
        return 0
    import trio

    trio.run(serve, view, args.port)
    return 0


async def serve(view: Any, port: int) -> None:
    import functools
    import signal

    import trio

    from node.daemon.control_auth import dashboard_url
    from node.daemon.control_client import CONTROL_HOST
    from node.daemon.control_routes import directory_routes
    from node.daemon.control_server import serve_control
    from node.report.dashboard import REFRESH_S

    async def refresh() -> None:
        while True:
            await trio.sleep(REFRESH_S)
            await trio.to_thread.run_sync(view.refresh, abandon_on_cancel=True)  # type: ignore[call-arg]

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(serve_control, view.snapshot, port=port, routes=directory_routes())
        )
        url = dashboard_url(CONTROL_HOST, server.port, server.token)
        print(f"dashboard of {view.path}: {url} (Ctrl-C to stop)", flush=True)
        nursery.start_soon(refresh)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return
