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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gossipmed.errors import GossipmedError
from gossipmed.learn.learner import AdapterState
from gossipmed.metrics import flatten_state
from gossipmed.mixing.secagg import AggregateResult


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
    total = result.tensors(dtype=torch.float64)
    if set(total) != set(own):
        raise GossipmedError("the secure aggregate's tensors are not the site's adapter's")
    weight = result.weight_sum
    if not 0.0 <= weight <= 1.0 + 1e-9:
        raise GossipmedError(f"the secure aggregate's weight {weight} is not in [0, 1]")
    mixed: AdapterState = {}
    for name, tensor in own.items():
        if tuple(total[name].shape) != tuple(tensor.shape):
            raise GossipmedError(f"the secure aggregate's {name!r} has the wrong shape")
        value = (1.0 - weight) * tensor.detach().to(torch.float64) + total[name]
        mixed[name] = value.to(tensor.dtype)
    if weight <= 0.0:
        return mixed, 0.0
    mean = flatten_state(total) / weight
    distance = float(torch.linalg.vector_norm(flatten_state(own) - mean))
    return mixed, distance
