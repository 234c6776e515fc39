"""Read a run (simulation run dir, a daemon's site dir, or a cluster dir of site dirs) and
reduce its metrics records to per-round statistics and a final comparison.

Measured contraction of round r is D(r) / D(r-1), D the consensus distance of the round's
records combined as sqrt(mean of squares). With training off and a static topology it tends
to lambda2 of the mixing matrix; with training on, local steps pull sites apart again, so the
gap between the two says how much heterogeneity costs.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gossipmed.metrics import METRICS_FILE, MetricsError, RoundRecord, read_metrics
from gossipmed.strict_json import finite

CONTRACTION_FLOOR = 1e-5  # float32 states: round-off is ~1e-7 of their scale
RUN_LABELS = {"gossip": "gossip", "local": "local-only", "central": "centralized"}
BASELINE_PATHS = {
    "local": Path("baselines/local-only") / METRICS_FILE,
    "central": Path("baselines/centralized") / METRICS_FILE,
}


def load_run(path: Path) -> tuple[dict[str, list[RoundRecord]], dict[str, Any]]:
    """(records by run name, stored summary or {}) for any directory with metrics files."""
    if path.is_file():
        return {"gossip": read_metrics(path)}, {}
    if not path.is_dir():
        raise MetricsError(f"{path} is neither a run directory nor a metrics file")
    runs: dict[str, list[RoundRecord]] = {}
    if (path / METRICS_FILE).is_file():
        runs["gossip"] = read_metrics(path / METRICS_FILE)
    else:  # a cluster directory: one site directory per member
        site_files = sorted(path.glob(f"*/{METRICS_FILE}"))
        if not site_files:
            raise MetricsError(f"no {METRICS_FILE} in {path} or its subdirectories")
        runs["gossip"] = [rec for f in site_files for rec in read_metrics(f)]
    for name, rel in BASELINE_PATHS.items():
        if (path / rel).is_file():
            runs[name] = read_metrics(path / rel)
    stored: dict[str, Any] = {}
    if (path / "summary.json").is_file():
        try:
            stored = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise MetricsError(f"{path / 'summary.json'} is not JSON: {exc.msg}") from None
    return runs, stored


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "min": None, "max": None}
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def _rms(values: Sequence[float]) -> float | None:
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else None


def per_round(records: Sequence[RoundRecord]) -> list[dict[str, Any]]:
    by_round: dict[int, list[RoundRecord]] = defaultdict(list)
    for rec in records:
        by_round[rec.round].append(rec)
    rows: list[dict[str, Any]] = []
    previous: float | None = None
    for r in sorted(by_round):
        recs = by_round[r]
        acc = [x.accuracy for x in recs if x.accuracy is not None]
        acc_norm = [x.accuracy_norm for x in recs if x.accuracy_norm is not None]
        loss = [x.eval_loss for x in recs if x.eval_loss is not None]
        perplexity = [x.eval_perplexity for x in recs if x.eval_perplexity is not None]
        train = [x.train_loss for x in recs if x.train_loss is not None]
        dist = _rms([x.consensus_distance for x in recs if x.consensus_distance is not None])
        contraction = dist / previous if dist is not None and previous not in (None, 0.0) else None
        acc_stats = _stats(acc)
        rows.append(
            {
                "round": r,
                "sites": len(recs),
                "online": sum(1 for x in recs if x.online),
                "accuracy_mean": acc_stats["mean"],
                "accuracy_min": acc_stats["min"],
                "accuracy_max": acc_stats["max"],
                "accuracy_norm_mean": _stats(acc_norm)["mean"],
                "eval_loss_mean": _stats(loss)["mean"],
                "eval_loss_min": _stats(loss)["min"],
                "eval_loss_max": _stats(loss)["max"],
                "eval_perplexity_mean": _stats(perplexity)["mean"],
                "train_loss_mean": _stats(train)["mean"],
                "consensus_distance": dist,
                "consensus_scope": recs[0].consensus_scope,
                "contraction": contraction,
                "epsilon_max": max(x.epsilon for x in recs),
                "bytes_sent": sum(x.bytes_sent for x in recs),
                "bytes_received": sum(x.bytes_received for x in recs),
                "heard_fraction": (
                    sum(x.neighbours_heard for x in recs)
                    / max(1, sum(x.neighbours_expected for x in recs))
                ),
                "seconds_max": max(x.seconds for x in recs),
                **({"secure": _secure_round(recs)} if any(x.secure for x in recs) else {}),
            }
        )
        previous = dist
    return rows


def _secure_round(records: Sequence[RoundRecord]) -> dict[str, Any]:
    """Secure aggregation in one round: exchanges that gave a sum, were skipped (below the
    threshold or out of range: audited, nothing mixed), their contributors and how many
    dropped contributors the unmask phase reconstructed."""
    ran = [x for x in records if x.secure and x.online]
    summed = [x for x in ran if x.secure_contributors is not None]
    return {
        "aggregated": len(summed),
        "skipped": len(ran) - len(summed),
        "contributors": sum(x.secure_contributors or 0 for x in summed),
        "reconstructed": sum(x.secure_reconstructed or 0 for x in summed),
    }


def measured_contraction(rows: Sequence[Mapping[str, Any]], *, tail: float = 0.5) -> float | None:
    """Geometric mean of D(r)/D(r-1) over the last `tail` fraction of rounds (the transient
    of the first rounds, where faster eigenmodes still decay, is left out)."""
    dists = [row["consensus_distance"] or 0.0 for row in rows]
    floor = CONTRACTION_FLOOR * max(dists, default=0.0)
    # once D reaches float64 round-off its ratio is noise, not a property of the graph
    ratios = [
        row["contraction"]
        for row in rows
        if row["contraction"] and row["consensus_distance"] > floor
    ]
    if not ratios:
        return None
    kept = ratios[-max(1, int(len(ratios) * tail)) :]
    return math.exp(sum(math.log(x) for x in kept) / len(kept))


def final_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The last evaluated round's accuracy and loss, and the last consensus distance. A round
    is evaluated when it has an accuracy or, for free text, an eval loss."""
    evaluated = [
        row for row in rows if row["accuracy_mean"] is not None or row["eval_loss_mean"] is not None
    ]
    last = evaluated[-1] if evaluated else None

    def at_last(key: str) -> Any:
        return last.get(key) if last else None

    return {
        "round": at_last("round"),
        "accuracy_mean": at_last("accuracy_mean"),
        "accuracy_min": at_last("accuracy_min"),
        "accuracy_max": at_last("accuracy_max"),
        "accuracy_norm_mean": at_last("accuracy_norm_mean"),
        "eval_loss_mean": at_last("eval_loss_mean"),
        "eval_perplexity_mean": at_last("eval_perplexity_mean"),
        "consensus_distance": rows[-1]["consensus_distance"] if rows else None,
        "epsilon_max": rows[-1]["epsilon_max"] if rows else None,
        "bytes_sent_total": sum(row["bytes_sent"] for row in rows),
        **_secure_totals(rows),
    }


