"""`gossipmed cluster up|status|down`: N real daemons on 127.0.0.1, one process per site."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from gossipmed.strict_json import dumps


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cluster",
        help="run N real site daemons on this machine (loopback)",
        description=(
            "Try the real deployment path on one machine: `up` makes N site folders and a "
            "consortium in DIR and starts one `gossipmed run` process per site on 127.0.0.1; "
            "`status` asks every daemon; `down` stops them (SIGTERM, then SIGKILL). "
            "`gossipmed inspect DIR` summarises the metrics of all sites."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True

    from topology.graphs import KINDS

    up = actions.add_parser("up", help="create site folders + consortium and start daemons")
    up.add_argument("--nodes", type=int, help="number of sites (>= 2), named site-00, ...")
    up.add_argument(
        "--names",
        metavar="A,B,C",
        help="comma-separated site names, one site each (instead of --nodes), e.g. "
        "st-marys,royal-free,addenbrookes",
    )
    up.add_argument(
        "--epsilon",
        type=float,
        help="each site's DP budget, [dp] epsilon (default: the learning default, 8)",
    )
    up.add_argument(
        "--topology", default="ring", choices=KINDS, metavar="KIND", help=", ".join(KINDS)
    )
    up.add_argument("--degree", type=int, help="degree for random-regular / small-world")
    up.add_argument("--dir", type=Path, required=True, help="cluster folder (new or empty)")
    up.add_argument("--dataset", default="notes", help="built-in dataset (default notes)")
    up.add_argument("--rounds", type=int, default=0, help="rounds per daemon (0: until down)")
    up.add_argument("--round-timeout", type=float, default=30.0, help="seconds (default 30)")
    up.add_argument("--steps", type=int, default=10, help="local DP steps per round")
    up.add_argument("--base-model", type=Path, help="local HF model folder (default: tiny base)")
    up.add_argument(
        "--toy-base",
        action="store_true",
        help="build a seconds-to-train toy base in DIR (for trying the mechanics only)",
    )
    up.add_argument("--wait", type=float, default=120.0, help="seconds to wait for status")
    up.add_argument("--json", action="store_true", help="print a JSON summary")
    up.set_defaults(func=run_up)

    st = actions.add_parser("status", help="status of every daemon of a cluster")
    st.add_argument("dir", type=Path, metavar="DIR")
    st.add_argument("--json", action="store_true", help="print a JSON list")
    st.set_defaults(func=run_status)

    down = actions.add_parser("down", help="stop every daemon of a cluster")
    down.add_argument("dir", type=Path, metavar="DIR")
    down.add_argument("--timeout", type=float, default=20.0, help="seconds before SIGKILL")
    down.add_argument("--json", action="store_true", help="print a JSON object")
    down.set_defaults(func=run_down)


def run_up(args: argparse.Namespace) -> int:
    from gossipmed.errors import ConfigError
    from node.daemon.cluster import (
        cluster_status,
        create_cluster,
        default_sections,
        ensure_toy_base,
        site_dashboard,
        start_cluster,
        toy_sections,
        wait_until,
    )

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if names is not None:
        if args.nodes is not None and args.nodes != len(names):
            raise ConfigError(f"--nodes {args.nodes} but --names gives {len(names)} names")
        args.nodes = len(names)
    if args.nodes is None:
        raise ConfigError("give --nodes N or --names A,B,...")
    if args.nodes < 2:
        raise ConfigError("a cluster needs at least 2 sites (--nodes or --names)")
    if args.epsilon is not None and not args.epsilon > 0:
        raise ConfigError("--epsilon must be > 0")
    directory: Path = args.dir
    base: str | None = str(args.base_model.resolve()) if args.base_model else None
    if args.toy_base:
        base = str(ensure_toy_base(directory.resolve() / "toy-base"))
    elif base is None:
        from gossipmed.learn.base_model import ensure_base_model

        base = str(ensure_base_model(progress=not args.json))  # build once, not N times

    def sections(i: int) -> dict[str, dict[str, Any]]:
        if args.toy_base:
            tables = toy_sections(
                index=i,
                nodes=args.nodes,
                base_model=Path(str(base)),
                rounds=args.rounds,
                round_timeout_s=args.round_timeout,
                steps=args.steps,
            )
        else:
            tables = default_sections(
                index=i,
                nodes=args.nodes,
                rounds=args.rounds,
                round_timeout_s=args.round_timeout,
                dataset=args.dataset,
                base_model=base,
                steps=args.steps,
            )
        if args.epsilon is not None:
            tables.setdefault("dp", {})["epsilon"] = args.epsilon
        return tables

    sites = create_cluster(
        directory,
        nodes=args.nodes,
        topology=args.topology,
        degree=args.degree,
        sections=sections,
        names=names,
    )
    procs = start_cluster(directory)
    started = time.monotonic()

    def all_up() -> bool:
        return all(s["up"] for s in cluster_status(directory)) or any(
            p.poll() not in (None, 0) for p in procs
        )

    if args.wait > 0:
        if args.json:
            wait_until(all_up, timeout=args.wait, interval=0.5, what="daemons to answer")
        else:
            from rich.console import Console

            with Console().status(f"starting {args.nodes} daemons (loading the model)..."):
                wait_until(all_up, timeout=args.wait, interval=0.5, what="daemons to answer")
    failed = [s.name for s, p in zip(sites, procs, strict=True) if p.poll() not in (None, 0)]
    dashboards = {s.name: site_dashboard(s) for s in sites}
    summary: dict[str, Any] = {
        "dir": str(directory),
        "sites": [s.name for s in sites],
        "pids": [p.pid for p in procs],
        "failed": failed,
        "startup_s": round(time.monotonic() - started, 2),
        "dashboards": dashboards,
    }
    if args.json:
        print(dumps(summary))
    else:
        print(f"started {len(sites)} daemons in {directory} ({args.topology} topology)")
        for s, p in zip(sites, procs, strict=True):
            print(f"  {s.name}  pid {p.pid}  log {s / 'daemon.log'}")
        if failed:
            print(f"FAILED to start: {', '.join(failed)} (see their daemon.log)")
        print_dashboards(dashboards)
        print(f"  all sites on one page: gossipmed dashboard {directory}")
        print("watch:")
        print(f"  gossipmed cluster status {directory}")
        print(f"  gossipmed status --site {sites[0]}")
        print(f"  gossipmed inspect {directory}")
        print(f"stop:  gossipmed cluster down {directory}")
    return 1 if failed else 0


def print_dashboards(urls: dict[str, str | None]) -> None:
    """Each serving daemon's page; the token in the #fragment is what the page needs."""
    serving = {name: url for name, url in urls.items() if url}
    if serving:
        print("dashboards (open on this machine; the token changes at every start):")
        width = max(len(name) for name in serving)
        for name, url in serving.items():
            print(f"  {name:<{width}}  {url}")


