"""Mixing one exchange from a secure aggregate (gossipmed.mixing.secagg), not from states.

With secure aggregation site i never holds a neighbour's state: its exchange ends with the
sum s = sum_{j in U} w_ij clip(x_j) over the contributors U that completed the protocol, and
the weight W = sum_{j in U} w_ij. The mix is

    x_i <- (1 - W) x_i + s

which is the weighted mix of the plain path with the weight of every neighbour not in U
folded back to the site itself (within the fixed-point error of the encoding).

Consensus distance: the plain path's local distance needs each neighbour's state. Here the
site reports the sum-based quantity

    d_i = || x_i - s / W ||

the distance from its own state to the weighted mean of the neighbours that contributed
(0 when nobody did). It is zero exactly when that weighted mean agrees with the site, so it
goes to zero with consensus, but it is not the plain path's number (which averages the site
in, unweighted).

Influence: under a rule that holds the median-norm bound (the default `bounded`), the site
cannot clip each neighbour, since it sees only s and W, so it applies the same rule to what it
sees: the contributors' weighted mean s / W is one neighbour, scaled down to at most the
site's own norm (gossipmed.mixing.bounds.bound_secure_sum). Then ||x_i'|| <= ||x_i||: secure
mixing never raises a site's norm, whatever the contributors send. It bounds neither the
direction (a step of at most 2 W ||x_i|| per exchange) nor who moved the sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from gossipmed.errors import GossipmedError
from gossipmed.learn.learner import AdapterState
from gossipmed.metrics import flatten_state
from gossipmed.mixing.bounds import InfluenceBound, bound_secure_sum
from gossipmed.mixing.secagg import AggregateResult


class Audit(Protocol):
    def record(self, event: str, **fields: Any) -> None: ...


@dataclass(frozen=True)
class SecureOutcome:
    """How one site's own secure exchange ended: its aggregate, or why there is none."""

    result: AggregateResult | None = None
    skipped: str | None = None  # the reason there is no sum (below threshold, out of range...)
    bytes_sent: int = 0  # every protocol message this site sent, in any instance
    bytes_received: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if (self.result is None) == (self.skipped is None):
            raise GossipmedError("a secure outcome has either a result or a skip reason")
        if self.bytes_sent < 0 or self.bytes_received < 0 or self.seconds < 0:
            raise GossipmedError("secure outcome counters must be non-negative")


def secure_mix(
    own: Mapping[str, torch.Tensor], result: AggregateResult
) -> tuple[AdapterState, float]:
    """(mixed state, sum-based local consensus distance) from the site's own state and the
    aggregate of its neighbourhood. Refuses an aggregate whose tensors do not match."""
    mixed, distance, _scaled = _mix_sum(own, result, bound_norm=False)
    return mixed, distance


def _mix_sum(
    own: Mapping[str, torch.Tensor], result: AggregateResult, *, bound_norm: bool
) -> tuple[AdapterState, float, bool]:
    """`secure_mix`, with the sum first held to the site's own norm when `bound_norm`; the
    third value says whether that bound scaled it. The distance is the unbounded sum's."""
    heard = result.tensors(dtype=torch.float64)
    if set(heard) != set(own):
        raise GossipmedError("the secure aggregate's tensors are not the site's adapter's")
    weight = result.weight_sum
    if not 0.0 <= weight <= 1.0 + 1e-9:
        raise GossipmedError(f"the secure aggregate's weight {weight} is not in [0, 1]")
    for name, tensor in own.items():
        if tuple(heard[name].shape) != tuple(tensor.shape):
            raise GossipmedError(f"the secure aggregate's {name!r} has the wrong shape")
    total, scaled = dict(heard), False
    if bound_norm:
        total, scaled = bound_secure_sum(own, heard, weight=min(weight, 1.0))
    mixed: AdapterState = {}
    for name, tensor in own.items():
        value = (1.0 - weight) * tensor.detach().to(torch.float64) + total[name]
        mixed[name] = value.to(tensor.dtype)
    if weight <= 0.0:
        return mixed, 0.0, scaled
    mean = flatten_state(heard) / weight
    distance = float(torch.linalg.vector_norm(flatten_state(own) - mean))
    return mixed, distance, scaled


def mix_outcome(
    state: Mapping[str, torch.Tensor],
    outcome: SecureOutcome,
    *,
    site: str,
    round: int,
    audit: Audit,
    bound: InfluenceBound,
    bound_norm: bool = False,
) -> tuple[AdapterState, float | None, frozenset[str], bool]:
    """(new state, sum-based local distance, contributors, whether the norm bound scaled the
    sum) for one round. No sum (below threshold, out of range, nothing ran) keeps the state,
    audited; with `bound_norm` (the `bounded` rule) the sum is held to the site's own norm
    (module docstring); a mix that fails the influence bound is rolled back, audited, as on
    the plain path."""
    keep = {k: v.detach().clone() for k, v in state.items()}
    result = outcome.result
    if result is None:
        audit.record("secure_exchange_skipped", site=site, round=round, reason=outcome.skipped)
        return keep, None, frozenset(), False
    mixed, distance, scaled = _mix_sum(state, result, bound_norm=bound_norm)
    contributors = frozenset(result.contributors)
    audit.record(
        "secure_exchange",
        site=site,
        round=round,
        contributors=sorted(contributors),
        reconstructed=sorted(result.reconstructed),
    )
    reason = bound.rollback_reason(state, mixed)
    if reason is None:
        return mixed, distance, contributors, scaled
    audit.record(
        "mix_rolled_back", site=site, round=round, step=0, reason=reason, heard=sorted(contributors)
    )
    return keep, distance, contributors, scaled


def secure_fields(outcome: SecureOutcome | None) -> dict[str, Any]:
    """The RoundRecord fields of a secure round."""
    if outcome is None or outcome.result is None:
        skipped = outcome.skipped if outcome is not None else "no secure exchange ran"
        return {"secure": True, "secure_skipped": skipped}
    return {
        "secure": True,
        "secure_contributors": len(outcome.result.contributors),
        "secure_reconstructed": len(outcome.result.reconstructed),
    }
