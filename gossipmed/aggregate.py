"""Mixing of neighbour states: x_i <- sum_j w_ij x_j.

Only the weighted (Metropolis–Hastings) rule exists today; robust rules (coordinate median,
trimmed mean, clipped gossip) plug into `RULES` under their own name so the peer and the
config never change shape when they arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from gossipmed.errors import ConfigError, GossipmedError
from gossipmed.learner import AdapterState
from gossipmed.robust import ROBUST_RULES, SELF_CENTRED_RULES

WEIGHT_TOLERANCE = 1e-9


class AggregationError(GossipmedError):
    """States or weights handed to a mixing rule are inconsistent (a bug or a bad schema)."""


def fold_silent_weight(
    row: Mapping[str, float], *, self_name: str, heard: set[str] | frozenset[str]
) -> dict[str, float]:
    """Give the weight of every neighbour not heard this round to self.

    Keeps the row stochastic, so a silent neighbour behaves as if it had sent our own state
    back: the round still averages, just more slowly, and never drifts.
    """
    if self_name not in row:
        raise AggregationError(f"mixing row has no self weight for {self_name!r}")
    out = {name: w for name, w in row.items() if name == self_name or name in heard}
    out[self_name] = out[self_name] + sum(
        w for name, w in row.items() if name != self_name and name not in heard
    )
    return out


def weighted_average(
    states: Mapping[str, Mapping[str, torch.Tensor]], weights: Mapping[str, float]
) -> AdapterState:
    """Sum of w_j * state_j, accumulated in float64 and cast back to each tensor's dtype.

    float64 accumulation matters: gossip applies this hundreds of times and float32 rounding
    would put a floor under the consensus distance that looks like a topology effect.
    """
    if set(states) != set(weights):
        raise AggregationError(f"weights for {sorted(weights)} but states for {sorted(states)}")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        raise AggregationError(f"mixing weights sum to {total}, not 1")
    if any(w < -WEIGHT_TOLERANCE for w in weights.values()):
        raise AggregationError("mixing weights must be non-negative")
    names = list(states)
    reference = states[names[0]]
    out: AdapterState = {}
    for key, ref in reference.items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for name in names:
            tensor = states[name].get(key)
            if tensor is None or tensor.shape != ref.shape:
                raise AggregationError(f"state of {name!r} lacks {key!r} or has another shape")
            acc.add_(tensor.detach().to(torch.float64), alpha=float(weights[name]))
        out[key] = acc.to(ref.dtype)
    for name in names:
        if set(states[name]) != set(reference):
            raise AggregationError(f"state of {name!r} has other tensor names than the rest")
    return out


AggregationRule = Callable[
    [Mapping[str, Mapping[str, torch.Tensor]], Mapping[str, float]], AdapterState
]

RULES: dict[str, AggregationRule] = {"weighted": weighted_average, **ROBUST_RULES}
DEFAULT_RULE = "weighted"


def get_rule(name: str) -> AggregationRule:
    """The mixing rule called `name`; ConfigError lists the ones that exist."""
    try:
        return RULES[name]
    except KeyError:
        raise ConfigError(
            f"unknown aggregation rule {name!r}; choose one of: {', '.join(sorted(RULES))}"
        ) from None


def mix(
    *,
    rule: str,
    self_name: str,
    row: Mapping[str, float],
    states: Mapping[str, Mapping[str, torch.Tensor]],
) -> AdapterState:
    """One site's mixing step over the states it has this round (its own included)."""
    weights = fold_silent_weight(row, self_name=self_name, heard=frozenset(states) - {self_name})
    unknown = set(states) - set(weights)
    if unknown:
        raise AggregationError(f"states from non-neighbours {sorted(unknown)}")
    if rule in SELF_CENTRED_RULES:  # clipped gossip clips around this site's own state
        return RULES[rule](states, weights, self_name=self_name)  # type: ignore[call-arg]
    return get_rule(rule)(states, weights)