def describe_exit(record: dict[str, Any] | None) -> tuple[str, str]:
    """(state, last round) of a daemon that no longer answers."""
    if record is None:
        return "[red]not running[/red] (no exit record; see its daemon.log)", "-"
    last = record.get("last_round")
    rounds = "-" if last is None else str(last)
    outcome = record.get("outcome")
    if outcome == "done":
        return "[green]done[/green]", rounds
    if outcome == "stopped":
        return "stopped", rounds
    code = record.get("code")
    return (
        f"[red]{outcome}[/red] (exit {code}: {record.get('message') or 'see daemon.log'})",
        rounds,
    )


def run_status(args: argparse.Namespace) -> int:
    from node.daemon.cluster import cluster_status, read_cluster, site_dashboard
    from node.rounds import shown

    statuses = cluster_status(args.dir)
    sites, _doc = read_cluster(args.dir)
    urls = {s.name: site_dashboard(s.directory) for s in sites}
    if args.json:
        for s in statuses:
            s["dashboard"] = urls.get(s["site"])
        print(dumps(statuses, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "site",
        "state",
        "round",
        "phase",
        "rounds since start",
        "epsilon",
        "neighbours heard",
        "rejected",
    )
    for s in statuses:
        if not s["up"]:
            state, last = describe_exit(s.get("exit"))
            table.add_row(s["site"], state, last, "-", "-", "-", "-", "-")
            continue
        eps = (s.get("epsilon") or {}).get("spent")
        last_metrics = s.get("last_metrics") or {}
        heard = (
            f"{last_metrics.get('neighbours_heard')}/{last_metrics.get('neighbours_expected')}"
            if last_metrics
            else "-"
        )
        table.add_row(
            s["site"],
            "up",
            str(shown(s["round"])),
            s["phase"],
            str(s["completed"]),
            "-" if eps is None else f"{eps:.3f}",
            heard,
            str(s.get("rejected", 0)),
        )
    Console().print(table)
    print_dashboards(urls)
    return 0


def run_down(args: argparse.Namespace) -> int:
    from node.daemon.cluster import stop_cluster

    outcome = stop_cluster(args.dir, timeout=args.timeout)
    if args.json:
        print(dumps(outcome, sort_keys=True))
    else:
        for name, what in outcome.items():
            print(f"{name}: {what}")
    return 0
