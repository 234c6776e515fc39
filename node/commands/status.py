"""`gossipmed status`: ask a running daemon (its 127.0.0.1 control endpoint) how it is doing."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from gossipmed.errors import ConfigError
from gossipmed.strict_json import dumps

WAIT_POLL_S = 0.5


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show a running daemon's round, peers, epsilon and traffic",
        description=(
            "Query the daemon of SITE_DIR over its local-only control endpoint (HTTP on "
            "127.0.0.1; its port and this start's token are in SITE_DIR/control.json, which "
            "only the site's owner can read; GET /status for JSON, /metrics for Prometheus, "
            "each with the header `Authorization: Bearer TOKEN`). With --url, print the "
            "dashboard's address with the token in its #fragment instead. Exit 2 when no "
            "daemon answers."
        ),
    )
    p.add_argument("--site", type=Path, required=True, metavar="SITE_DIR", help="site folder")
    p.add_argument("--json", action="store_true", help="print the raw status object")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=(
            "for a daemon just started: keep asking for up to SECONDS until it answers "
            "(default 0: ask once); gives up at once if it exits meanwhile"
        ),
    )
    p.add_argument(
        "--url",
        action="store_true",
        help=(
            "print the dashboard's address, http://127.0.0.1:PORT/#token=TOKEN, and exit: open "
            "it in a browser on this machine or through an SSH tunnel to the same port; the "
            "token changes at every start and the page keeps it for its tab only"
        ),
    )
    p.set_defaults(func=run)


def _age(ts: Any) -> str:
    return "never" if not isinstance(ts, int | float) else f"{time.time() - ts:.1f} s ago"


def _component(table: dict[str, Any], name_key: str) -> str:
    name = str(table.pop(name_key, "?"))
    params = ", ".join(f"{k} {v}" for k, v in table.items())
    return f"{name} ({params})" if params else name


def print_status(status: dict[str, Any]) -> None:
    """Rounds shown 1-based (node.rounds); --json keeps the endpoint's 0-based indices."""
    from rich.console import Console
    from rich.table import Table

    from node.rounds import shown

    console = Console(soft_wrap=True)  # a line that overflows stays one line (no mid-number wrap)
    eps = status.get("epsilon") or {}
    budget = eps.get("budget")
    spent = eps.get("spent")
    eps_text = "-" if spent is None else f"{spent:.3f}"
    if budget is not None:
        eps_text += f" / {budget:g}"
    console.print(
        f"[bold]{status['site']}[/bold] pid {status['pid']}  round {shown(status['round'])} "
        f"({status['phase']}), {status['completed']} completed since start  epsilon {eps_text}"
    )
    traffic = status.get("bytes") or {}
    console.print(
        f"sent {traffic.get('sent', 0) / 1e6:.2f} MB, received "
        f"{traffic.get('received', 0) / 1e6:.2f} MB, rejected {status.get('rejected', 0)}, "
        f"listen {' '.join(status.get('listen') or [])}"
    )
    gossip = status.get("gossip") or {}
    if gossip or status.get("gossip_steps"):
        codec = dict(gossip.get("codec") or {"name": "raw"})
        rule = dict(gossip.get("aggregation") or {"rule": "weighted"})
        console.print(
            f"exchanges per round {status.get('gossip_steps', 1)}, codec "
            f"{_component(codec, 'name')}, mixing rule {_component(rule, 'rule')}, drift "
            f"correction {(gossip.get('drift') or {}).get('name', 'none')}"
        )
        if status.get("restored"):
            console.print(f"restored from the checkpoint: {', '.join(status['restored'])}")
    secure = status.get("secure_aggregation") or {}
    if secure.get("enabled"):
        last_ex = secure.get("last_exchange") or {}
        if not last_ex:
            outcome = "no exchange yet"
        elif last_ex.get("securely_aggregated"):
            outcome = (
                f"round {shown(last_ex['round'])}: sum of {last_ex['contributors']} neighbours, "
                f"{last_ex['reconstructed']} reconstructed"
            )
        else:
            outcome = f"round {shown(last_ex['round'])}: skipped ({last_ex.get('skipped')})"
        console.print(
            f"secure aggregation: {outcome}; {secure.get('refused_frames', 0)} frames refused; "
            "consensus distance is sum-based"
        )
    if status.get("resumed"):
        res = status["resumed"]
        console.print(f"resumed after round {shown(res['round'])} (epsilon {res['epsilon']:.3f})")
    table = Table("neighbour", "connected", "last heard", "last round", "accepted")
    for peer in status.get("peers") or []:
        table.add_row(
            peer["name"],
            "yes" if peer.get("connected") else "no",
            _age(peer.get("last_heard")),
            "-" if peer.get("last_round") is None else str(shown(peer["last_round"])),
            str(peer.get("accepted", 0)),
        )
    console.print(table)
    last = status.get("last_metrics")
    if last:
        last = {**last, "round": shown(last["round"])}
        fields = (
            "round",
            "train_loss",
            "eval_loss",
            "accuracy",
            "accuracy_norm",
            "eval_perplexity",
            "consensus_distance",
            "seconds",
        )
        console.print(
            "last round: "
            + ", ".join(
                f"{k} {last[k]:.4g}" if isinstance(last.get(k), float) else f"{k} {last.get(k)}"
                for k in fields
                if last.get(k) is not None  # not measured (e.g. no accuracy for free text)
            )
        )


def run(args: argparse.Namespace) -> int:
    from node.daemon.control_client import CONTROL_FILE, DaemonNotRunning
    from node.daemon.exit_record import read_exit_record

    if not (args.wait >= 0 and math.isfinite(args.wait)):
        raise ConfigError("--wait takes a number of seconds >= 0")
    asked_at = time.time()
    deadline = time.monotonic() + args.wait
    while True:
        try:
            return _answer(args, control_file=args.site / CONTROL_FILE)
        except DaemonNotRunning as exc:
            record = read_exit_record(args.site)
            at = record.get("at") if record is not None else None
            ended_meanwhile = isinstance(at, int | float) and at >= asked_at
            if time.monotonic() < deadline and not ended_meanwhile:
                _pause()  # a starting daemon: no control file or port yet
                continue
            if record is None:
                raise
            raise DaemonNotRunning(f"{args.site.name} is not running; {last_run(record)}") from exc


def _pause() -> None:
    time.sleep(WAIT_POLL_S)


def last_run(record: dict[str, Any]) -> str:
    """How a stopped daemon last ended, from its exit record (node.daemon.exit_record)."""
    last = record.get("last_round")
    after = "before its first round" if last is None else f"after round {last}"  # as logged
    outcome = record.get("outcome", "ended")
    if outcome in ("done", "stopped"):
        return f"its last run {outcome} {after}"
    detail = record.get("message") or "see its daemon.log"
    return f"its last run {outcome} {after} (exit {record.get('code')}: {detail})"


def _answer(args: argparse.Namespace, *, control_file: Path) -> int:
    from node.daemon.control_client import fetch_status, site_dashboard_url

    if args.url:
        url = site_dashboard_url(control_file)
        fetch_status(control_file, timeout=args.timeout)  # the daemon answers
        print(url)
        return 0
    status = fetch_status(control_file, timeout=args.timeout)
    if args.json:
        print(dumps(status, sort_keys=True))
    else:
        print_status(status)
        print(f"dashboard: {site_dashboard_url(control_file)}")
    return 0
