"""`gossipmed topology`: build a graph, report how fast gossip mixes on it, plot or save it."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from gossipmed.strict_json import dumps
from topology.graphs import KINDS, build_graph, graph_schedule
from topology.mixing import DEFAULT_RULE, RULES


def add_graph_arguments(parser: argparse.ArgumentParser, *, nodes_required: bool) -> None:
    """Flags shared by every command that builds a topology (topology, consortium, simulate)."""
    parser.add_argument("--nodes", type=int, required=nodes_required, help="number of sites")
    parser.add_argument(
        "--degree", type=int, help="degree for random-regular / small-world (default 4)"
    )
    parser.add_argument(
        "--p",
        type=float,
        help="edge probability (erdos-renyi, default 2 ln(n)/n) or rewiring (small-world, 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for random graphs (default 0)")
    parser.add_argument(
        "--file", type=Path, help="graph file for kind 'file': edge list, .json or .graphml"
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "topology",
        help="build a gossip graph and report its mixing speed",
        description=(
            "Build a topology, compute its mixing matrix and spectral gap, and predict how many "
            "gossip rounds bring the sites within 1e-3 of consensus. lambda2 is the second "
            "largest eigenvalue modulus of W (for the time-varying one-peer-exponential graph, "
            "the per-round rate over one period); predicted_rounds = ceil(ln(1e-3)/ln(lambda2)) "
            "counts single exchanges; auto_gossip_steps is how many exchanges per round "
            "`simulate` and `run` make by default (the fewest with lambda2^k <= 0.2)."
        ),
    )
    p.add_argument(
        "kind",
        nargs="?",
        choices=KINDS,
        metavar="KIND",
        help=f"one of: {', '.join(KINDS)} (omit with --compare)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="one row per built-in kind for --nodes sites (default 16): edges, degree, "
        "diameter, lambda2, predicted exchanges to consensus and the auto exchanges per round",
    )
    add_graph_arguments(p, nodes_required=False)
    p.add_argument(
        "--mixing", choices=RULES, default=DEFAULT_RULE, help="mixing rule (default %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="draw the graph to a PNG")
    p.add_argument("--save", type=Path, metavar="GRAPH.json", help="save nodes/edges as JSON")
    p.set_defaults(func=run)


COMPARE_NODES = 16


def compare_rows(*, nodes: int, seed: int, degree: int | None, mixing: str) -> list[dict[str, Any]]:
    """Every built-in kind (not `file`) summarised for one consortium size; a kind that cannot
    be built for `nodes` (a hypercube of 12) gets its reason instead of numbers."""
    from topology.errors import TopologyError
    from topology.summary import summarize

    rows: list[dict[str, Any]] = []
    for kind in (k for k in KINDS if k != "file"):
        try:
            schedule = graph_schedule(kind, nodes=nodes, seed=seed, degree=degree)
            doc = summarize(kind, schedule, rule=mixing).to_dict()
        except TopologyError as exc:
            rows.append({"kind": kind, "nodes": nodes, "error": " ".join(str(exc).split())})
            continue
        if math.isinf(doc["predicted_rounds"]):
            doc["predicted_rounds"] = None
        rows.append(doc)
    return rows


def run_compare(args: argparse.Namespace) -> int:
    from gossipmed.errors import ConfigError

    if args.file or args.save or args.plot:
        raise ConfigError("--compare takes no --file, --save or --plot")
    nodes = args.nodes or COMPARE_NODES
    rows = compare_rows(nodes=nodes, seed=args.seed, degree=args.degree, mixing=args.mixing)
    if args.json:
        print(dumps(rows))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"topologies for {nodes} sites ({args.mixing} mixing)")
    table.add_column("topology", no_wrap=True)
    for col in ("edges", "max degree", "diameter", "lambda2", "exchanges", "auto k"):
        table.add_column(col, justify="right")
    for row in rows:
        if "error" in row:
            table.add_row(row["kind"], "-", "-", "-", "-", "-", "-")
            continue
        predicted = row["predicted_rounds"]
        table.add_row(
            row["kind"],
            str(row["edges"]),
            str(row["max_degree"]),
            str(row["diameter"]),
            f"{row['lambda2']:.4f}",
            "never" if predicted is None else str(predicted),
            str(row["auto_gossip_steps"]),
        )
    console = Console(width=max(100, Console().width))
    console.print(table)
    for row in rows:
        if "error" in row:
            console.print(f"{row['kind']}: {row['error']}")
    console.print(
        "exchanges = predicted gossip exchanges to shrink disagreement 1000x: "
        "ceil(ln 1e-3 / ln λ2); auto k = exchanges per round that simulate and run pick by "
        "default (λ2^k <= 0.2)"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from gossipmed.errors import ConfigError
    from topology.graph_io import save_graph
    from topology.summary import summarize

    if args.compare:
        if args.kind is not None:
            raise ConfigError("give a KIND or --compare, not both")
        return run_compare(args)
    if args.kind is None:
        raise ConfigError("give a KIND (e.g. ring) or --compare")

    kwargs: dict[str, Any] = {
        "nodes": args.nodes,
        "degree": args.degree,
        "p": args.p,
        "seed": args.seed,
        "path": args.file,
    }
    graph = build_graph(args.kind, **kwargs)
    schedule = graph_schedule(args.kind, **kwargs)
    summary = summarize(args.kind, schedule, rule=args.mixing)
    if args.save:
        save_graph(graph, args.save)
    if args.plot:
        from node.report.graph_plot import plot_graph

        title = f"{args.kind}: {summary.nodes} nodes, λ2 = {summary.lambda2:.4f}"
        plot_graph(graph, args.plot, title=title, kind=args.kind)
    doc = summary.to_dict()
    if args.json:
        if math.isinf(doc["predicted_rounds"]):
            doc["predicted_rounds"] = None
        print(dumps(doc))
        return 0
    _print_table(doc, saved=args.save, plot=args.plot)
    return 0


def _print_table(doc: dict[str, Any], *, saved: Path | None, plot: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"topology: {doc['kind']}", show_header=False)
    table.add_column("quantity", style="bold")
    table.add_column("value")
    for key, value in doc.items():
        if key == "kind":
            continue
        text = f"{value:.4f}" if isinstance(value, float) and key != "tolerance" else str(value)
        table.add_row(key, text)
    console = Console()
    console.print(table)
    if saved:
        console.print(f"graph saved to {saved}")
    if plot:
        console.print(f"plot written to {plot}")