def _secure_totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    secure = [row["secure"] for row in rows if "secure" in row]
    if not secure:
        return {}
    keys = ("aggregated", "skipped", "contributors", "reconstructed")
    return {"secure": {k: sum(s[k] for s in secure) for k in keys}}


def summarize_run(
    runs: Mapping[str, Sequence[RoundRecord]], *, topology: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    tables = {name: per_round(records) for name, records in runs.items()}
    gossip = tables.get("gossip", [])
    return {
        "topology": dict(topology) if topology else None,
        "rounds": len(gossip),
        "per_round": tables,
        "final": {name: final_stats(rows) for name, rows in tables.items()},
        "contraction": expected_contraction(topology) | {"measured": measured_contraction(gossip)},
    }


def expected_contraction(topology: Mapping[str, Any] | None) -> dict[str, Any]:
    """lambda2 per exchange and, with several exchanges per round (node.round.peer), the per-round
    rate lambda2 ** gossip_steps that a run with training off should measure."""
    lam2 = topology.get("lambda2") if topology else None
    steps = int(topology.get("gossip_steps") or 1) if topology else 1
    return {
        "lambda2": lam2,
        "gossip_steps": steps,
        "expected": lam2**steps if isinstance(lam2, int | float) else None,
    }


def inspect_path(path: Path) -> dict[str, Any]:
    runs, stored = load_run(path)
    summary = summarize_run(runs, topology=stored.get("topology"))
    for key in ("wall_seconds", "seconds_per_round", "peak_rss_mib", "audit", "robustness"):
        if key in stored:
            summary[key] = stored[key]
    return summary


def json_safe(obj: Any) -> Any:
    """NaN/inf become null so the output is strict JSON (gossipmed.strict_json)."""
    return finite(obj)


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f}"


MAX_TABLE_ROWS = 40


