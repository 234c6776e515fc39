"""`gossipmed inspect`: per-round convergence table, baseline comparison and plot of a run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gossipmed.strict_json import dumps


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarise a finished run (or a site / cluster directory)",
        description=(
            "Read metrics.jsonl from a simulation run directory, a daemon's site directory, or "
            "a directory of site directories, and print per round: accuracy (mean/min/max over "
            "sites), consensus distance D = sqrt(mean_i ||x_i - x̄||²), its measured "
            "contraction D(r)/D(r-1), epsilon and bytes; then gossip vs local-only vs "
            "centralized, and the measured contraction next to the topology's lambda2. "
            "Rounds are numbered from 1 here, in the daemon's logs, `status` and the "
            "dashboard; the `round` field of metrics.jsonl and of --json output counts from 0 "
            "(round 1 is the record with round 0). `gossipmed compare` puts several runs side "
            "by side."
        ),
    )
    p.add_argument("path", type=Path, metavar="PATH", help="run, site or cluster directory")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="write a PNG of the curves")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from node.report.summary import inspect_path

    summary = inspect_path(args.path)
    if args.plot:
        from node.report.plot import plot_run

        plot_run(summary, args.plot)
    if args.json:
        if args.plot:
            summary["plot"] = str(args.plot)
        print(dumps(summary, indent=2, sort_keys=True))
        return 0
    from node.report.summary import print_summary

    print_summary(summary)
    if args.plot:
        print(f"plot: {args.plot}")
    return 0
