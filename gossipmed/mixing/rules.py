"""Mixing of neighbour states: x_i <- sum_j w_ij x_j.

Rules are registered by name with their parameters' dataclass (gossipmed.choice), so a
config file chooses `aggregation = { rule = "cosine-clipped", min_cosine = 0.1 }` and the
peer gets an `Aggregator` with that rule fixed at construction. The robust rules themselves
live in gossipmed.mixing.robust.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from gossipmed.choice import Choice, NoParams, Spec, build, default_choice, require_number
from gossipmed.errors import GossipmedError
from gossipmed.learn.learner import AdapterState
from gossipmed.mixing.bounds import clip_to_median_norm
from gossipmed.mixing.robust import (
    DEFAULT_MIN_COSINE,
    DEFAULT_TRIM,
    clipped_gossip,
    coordinate_median,
    cosine_clipped_gossip,
    trimmed_mean,
)
from gossipmed.registry import Registry

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


AggregationRule = Callable[..., AdapterState]
"""(states by site, weights of the sites heard, *, self_name) -> the mixed state."""


def _weighted(_params: NoParams) -> AggregationRule:
    return lambda states, weights, *, self_name: weighted_average(states, weights)


@dataclass(frozen=True)
class TrimParams:
    trim: float = DEFAULT_TRIM
    """Share of values dropped at each end, per coordinate (0 to 0.499)."""

    def __post_init__(self) -> None:
        require_number(self.trim, what="trim", lo=0.0, hi=0.499)


@dataclass(frozen=True)
class ClipParams:
    radius: float | None = None
    """How far one neighbour may move the site (times its weight); omitted: the lower median of the
    neighbours' distances."""

    def __post_init__(self) -> None:
        if self.radius is not None:
            require_number(self.radius, what="radius", lo=0.0, hi=math.inf)


@dataclass(frozen=True)
class CosineClipParams:
    radius: float | None = None
    """Clipping radius as for "clipped"; omitted: the lower median of the neighbours' distances."""
    min_cosine: float = DEFAULT_MIN_COSINE
    """Neighbours whose update's cosine with the site's own is at or below this are dropped."""

    def __post_init__(self) -> None:
        if self.radius is not None:
            require_number(self.radius, what="radius", lo=0.0, hi=math.inf)
        require_number(self.min_cosine, what="min_cosine", lo=-1.0, hi=0.999999)


class MedianNormRule:
    """The default: the weighted average after every neighbour's state is scaled down to
    max(own norm, m), m the lower median norm of the states mixed, own included
    (gossipmed.mixing.bounds.clip_to_median_norm). Worst case per exchange:
    ||x_i'|| <= max(||x_i||, m), which is at most the largest honest norm mixed while at
    most ceil(n/2) of the n neighbours heard are attackers: mixing never raises the largest
    honest norm, so poisoning cannot compound (gossipmed.mixing.bounds has the proof)."""

    def __call__(
        self,
        states: Mapping[str, Mapping[str, torch.Tensor]],
        weights: Mapping[str, float],
        *,
        self_name: str,
    ) -> AdapterState:
        return self.mix_reporting(states, weights, self_name=self_name)[0]

    def mix_reporting(
        self,
        states: Mapping[str, Mapping[str, torch.Tensor]],
        weights: Mapping[str, float],
        *,
        self_name: str,
    ) -> tuple[AdapterState, frozenset[str]]:
        """(the mixed state, the neighbours the bound scaled down)."""
        clipped = clip_to_median_norm(states, self_name=self_name)
        return weighted_average(clipped.states, weights), clipped.scaled


RULES: Registry[Spec[AggregationRule]] = Registry("aggregation rule")
RULES.register(
    "bounded",
    Spec(
        name="bounded",
        build=lambda _p: MedianNormRule(),
        summary="weighted average, each neighbour's state scaled down to max(own norm, median "
        "norm of the states mixed): never above the largest honest norm; the default",
    ),
)
RULES.register(
    "weighted",
    Spec(
        name="weighted",
        build=_weighted,
        summary="plain weighted average, unbounded: for experiments (no defence)",
    ),
)
RULES.register(
    "median",
    Spec(
        name="median",
        build=lambda _p: lambda s, w, *, self_name: coordinate_median(s, w),
        summary="coordinate-wise median of the states heard",
    ),
)
RULES.register(
    "trimmed-mean",
    Spec(
        name="trimmed-mean",
        build=lambda p: lambda s, w, *, self_name: trimmed_mean(s, w, trim=p.trim),
        params=TrimParams,
        summary="per coordinate, drop the `trim` share at each end, average the rest",
    ),
)
RULES.register(
    "clipped",
    Spec(
        name="clipped",
        build=lambda p: (
            lambda s, w, *, self_name: clipped_gossip(s, w, self_name=self_name, radius=p.radius)
        ),
        params=ClipParams,
        summary="self-centred clipping: a neighbour moves a site at most w * radius",
    ),
)
RULES.register(
    "cosine-clipped",
    Spec(
        name="cosine-clipped",
        build=lambda p: (
            lambda s, w, *, self_name: cosine_clipped_gossip(
                s, w, self_name=self_name, radius=p.radius, min_cosine=p.min_cosine
            )
        ),
        params=CosineClipParams,
        summary="drop neighbours pointing away (cosine <= min_cosine), then clip",
    ),
)
DEFAULT_RULE = "bounded"
NORM_BOUNDED_RULES = frozenset({"bounded"})
"""Rules whose mix never exceeds the median-norm bound; the secure mix applies the same bound
to its sum under these (node.round.secure_mix)."""


def get_rule(name: str) -> AggregationRule:
    """The mixing rule called `name` with its default parameters."""
    spec = RULES.get(name)
    return spec.build(spec.params())


class Aggregator:
    """One site's mixing step, its rule and parameters fixed at construction."""

    def __init__(self, choice: Choice | None = None) -> None:
        self.choice = choice if choice is not None else default_choice(RULES, DEFAULT_RULE)
        self._rule = build(RULES, self.choice)

    def mix(
        self,
        *,
        self_name: str,
        row: Mapping[str, float],
        states: Mapping[str, Mapping[str, torch.Tensor]],
    ) -> AdapterState:
        """x_i <- rule over the states heard (own included); silent weight goes to self."""
        return self.mix_reporting(self_name=self_name, row=row, states=states)[0]

    def mix_reporting(
        self,
        *,
        self_name: str,
        row: Mapping[str, float],
        states: Mapping[str, Mapping[str, torch.Tensor]],
    ) -> tuple[AdapterState, frozenset[str]]:
        """`mix`, and the neighbours whose states the rule's norm bound scaled down (none for
        rules without one)."""
        weights = fold_silent_weight(
            row, self_name=self_name, heard=frozenset(states) - {self_name}
        )
        unknown = set(states) - set(weights)
        if unknown:
            raise AggregationError(f"states from non-neighbours {sorted(unknown)}")
        if isinstance(self._rule, MedianNormRule):
            return self._rule.mix_reporting(states, weights, self_name=self_name)
        return self._rule(states, weights, self_name=self_name), frozenset()

    @property
    def bounds_norm(self) -> bool:
        """Whether the rule holds the median-norm bound (then so does the secure mix)."""
        return self.choice.name in NORM_BOUNDED_RULES


def mix(
    *,
    rule: str,
    self_name: str,
    row: Mapping[str, float],
    states: Mapping[str, Mapping[str, torch.Tensor]],
) -> AdapterState:
    """One mixing step with `rule` at its default parameters."""
    return Aggregator(default_choice(RULES, rule)).mix(self_name=self_name, row=row, states=states)