def print_summary(summary: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(110, Console().width))
    rows = summary["per_round"].get("gossip", [])
    topo = summary.get("topology") or {}
    title = "gossip rounds"
    if topo:
        title += f" — {topo.get('kind')} topology, {topo.get('nodes')} sites"
    table = Table(title=title)
    # free text has no accuracy: its response loss (and perplexity) takes the accuracy's place
    scored = any(
        row["accuracy_mean"] is not None for rows_ in summary["per_round"].values() for row in rows_
    )
    quality = ("acc mean", "acc min", "acc max") if scored else ("eval loss", "perplexity")
    for col in (
        "round",
        "online",
        *quality,
        "consensus D",
        "D(r)/D(r-1)",
        "epsilon",
        "MiB sent",
        "heard",
    ):
        table.add_column(col, justify="right")
    step = max(1, math.ceil(len(rows) / MAX_TABLE_ROWS))
    shown = [row for i, row in enumerate(rows) if i % step == 0 or i == len(rows) - 1]
    for row in shown:
        if scored:
            values = [_fmt(row[k]) for k in ("accuracy_mean", "accuracy_min", "accuracy_max")]
        else:
            values = [_fmt(row["eval_loss_mean"]), _fmt(row.get("eval_perplexity_mean"), ".4g")]
        table.add_row(
            str(row["round"] + 1),
            f"{row['online']}/{row['sites']}",
            *values,
            _fmt(row["consensus_distance"], ".3e"),
            _fmt(row["contraction"]),
            _fmt(row["epsilon_max"], ".2f"),
            _mib(row["bytes_sent"]),
            f"{row['heard_fraction']:.0%}",
        )
    console.print(table)
    if step > 1:
        console.print(f"(every {step}th round shown; --json has all)")

    final = Table(title="final (last evaluated round)")
    finals = summary["final"].values()
    perplexity = any(stats.get("eval_perplexity_mean") is not None for stats in finals)
    final_normed = any(stats.get("accuracy_norm_mean") is not None for stats in finals)
    extra = (*(("acc norm",) if final_normed else ()), *(("perplexity",) if perplexity else ()))
    for col in (
        "run",
        "acc mean",
        "acc min",
        "acc max",
        "eval loss",
        *extra,
        "consensus D",
        "epsilon",
        "MiB sent",
    ):
        final.add_column(col, justify="right")
    for name, stats in summary["final"].items():
        final.add_row(
            RUN_LABELS.get(name, name),
            _fmt(stats["accuracy_mean"]),
            _fmt(stats["accuracy_min"]),
            _fmt(stats["accuracy_max"]),
            _fmt(stats["eval_loss_mean"]),
            *([_fmt(stats.get("accuracy_norm_mean"))] if final_normed else []),
            *([_fmt(stats.get("eval_perplexity_mean"), ".4g")] if perplexity else []),
            _fmt(stats["consensus_distance"], ".3e"),
            _fmt(stats["epsilon_max"], ".2f"),
            _mib(stats["bytes_sent_total"]),
        )
    console.print(final)
    robust = summary.get("robustness")
    if robust:
        attack = robust["attack"]
        if robust.get("attackers"):
            attack += f" by {', '.join(robust['attackers'])}"
        codec = robust["codec"]
        if robust.get("topk_fraction") is not None:
            codec += f" ({robust['topk_fraction']:.3g} of entries, error feedback)"
        rule = robust["aggregation"]
        params = robust.get("aggregation_params") or {}
        if params:
            rule += " (" + ", ".join(f"{k} {v}" for k, v in params.items()) + ")"
        console.print(
            f"attack: {attack}; mixing rule: {rule}; codec: {codec}; "
            f"drift correction: {robust['drift']}; honest sites' accuracy: "
            f"{_fmt(robust.get('honest_accuracy_mean'))}"
        )
    secure = (summary["final"].get("gossip") or {}).get("secure")
    if secure:
        console.print(
            f"secure aggregation: {secure['aggregated']} exchanges securely aggregated "
            f"({secure['contributors']} contributions, {secure['reconstructed']} dropped "
            f"contributors reconstructed), {secure['skipped']} skipped; consensus D is the "
            "simulator's global one, sites report the sum-based local distance"
        )
    contraction = summary.get("contraction") or {}
    line = f"consensus contraction per round: measured {_fmt(contraction.get('measured'))}"
    if contraction.get("lambda2") is not None:
        steps = contraction.get("gossip_steps") or 1
        line += f", topology lambda2 {_fmt(contraction['lambda2'])}"
        if steps > 1:
            line += f" ^ {steps} exchanges = {_fmt(contraction.get('expected'))}"
        line += " (equal when training is off; training pulls sites apart each round)"
    console.print(line)
    if "seconds_per_round" in summary:
        per_round = ", ".join(
            f"{RUN_LABELS.get(k, k)} {v:.2f} s" for k, v in summary["seconds_per_round"].items()
        )
        console.print(
            f"wall time per round: {per_round}; peak RSS {summary.get('peak_rss_mib', 0):.0f} MiB"
        )
