"""Mixing one exchange from the neighbours' individual states (the path without secure
aggregation): the consortium's rule over the site's row of the mixing matrix (the default
`bounded` rule scales neighbours down to the median norm, gossipmed.mixing.bounds), then the
rollback backstop, which returns a non-finite or exploding mix to the site's own state."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gossipmed.learn.learner import AdapterState
from gossipmed.mixing.bounds import InfluenceBound
from gossipmed.mixing.rules import Aggregator
from node.round.audit import AuditSink
from node.round.work import snapshot


def mix_states(
    own: Mapping[str, torch.Tensor],
    neighbours: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    site: str,
    round: int,
    step: int,
    row: Mapping[str, float],
    aggregator: Aggregator,
    bound: InfluenceBound,
    audit: AuditSink,
) -> tuple[AdapterState, frozenset[str]]:
    """(the mixed state, or a copy of `own` (audited "mix_rolled_back") when the backstop
    refuses the mix; the neighbours the rule's norm bound scaled down). A silent neighbour's
    weight goes to the site itself (the rule's job)."""
    mixed, scaled = aggregator.mix_reporting(
        self_name=site, row=row, states={site: own, **neighbours}
    )
    reason = bound.rollback_reason(own, mixed)
    if reason is None:
        return mixed, scaled
    audit.record(
        "mix_rolled_back",
        site=site,
        round=round,
        step=step,
        reason=reason,
        heard=sorted(neighbours),
    )
    return snapshot(own), scaled
