"""How much one neighbour, and one mix, may move a site.

A signed update from an enrolled member can carry any finite value (up to about 3e38). Two
bounds keep that from compounding:

- the default `bounded` rule scales each neighbour's state down to L = max(own norm, m), m
  the lower median norm of the states the site mixes this exchange, its own included
  (`clip_to_median_norm`);
- a mix whose result is not finite, or whose norm exceeds `max_ratio` times the larger of the
  pre-mix norm and a floor, is rolled back to the pre-mix state (every rule; the peer). This
  is a backstop for rules without a norm bound; under `bounded` it can fire only when
  attackers hold the median (more than half the neighbours heard, rounded up).

Why the median, and why of the states rather than of their differences. The earlier default
clipped each neighbour to 10x the site's own norm (or an RMS-1 floor): a bound relative to
something a neighbour moves. One member answering every exchange just under it grew its
neighbour's norm about 3x per exchange, the neighbour forwarded it, and every site
saturated (issue #20, finding 2). Any neighbour-relative bound with a factor above 1 has the
same flaw. L has factor 1: the site's own norm is honest, and attackers that are at most
ceil(n/2) of the n neighbours heard cannot lift the median above the largest honest norm
among the states mixed, whatever they send. Clipping the state (not its difference from the
site's own) is what bounds the norm itself; a radius on differences bounds the step, and a
site pushed away from its honest neighbours sees their distances, and so the radius, grow
with it.

The guarantee (`median_norm_growth_bound`): with stochastic weights w (w_i for the site,
w_j for each neighbour heard) and m the lower median of the norms of the n + 1 states mixed,

    ||x_i'|| <= w_i ||x_i|| + sum_j w_j min(||x_j||, L) <= L = max(||x_i||, m).

If at most ceil(n/2) of the n neighbours heard are dishonest, at least half of the n + 1
norms are honest, so m <= H, the largest honest norm among the states mixed (own included),
and ||x_i'|| <= H: mixing never takes a site above the largest honest norm it heard, so
over the consortium the largest honest norm grows only by local training, never by mixing.
With more attackers than that the bound is max(||x_i||, m) and m is theirs to choose.

The cost in an honest run: a neighbour whose norm is above both the site's own and the median
is scaled down to the larger of the two (a small factor near consensus, where honest norms
are close), and a site with one neighbour is never pulled above its own norm (the lower
median of two norms is the smaller). Mixing then no longer preserves the network's average:
norms above the median are pulled down, so the run settles on a slightly smaller-norm
consensus, and with training off the disagreement contracts more slowly than lambda2 (the
engine's linear rate holds for `weighted`; docs/benchmarks/robustness.md has the measured cost). The
metrics count how often the bound acts (`bound_clipped` of `states_mixed`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gossipmed.choice import require_number

DEFAULT_MAX_RATIO = 10.0
DEFAULT_FLOOR_RMS = 1.0


def state_norm(state: Mapping[str, torch.Tensor]) -> float:
    """L2 norm over every tensor, in float64; inf when anything is not finite."""
    total = 0.0
    for t in state.values():
        # a NaN or infinity anywhere makes the sum of squares NaN or infinite (a finite
        # float32 squared cannot overflow float64), so no separate isfinite pass is needed
        total += float(t.detach().to(torch.float64).pow(2).sum())
    return math.sqrt(total) if math.isfinite(total) else math.inf


def numel(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())


@dataclass(frozen=True)
class InfluenceBound:
    """The rollback backstop: how far one mix may take a site's norm, for every rule."""

    max_ratio: float = DEFAULT_MAX_RATIO
    floor_rms: float = DEFAULT_FLOOR_RMS

    def __post_init__(self) -> None:
        require_number(self.max_ratio, what="max_ratio", lo=1.0, hi=1e12)
        require_number(self.floor_rms, what="floor_rms", lo=0.0, hi=1e12)

    def limit(self, reference: Mapping[str, torch.Tensor]) -> float:
        """The largest norm allowed after a mix from `reference` (the pre-mix state)."""
        floor = self.floor_rms * math.sqrt(numel(reference))
        return self.max_ratio * max(state_norm(reference), floor)

    def rollback_reason(
        self, before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]
    ) -> str | None:
        """Why the mix `before` -> `after` must be undone, or None when it may stand."""
        norm = state_norm(after)
        if not math.isfinite(norm):
            return "non_finite"
        limit = self.limit(before)
        if norm > limit:
            return f"exploding: norm {norm:.3e} > limit {limit:.3e}"
        return None


