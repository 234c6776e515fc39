"""`gossipmed compare RUN RUN...`: runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="put several runs side by side (simulation, site or cluster folders)",
        description=(
            "Read each RUN as `gossipmed inspect` does (a simulation run directory, a site "
            "folder or a cluster folder) and print one row per run: topology and sites, "
            "rounds, the last evaluated round's accuracy (mean, min-max) and eval loss, "
            "consensus distance, epsilon spent, MiB sent, the local-only and centralized "
            "baselines' accuracy when the run has them, and seconds per round. Use it to pick "
            "a topology, rule or codec from several `simulate` runs."
        ),
    )
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run, site or cluster folder")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gossipmed.strict_json import dumps
    from node.report.compare import compare_runs, print_comparison

    rows = compare_runs(args.runs)
    if args.json:
        print(dumps(rows, indent=2))
        return 0
    print_comparison(rows)
    return 0
