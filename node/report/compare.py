"""Runs side by side: one row per run directory (simulation, site or cluster folder), from
the same summary `gossipmed inspect` prints for one run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from node.report.summary import inspect_path


def compare_row(path: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers that tell two runs apart: setting, final accuracy and cost."""
    final = summary.get("final") or {}
    gossip = final.get("gossip") or {}
    topo = summary.get("topology") or {}
    robust = summary.get("robustness") or {}
    per_round = summary.get("seconds_per_round") or {}
    return {
        "run": str(path),
        "topology": topo.get("kind"),
        "sites": topo.get("nodes"),
        "gossip_steps": topo.get("gossip_steps"),
        "aggregation": robust.get("aggregation"),
        "codec": robust.get("codec"),
        "rounds": summary.get("rounds"),
        "accuracy_mean": gossip.get("accuracy_mean"),
        "accuracy_min": gossip.get("accuracy_min"),
        "accuracy_max": gossip.get("accuracy_max"),
        "eval_loss_mean": gossip.get("eval_loss_mean"),
        "consensus_distance": gossip.get("consensus_distance"),
        "epsilon_max": gossip.get("epsilon_max"),
        "bytes_sent_total": gossip.get("bytes_sent_total"),
        "local_accuracy_mean": (final.get("local") or {}).get("accuracy_mean"),
        "central_accuracy_mean": (final.get("central") or {}).get("accuracy_mean"),
        "seconds_per_round": per_round.get("gossip"),
    }


def compare_runs(paths: Sequence[Path]) -> list[dict[str, Any]]:
    return [compare_row(p, inspect_path(p)) for p in paths]


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def print_comparison(rows: Sequence[Mapping[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="runs side by side (final = last evaluated round)")
    table.add_column("run", overflow="fold")
    columns = (
        "topology",
        "rounds",
        "acc mean",
        "acc min-max",
        "eval loss",
        "consensus D",
        "epsilon",
        "MiB sent",
        "local-only acc",
        "centralized acc",
        "s/round",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        topo = "-" if row["topology"] is None else f"{row['topology']} ({row['sites']})"
        mib = row["bytes_sent_total"]
        table.add_row(
            row["run"],
            topo,
            _fmt(row["rounds"], "d"),
            _fmt(row["accuracy_mean"]),
            f"{_fmt(row['accuracy_min'])}-{_fmt(row['accuracy_max'])}",
            _fmt(row["eval_loss_mean"]),
            _fmt(row["consensus_distance"], ".2e"),
            _fmt(row["epsilon_max"], ".2f"),
            "-" if mib is None else f"{mib / (1 << 20):.2f}",
            _fmt(row["local_accuracy_mean"]),
            _fmt(row["central_accuracy_mean"]),
            _fmt(row["seconds_per_round"], ".2f"),
        )
    Console(width=max(150, Console().width)).print(table)
