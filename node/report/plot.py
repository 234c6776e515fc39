"""PNG of a run's curves: accuracy, consensus distance (log scale, next to lambda2^(k r) for k
exchanges per round), eval loss and epsilon. matplotlib is imported inside, with the Agg
backend, so importing this module stays cheap and never needs a display."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from node.report.summary import RUN_LABELS

_COLOURS = {"gossip": "tab:blue", "local": "tab:orange", "central": "tab:green"}


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        if row.get(key) is not None:
            xs.append(int(row["round"]) + 1)
            ys.append(float(row[key]))
    return xs, ys


def plot_run(summary: Mapping[str, Any], out: Path, *, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables: Mapping[str, Sequence[Mapping[str, Any]]] = summary["per_round"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    ax_acc, ax_cd, ax_loss, ax_eps = axes.flat

    # free text has no accuracy: the first panel shows its perplexity instead
    scored = any(_series(rows, "accuracy_mean")[0] for rows in tables.values())
    for name, rows in tables.items():
        colour = _COLOURS.get(name)
        label = RUN_LABELS.get(name, name)
        xs, mean = _series(rows, "accuracy_mean")
        if not scored:
            xs, ppl = _series(rows, "eval_perplexity_mean")
            if xs:
                ax_acc.plot(xs, ppl, marker="o", ms=3, color=colour, label=label)
        if xs and scored:
            ax_acc.plot(xs, mean, marker="o", ms=3, color=colour, label=f"{label} (mean)")
            _, lo = _series(rows, "accuracy_min")
            _, hi = _series(rows, "accuracy_max")
            if len(lo) == len(xs) and name != "central":
                ax_acc.fill_between(xs, lo, hi, color=colour, alpha=0.15)
        xs, loss = _series(rows, "eval_loss_mean")
        if xs:
            ax_loss.plot(xs, loss, marker="o", ms=3, color=colour, label=label)
        xs, eps = _series(rows, "epsilon_max")
        if xs and name != "local":
            ax_eps.plot(xs, eps, color=colour, label=label)
        if name != "central":
            xs, cd = _series(rows, "consensus_distance")
            positive = [(x, y) for x, y in zip(xs, cd, strict=True) if y > 0]
            if positive:
                ax_cd.semilogy(
                    *zip(*positive, strict=True), marker="o", ms=3, color=colour, label=label
                )

    contraction = summary.get("contraction") or {}
    lam2 = contraction.get("lambda2")
    steps = int(contraction.get("gossip_steps") or 1)
    rate = contraction.get("expected") or lam2  # lambda2 ** exchanges per round
    gossip_cd = _series(tables.get("gossip", []), "consensus_distance")
    if lam2 and rate and gossip_cd[0] and gossip_cd[1][0] > 0:
        x0, d0 = gossip_cd[0][0], gossip_cd[1][0]
        xs = gossip_cd[0]
        label = f"D(1)·λ2^(r-1), λ2={lam2:.3f}"
        if steps > 1:
            label = f"D(1)·(λ2^{steps})^(r-1), λ2={lam2:.3f}, {steps} exchanges/round"
        # cut where the prediction falls 1e4 below D(1): beyond that it only squashes the axis
        line = [(x, d0 * rate ** (x - x0)) for x in xs]
        line = [(x, y) for x, y in line if y >= d0 * 1e-4] or line[:1]
        ax_cd.semilogy(*zip(*line, strict=True), "k--", lw=1, label=label)
    measured = (summary.get("contraction") or {}).get("measured")
    cd_title = "Consensus distance (log)"
    if measured:
        cd_title += f" — measured contraction {measured:.3f}/round"

    for ax, ttl, ylabel in (
        (
            (ax_acc, "Accuracy on the global test set (band: min–max over sites)", "accuracy")
            if scored
            else (ax_acc, "Perplexity on the global test set (free text)", "perplexity")
        ),
        (ax_cd, cd_title, "sqrt(mean ||x_i - x̄||²)"),
        (ax_loss, "Eval loss (mean over sites)", "loss"),
        (ax_eps, "Privacy spent (max over sites)", "epsilon"),
    ):
        ax.set_title(ttl, fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    topo = summary.get("topology") or {}
    gossip_rows = tables.get("gossip") or [{}]
    sites = topo.get("nodes") or gossip_rows[0].get("sites", "?")
    where = f"{topo['kind']} topology, " if topo.get("kind") else ""
    heading = title or f"gossipmed run — {where}{sites} sites, {summary.get('rounds', '?')} rounds"
    fig.suptitle(heading, fontsize=12)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
