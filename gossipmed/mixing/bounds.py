"""How much one neighbour, and one mix, may move a site.

A signed update from an enrolled member can still carry values near 3e38: finite, so they pass
the wire's checks, but one weighted mix with them makes a state that training turns into NaN,
and a site that forwards it spreads the damage. Two bounds stop that without touching honest
runs:

- each neighbour's state is scaled down to at most `max_ratio` times the larger of the site's
  own state norm and a floor (the `bounded` mixing rule, the default);
- a mix whose result is not finite, or whose norm exceeds `max_ratio` times the larger of the
  pre-mix norm and the floor, is rolled back to the pre-mix state (every rule; the peer).

The floor matters when a state starts at zero (FFA-LoRA's B): it is `floor_rms` per
coordinate, so it scales with the adapter's size. Honest adapters have per-coordinate RMS far
below 1 and neighbours' norms within a small factor of each other, so with the defaults
(10x, RMS 1) neither bound acts in an honest run: the recorded reference run is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gossipmed.choice import require_number
from gossipmed.learn.learner import AdapterState

DEFAULT_MAX_RATIO = 10.0
DEFAULT_FLOOR_RMS = 1.0


def state_norm(state: Mapping[str, torch.Tensor]) -> float:
    """L2 norm over every tensor, in float64; inf when anything is not finite."""
    total = 0.0
    for t in state.values():
        x = t.detach().to(torch.float64)
        if not bool(torch.isfinite(x).all()):
            return math.inf
        total += float(x.pow(2).sum())
    return math.sqrt(total)


def numel(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())


@dataclass(frozen=True)
class InfluenceBound:
    max_ratio: float = DEFAULT_MAX_RATIO
    floor_rms: float = DEFAULT_FLOOR_RMS

    def __post_init__(self) -> None:
        require_number(self.max_ratio, what="max_ratio", lo=1.0, hi=1e12)
        require_number(self.floor_rms, what="floor_rms", lo=0.0, hi=1e12)

    def limit(self, reference: Mapping[str, torch.Tensor]) -> float:
        """The largest norm allowed next to `reference` (the site's own state)."""
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


def clip_neighbours(
    states: Mapping[str, Mapping[str, torch.Tensor]], *, self_name: str, bound: InfluenceBound
) -> dict[str, Mapping[str, torch.Tensor]]:
    """Every neighbour's state scaled down to the bound around the site's own (own as is)."""
    limit = bound.limit(states[self_name])
    out: dict[str, Mapping[str, torch.Tensor]] = {}
    for name, state in states.items():
        norm = state_norm(state) if name != self_name else 0.0
        if name == self_name or norm <= limit:
            out[name] = state
            continue
        factor = limit / norm  # norm is finite: the wire refuses NaN and Inf
        scaled: AdapterState = {
            k: (v.detach().to(torch.float64) * factor).to(v.dtype) for k, v in state.items()
        }
        out[name] = scaled
    return out
