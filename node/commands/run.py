"""`gossipmed run`: the site's peer daemon, until stopped (SIGINT/SIGTERM) or `rounds` done."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run this site's peer daemon (libp2p) until stopped",
        description=(
            "Read SITE_DIR/site.toml (listen addresses, consortium file, [daemon], [gossip], "
            "[data] [adapter] [dp] [train]) and run gossip rounds with the site's graph "
            "neighbours over libp2p (Noise + yamux). Resumes from SITE_DIR/state after a "
            "crash; the privacy ledger is SITE_DIR/privacy/ledger.json. Status: `gossipmed "
            "status --site SITE_DIR`. Signals: SIGINT/SIGTERM stop it cleanly, SIGHUP reloads "
            "the consortium file (revocations, addresses). Under secure aggregation a site "
            "whose privacy budget is spent runs no further rounds: status phase "
            "budget_spent, and exit 0 when [daemon] rounds is set."
        ),
        epilog=(
            "Exit codes: 0 stopped (signal, or its rounds are done); 1 crashed while running "
            "(restart it: it resumes from its last checkpoint); 2 bad configuration, keys, "
            "consortium file, checkpoint or privacy ledger, a port already in use, or the site "
            "folder held by another process (its PID is named; SITE_DIR/site.lock) (do not "
            "restart: fix it first); a checkpoint whose round is invalid (at or above 2**40) "
            "is refused this way before the privacy ledger is opened, so nothing is charged. "
            "Nothing a peer sends makes the daemon exit: refused messages and failed rounds "
            "are audited and survived; a site that reaches round 2**40 - 1 stops with exit 0 "
            "(audited)."
        ),
    )
    p.add_argument("--site", type=Path, required=True, metavar="SITE_DIR", help="site folder")
    p.add_argument("--log-file", type=Path, help="append logs here instead of stderr")
    p.add_argument("--verbose", action="store_true", help="debug logging (libp2p included)")
    p.add_argument("--device", help="override [compute] device: auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="override [compute] base_dtype (the adapter and DP arithmetic stay float32)",
    )
    p.set_defaults(func=run)


def with_compute(settings: Any, *, device: str | None, dtype: str | None) -> Any:
    """The settings with the command line's device and dtype, when given."""
    import dataclasses

    compute = settings.learning.compute
    changes = {k: v for k, v in (("device", device), ("base_dtype", dtype)) if v is not None}
    if not changes:
        return settings
    learning = dataclasses.replace(
        settings.learning, compute=dataclasses.replace(compute, **changes)
    )
    return dataclasses.replace(settings, learning=learning)


def run(args: argparse.Namespace) -> int:
    from node.daemon.config import load_daemon_settings
    from node.daemon.process import configure_logging, run_daemon

    settings = with_compute(load_daemon_settings(args.site), device=args.device, dtype=args.dtype)
    configure_logging(args.log_file, verbose=args.verbose)
    return run_daemon(settings)
