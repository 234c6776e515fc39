"""Byzantine-robust mixing rules: what a site does when some neighbours may send poison.

Same call shape as `gossipmed.aggregate.weighted_average` (states by site, mixing weights
of the sites heard), so the gossip round selects a rule by name and never changes shape:

    median         coordinate-wise median of all states heard (own included), unweighted
    trimmed-mean   per coordinate, drop the b largest and b smallest, average the rest
    clipped        self-centred clipping: x_i + sum_j w_ij clip(x_j - x_i, tau); a
                   neighbour can move a site at most w_ij * tau whatever it sends

Median and trimmed mean need honest states to be the majority of every neighbourhood (a
site with 2 neighbours survives 1 attacker); clipping only bounds the damage per round,
but keeps the mixing weights, so it slows honest consensus least. The clipping radius is
the lower median of the neighbours' distances unless fixed: an attacker that sends a state
ten times too large gets the pull of a typical honest neighbour, no more.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import torch

from gossipmed.errors import GossipmedError
from gossipmed.learner import AdapterState

DEFAULT_TRIM = 0.2


class RobustAggregationError(GossipmedError):
    """States or weights handed to a robust rule are inconsistent."""


def _stack(
    states: Mapping[str, Mapping[str, torch.Tensor]], weights: Mapping[str, float]
) -> tuple[list[str], dict[str, torch.Tensor], dict[str, torch.dtype]]:
    """Per tensor name, a float64 [n_sites, *shape] stack (sites in `states` order)."""
    if not states:
        raise RobustAggregationError("no states to mix")
    if set(states) != set(weights):
        raise RobustAggregationError(
            f"weights for {sorted(weights)} but states for {sorted(states)}"
        )
    names = list(states)
    reference = states[names[0]]
    stacks: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for name in names:
        if set(states[name]) != set(reference):
            raise RobustAggregationError(f"state of {name!r} has other tensor names than the rest")
    for key, ref in reference.items():
        parts = []
        for name in names:
            t = states[name][key]
            if t.shape != ref.shape:
                raise RobustAggregationError(f"state of {name!r} has another shape for {key!r}")
            parts.append(t.detach().to(torch.float64))
        stacks[key] = torch.stack(parts)
        dtypes[key] = ref.dtype
    return names, stacks, dtypes


def coordinate_median(
    states: Mapping[str, Mapping[str, torch.Tensor]], weights: Mapping[str, float]
) -> AdapterState:
    """Per coordinate, the median of the states heard (mean of the middle two when even)."""
    _names, stacks, dtypes = _stack(states, weights)
    out: AdapterState = {}
    for key, stack in stacks.items():
        n = stack.shape[0]
        ordered = stack.sort(dim=0).values
        mid = n // 2
        med = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        out[key] = med.to(dtypes[key])
    return out


def trim_count(n: int, trim: float) -> int:
    """How many to drop at each end: floor(trim * n), at least 1 once there are 3 states,
    never so many that nothing is left."""
    if n < 3:
        return 0
    return min(max(1, math.floor(trim * n)), (n - 1) // 2)


def trimmed_mean(
    states: Mapping[str, Mapping[str, torch.Tensor]],
    weights: Mapping[str, float],
    *,
    trim: float = DEFAULT_TRIM,
) -> AdapterState:
    """Per coordinate, the mean after dropping the b smallest and b largest values."""
    if not 0.0 <= trim < 0.5:
        raise RobustAggregationError("trim must be in [0, 0.5)")
    _names, stacks, dtypes = _stack(states, weights)
    out: AdapterState = {}
    for key, stack in stacks.items():
        n = stack.shape[0]
        b = trim_count(n, trim)
        kept = stack.sort(dim=0).values[b : n - b]
        out[key] = kept.mean(dim=0).to(dtypes[key])
    return out


def _distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[k] - b[k]).pow(2).sum()) for k in a))


def clipped_gossip(
    states: Mapping[str, Mapping[str, torch.Tensor]],
    weights: Mapping[str, float],
    *,
    self_name: str | None = None,
    radius: float | None = None,
) -> AdapterState:
    """x_i + sum_{j != i} w_ij clip(x_j - x_i, tau) with clip(v, tau) = v min(1, tau/||v||).

    `self_name` defaults to the first site in `states` (the peer puts its own state first).
    `radius=None` picks the lower median of the neighbours' distances to x_i.
    """
    names, stacks, dtypes = _stack(states, weights)
    me = self_name if self_name is not None else names[0]
    if me not in states:
        raise RobustAggregationError(f"no own state for {me!r}")
    if radius is not None and not (radius >= 0 and math.isfinite(radius)):
        raise RobustAggregationError("clipping radius must be finite and >= 0")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6 or any(w < -1e-9 for w in weights.values()):
        raise RobustAggregationError(f"mixing weights must be >= 0 and sum to 1 (got {total})")
    i = names.index(me)
    centre = {k: s[i] for k, s in stacks.items()}
    others = [j for j, name in enumerate(names) if name != me]
    dists = [_distance({k: s[j] for k, s in stacks.items()}, centre) for j in others]
    if radius is None:
        ordered = sorted(dists)
        tau = ordered[(len(ordered) - 1) // 2] if ordered else 0.0
    else:
        tau = radius
    out: AdapterState = {}
    for key, stack in stacks.items():
        acc = centre[key].clone()
        for j, dist in zip(others, dists, strict=True):
            factor = 1.0 if dist <= tau else tau / dist
            acc.add_(stack[j] - centre[key], alpha=float(weights[names[j]]) * factor)
        out[key] = acc.to(dtypes[key])
    return out


ROBUST_RULES: dict[str, Callable[..., AdapterState]] = {
    "median": coordinate_median,
    "trimmed-mean": trimmed_mean,
    "clipped": clipped_gossip,
}
"""name -> rule; `gossipmed.aggregate.RULES` includes these."""

SELF_CENTRED_RULES = frozenset({"clipped"})
"""Rules that take `self_name=` (the site whose state is the clipping centre)."""


def with_params(name: str, **params: float) -> Callable[..., AdapterState]:
    """A rule with its knobs fixed (trim for trimmed-mean, radius for clipped)."""
    if name not in ROBUST_RULES:
        raise RobustAggregationError(f"unknown robust rule {name!r}")
    return functools.partial(ROBUST_RULES[name], **params)
