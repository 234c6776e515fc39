"""Byzantine-robust mixing rules: what a site does when some neighbours may send poison.

Same call shape as `gossipmed.mixing.rules.weighted_average` (states by site, mixing weights
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

    cosine-clipped a direction gate in front of `clipped`: a neighbour whose state points
                   away from the site's own (cosine <= min_cosine, default 0) gets weight
                   0, its weight goes to self, and the rest are clipped as above

Why a direction gate: distance and coordinate order do not single out a sign-flip attacker (it
sends -x). From the zero initial state -x is no farther from a site than an honest but
differently-skewed neighbour, and clipping bounds its pull per round but not its direction,
which is the same every round while honest pulls cancel (measured in
docs/benchmarks/robustness.md: every distance or order rule lets it capture a site with two
attackers among four neighbours). FLTrust (Cao et al., NDSS 2021) weighs each update by
ReLU(cosine) against a reference the server trusts; with no server, the only state a site can
trust is its own. That works because honest gossip states share a large common component (the
shared initial adapter, the same task, and every round of mixing pulls them together), so
honest cosines are positive, while -x of a state that tracks the same neighbourhood has cosine
near -1.

Limits, stated plainly: the gate sees direction only. An attacker that sends a poison
aligned with the victim's state (scaled, or x plus a perturbation smaller than x) passes
the gate and is bounded by the clipping alone, i.e. at most w_ij * tau per round. A site
whose own state is already captured trusts whatever points its way. A zero state has no
direction, so while either state is all zeros the neighbour is trusted (clipping still
applies); the gate starts to act once training has moved the states.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from gossipmed.errors import GossipmedError
from gossipmed.learn.learner import AdapterState

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


DEFAULT_MIN_COSINE = 0.0


def _check_weights(weights: Mapping[str, float]) -> None:
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6 or any(w < -1e-9 for w in weights.values()):
        raise RobustAggregationError(f"mixing weights must be >= 0 and sum to 1 (got {total})")


def _own_index(names: list[str], self_name: str | None) -> int:
    """`self_name` defaults to the first site (the peer puts its own state first)."""
    me = self_name if self_name is not None else names[0]
    if me not in names:
        raise RobustAggregationError(f"no own state for {me!r}")
    return names.index(me)


def _clip_around(
    stacks: Mapping[str, torch.Tensor],
    dtypes: Mapping[str, torch.dtype],
    *,
    centre_index: int,
    pulls: Mapping[int, float],
    radius: float | None,
) -> AdapterState:
    """x_c + sum_j pulls[j] clip(x_j - x_c, tau) over the stacked states; the weight not in
    `pulls` stays on the centre. tau is `radius`, or the lower median of the distances of
    the neighbours in `pulls` (0 when there are none)."""
    if radius is not None and not (radius >= 0 and math.isfinite(radius)):
        raise RobustAggregationError("clipping radius must be finite and >= 0")
    centre = {k: s[centre_index] for k, s in stacks.items()}
    others = list(pulls)
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
            acc.add_(stack[j] - centre[key], alpha=float(pulls[j]) * factor)
        out[key] = acc.to(dtypes[key])
    return out


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
    i = _own_index(names, self_name)
    _check_weights(weights)
    pulls = {j: float(weights[name]) for j, name in enumerate(names) if j != i}
    return _clip_around(stacks, dtypes, centre_index=i, pulls=pulls, radius=radius)


def _cosines_to(stacks: Mapping[str, torch.Tensor], centre_index: int) -> list[float | None]:
    """Cosine of every stacked state with the centre's, over all tensors flattened together;
    None where either state is all zeros (no direction to compare)."""
    flat = torch.cat([s.reshape(s.shape[0], -1) for s in stacks.values()], dim=1)
    norms = flat.norm(dim=1)
    centre, centre_norm = flat[centre_index], float(norms[centre_index])
    out: list[float | None] = []
    for j in range(flat.shape[0]):
        norm = float(norms[j])
        if centre_norm == 0.0 or norm == 0.0:
            out.append(None)
        else:
            out.append(float(flat[j] @ centre) / (norm * centre_norm))
    return out


def cosines_to_self(
    states: Mapping[str, Mapping[str, torch.Tensor]], *, self_name: str
) -> dict[str, float | None]:
    """Each neighbour's cosine with the site's own state (None: a zero state, no direction);
    what the `cosine-clipped` gate compares against its threshold."""
    names, stacks, _dtypes = _stack(states, {name: 0.0 for name in states})
    i = _own_index(names, self_name)
    cos = _cosines_to(stacks, i)
    return {name: cos[j] for j, name in enumerate(names) if j != i}


def _check_min_cosine(min_cosine: float) -> None:
    if not (math.isfinite(min_cosine) and -1.0 <= min_cosine < 1.0):
        raise RobustAggregationError("min_cosine must be in [-1, 1)")


def direction_gate(
    states: Mapping[str, Mapping[str, torch.Tensor]],
    weights: Mapping[str, float],
    *,
    self_name: str | None = None,
    min_cosine: float = DEFAULT_MIN_COSINE,
) -> dict[str, float]:
    """The mixing weights after the gate: a neighbour with cosine <= min_cosine to the own
    state gets 0 and its weight moves to self (still sums to 1). A neighbour is trusted
    while it or the site has a zero state, since there is no direction to judge yet."""
    gate = _Gated.of(states, weights, self_name=self_name, min_cosine=min_cosine)
    return gate.weights


@dataclass(frozen=True)
class _Gated:
    """The stacked states with the gate applied: weights after the gate, indices dropped."""

    names: list[str]
    stacks: dict[str, torch.Tensor]
    dtypes: dict[str, torch.dtype]
    own: int
    weights: dict[str, float]
    dropped: set[int]

    @classmethod
    def of(
        cls,
        states: Mapping[str, Mapping[str, torch.Tensor]],
        weights: Mapping[str, float],
        *,
        self_name: str | None,
        min_cosine: float,
    ) -> _Gated:
        _check_min_cosine(min_cosine)
        names, stacks, dtypes = _stack(states, weights)
        i = _own_index(names, self_name)
        _check_weights(weights)
        gated, dropped = _gate(
            names, weights, cosines=_cosines_to(stacks, i), own=i, min_cosine=min_cosine
        )
        return cls(names, stacks, dtypes, i, gated, dropped)


def _gate(
    names: list[str],
    weights: Mapping[str, float],
    *,
    cosines: list[float | None],
    own: int,
    min_cosine: float,
) -> tuple[dict[str, float], set[int]]:
    """(gated weights, indices dropped)."""
    gated = {name: float(weights[name]) for name in names}
    dropped: set[int] = set()
    for j, name in enumerate(names):
        cos = cosines[j]
        if j != own and cos is not None and cos <= min_cosine:
            gated[names[own]] += gated[name]
            gated[name] = 0.0
            dropped.add(j)
    return gated, dropped


def cosine_clipped_gossip(
    states: Mapping[str, Mapping[str, torch.Tensor]],
    weights: Mapping[str, float],
    *,
    self_name: str | None = None,
    radius: float | None = None,
    min_cosine: float = DEFAULT_MIN_COSINE,
) -> AdapterState:
    """`direction_gate`, then `clipped_gossip` over the neighbours that passed: the radius
    (unless fixed) is the lower median of the surviving neighbours' distances, so a dropped
    attacker cannot stretch it either. With every neighbour trusted this is clipped_gossip."""
    g = _Gated.of(states, weights, self_name=self_name, min_cosine=min_cosine)
    pulls = {
        j: g.weights[name] for j, name in enumerate(g.names) if j != g.own and j not in g.dropped
    }
    return _clip_around(g.stacks, g.dtypes, centre_index=g.own, pulls=pulls, radius=radius)


ROBUST_RULES: dict[str, Callable[..., AdapterState]] = {
    "median": coordinate_median,
    "trimmed-mean": trimmed_mean,
    "clipped": clipped_gossip,
    "cosine-clipped": cosine_clipped_gossip,
}
"""name -> rule; `gossipmed.mixing.rules.RULES` includes these."""

SELF_CENTRED_RULES = frozenset({"clipped", "cosine-clipped"})
"""Rules that take `self_name=` (the site whose state is the clipping centre and, for
cosine-clipped, the direction reference)."""


def with_params(name: str, **params: float) -> Callable[..., AdapterState]:
    """A rule with its knobs fixed (trim for trimmed-mean, radius for clipped, radius and
    min_cosine for cosine-clipped)."""
    if name not in ROBUST_RULES:
        raise RobustAggregationError(f"unknown robust rule {name!r}")
    return functools.partial(ROBUST_RULES[name], **params)
