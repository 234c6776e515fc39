"""How one evaluation reads in a line of text, whatever the task measures.

Label and multiple-choice tasks have an accuracy (and, for answers of several tokens, the
per-token-normalised accuracy); free text has none, so its response loss and perplexity are
what say whether the model learns. Every place that prints an evaluation (train, the daemon's
round log, `status`) goes through `describe` so that none of them shows a blank for free text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

EVAL_KEYS = ("accuracy", "accuracy_norm", "eval_loss", "eval_perplexity")


def measured(value: Any) -> float | None:
    """A finite number, or None (not measured, or NaN for a task without that metric)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def report_metrics(report: Any) -> dict[str, float | None]:
    """An evaluation report (gossipmed.learn.evaluate.EvalReport) as the record's fields."""
    perplexity = getattr(report, "eval_perplexity", None)
    if perplexity is None:
        perplexity = getattr(report, "perplexity", None)
    return {
        "accuracy": measured(getattr(report, "accuracy", None)),
        "accuracy_norm": measured(getattr(report, "accuracy_norm", None)),
        "eval_loss": measured(getattr(report, "loss", None)),
        "eval_perplexity": measured(perplexity),
    }


def describe(values: Mapping[str, Any] | Any) -> str:
    """'accuracy 0.412 (normalised 0.398), eval loss 1.23' or, without an accuracy,
    'eval loss 2.31, perplexity 10.1'; empty when nothing was evaluated. `values` is a
    mapping (a record's JSON) or an object with those attributes (a RoundRecord)."""

    def get(key: str) -> float | None:
        raw = values.get(key) if isinstance(values, Mapping) else getattr(values, key, None)
        return measured(raw)

    acc, norm = get("accuracy"), get("accuracy_norm")
    loss, ppl = get("eval_loss"), get("eval_perplexity")
    parts = []
    if acc is not None:
        parts.append(
            f"accuracy {acc:.3f}" + (f" (normalised {norm:.3f})" if norm is not None else "")
        )
    if loss is not None:
        parts.append(f"eval loss {loss:.3f}")
    if ppl is not None and acc is None:
        parts.append(f"perplexity {ppl:.4g}")
    return ", ".join(parts)