def lower_median(values: list[float]) -> float:
    """The smaller middle value: with two values, the smaller one."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def median_norm_growth_bound(norms: Mapping[str, float], *, self_name: str) -> float:
    """The largest norm the `bounded` rule can mix from states of these norms, whatever the
    weights: max(own norm, lower median of all of them). See the module docstring for why
    this is at most the largest honest norm when attackers are at most half of them."""
    return max(norms[self_name], lower_median(list(norms.values())))


@dataclass(frozen=True)
class Clipped:
    """The states as the `bounded` rule mixes them, and which neighbours it scaled down."""

    states: dict[str, Mapping[str, torch.Tensor]]
    scaled: frozenset[str]
    limit: float


def clip_to_median_norm(
    states: Mapping[str, Mapping[str, torch.Tensor]], *, self_name: str
) -> Clipped:
    """Every neighbour's state scaled down to L = max(own norm, lower median norm of all the
    states given, own included); own kept as is. A non-finite neighbour (the wire refuses them,
    but a caller may not have checked) has no direction to keep: it becomes zero."""
    norms = {name: state_norm(state) for name, state in states.items()}
    limit = max(norms[self_name], lower_median(list(norms.values())))
    out: dict[str, Mapping[str, torch.Tensor]] = {}
    scaled: set[str] = set()
    for name, state in states.items():
        norm = norms[name]
        if name == self_name or norm <= limit:
            out[name] = state
            continue
        scaled.add(name)
        if not math.isfinite(norm):
            out[name] = {k: torch.zeros_like(v) for k, v in state.items()}
            continue
        factor = limit / norm
        out[name] = {
            k: (v.detach().to(torch.float64) * factor).to(v.dtype) for k, v in state.items()
        }
    return Clipped(states=out, scaled=frozenset(scaled), limit=limit)


def bound_secure_sum(
    own: Mapping[str, torch.Tensor], total: Mapping[str, torch.Tensor], *, weight: float
) -> tuple[dict[str, torch.Tensor], bool]:
    """(the aggregate s, scaled so that ||s|| <= W ||own||; whether it had to be scaled).

    With secure aggregation a site sees only s = sum_{j in U} w_j x_j and W = sum w_j, not
    the states. It applies the `bounded` rule to what it sees: the contributors' weighted
    mean s / W is one neighbour, and the lower median of the two norms {own, mean} is the
    smaller, so the mean is scaled to at most the site's own norm. Then

        ||(1 - W) x_i + s|| <= (1 - W) ||x_i|| + W ||x_i|| = ||x_i||:

    secure mixing never raises a site's norm (factor 1 per exchange), whatever the
    contributors send. What it does not bound: the direction (the mix may move the state by
    up to 2 W ||x_i|| within that ball each exchange), nor who moved it (the receiver sees
    only the sum), and it costs an honest site the pull towards neighbours with larger norms
    (its norm then grows only by its own training)."""
    limit = weight * state_norm(own)
    norm = state_norm(total)
    if norm <= limit:
        return dict(total), False
    if not math.isfinite(norm) or norm == 0.0:
        return {k: torch.zeros_like(v) for k, v in total.items()}, True
    factor = limit / norm
    return {k: v * factor for k, v in total.items()}, True
