"""What one round of a peer carries from train(r) to complete_round(r), and the metrics record
it becomes: a round that ran, or one the site spent offline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from gossipmed.learn.learner import AdapterState
from gossipmed.metrics import RoundRecord
from node.round.secure_mix import SecureOutcome, secure_fields


@dataclass
class RoundWork:
    """What train(r) left for the exchanges and complete_round(r)."""

    round: int
    state: AdapterState
    step: int = 0  # the exchange now open (0 .. gossip_steps - 1)
    train_loss: float | None = None
    trained: bool = False
    bytes_sent: int = 0
    bytes_received: int = 0
    heard: set[str] = field(default_factory=set)  # in any exchange of the round
    heard_last: frozenset[str] | None = None  # in the previous exchange
    local_cd: float | None = None  # before the first exchange's mix
    seconds: float = 0.0
    secure: SecureOutcome | None = None  # secure aggregation: this exchange's outcome
    states_mixed: int = 0  # neighbour states (or secure sums) mixed, all exchanges
    bound_clipped: int = 0  # of those, how many the rule's norm bound scaled down
    state_norm: float | None = None  # after the round's last mix

    def record(
        self,
        *,
        site: str,
        epsilon: float,
        expected: int,
        rejected: int,
        eval_loss: float | None,
        accuracy: float | None,
        secure: bool,
        accuracy_norm: float | None = None,
        eval_perplexity: float | None = None,
    ) -> RoundRecord:
        return RoundRecord(
            round=self.round,
            site=site,
            train_loss=self.train_loss,
            eval_loss=eval_loss,
            accuracy=accuracy,
            consensus_distance=self.local_cd,
            epsilon=epsilon,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            neighbours_heard=len(self.heard),
            seconds=self.seconds,
            neighbours_expected=expected,
            local_consensus_distance=self.local_cd,
            trained=self.trained,
            rejected=rejected,
            states_mixed=self.states_mixed,
            bound_clipped=self.bound_clipped,
            state_norm=self.state_norm,
            accuracy_norm=accuracy_norm,
            eval_perplexity=eval_perplexity,
            **secure_fields(self.secure) if secure else {},
        )


def offline_record(
    *, round: int, site: str, epsilon: float, expected: int, rejected: int
) -> RoundRecord:
    """The record of a round the site was offline for: nothing trained, sent or mixed."""
    return RoundRecord(
        round=round,
        site=site,
        train_loss=None,
        eval_loss=None,
        accuracy=None,
        consensus_distance=None,
        epsilon=epsilon,
        bytes_sent=0,
        bytes_received=0,
        neighbours_heard=0,
        seconds=0.0,
        neighbours_expected=expected,
        trained=False,
        online=False,
        rejected=rejected,
    )


def snapshot(state: Mapping[str, torch.Tensor]) -> AdapterState:
    """A copy no later in-place update of the learner can change."""
    return {k: v.detach().clone() for k, v in state.items()}
