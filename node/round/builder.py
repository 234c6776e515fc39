"""Compose one site's peer from its configuration, once, before the peer exists.

The simulator and the daemon both come here: the learner gets its drift correction, the
encoder its codec and parameters, the aggregator its rule and parameters, and a resumed site
its checkpointed state and every component's saved state. Nothing of a constructed peer is
swapped afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gossipmed.choice import build
from gossipmed.errors import CheckpointError, ConfigError, GossipmedError
from gossipmed.learn.learner import Learner
from gossipmed.metrics import MetricsWriter
from gossipmed.mixing.drift import DRIFT
from gossipmed.mixing.rules import Aggregator
from gossipmed.storage.peer_state import Checkpoint, restore_components
from gossipmed.wire.compression import ENCODERS
from gossipmed.wire.update import Sealer
from node.round.audit import AuditSink
from node.round.config import GossipConfig
from node.round.peer import Peer, state_schema
from topology.schedule import MixingSchedule


@dataclass(frozen=True)
class RoundPlan:
    """How a site runs its rounds (the same for every site of a simulation)."""

    local_steps: int
    gossip_steps: int
    train: bool = True
    eval_every: int = 1
    total_rounds: int | None = None
    secure: bool = False  # secure aggregation (the consortium's): one exchange per round

    def __post_init__(self) -> None:
        if self.secure and not self.train:  # every secure round would leak or do nothing
            raise ConfigError(
                "secure aggregation needs training: sums of training-free states reveal "
                "individual states across rounds"
            )


@dataclass(frozen=True)
class Assembled:
    peer: Peer
    restored: tuple[str, ...] = ()
    """Components whose saved state the checkpoint vouched for and that were restored."""


def build_peer(
    *,
    name: str,
    learner: Learner,
    sealer: Sealer,
    schedule: MixingSchedule,
    plan: RoundPlan,
    gossip: GossipConfig,
    audit: AuditSink | None = None,
    checkpoint_dir: Path | None = None,
    metrics: MetricsWriter | None = None,
    resume: Checkpoint | None = None,
) -> Assembled:
    learner = DRIFT.get(gossip.drift.name).build(gossip.drift.params)(learner)
    schema = state_schema(learner.get_state())
    if resume is not None:
        try:
            learner.set_state(resume.state)
        except GossipmedError as exc:
            raise CheckpointError(f"checkpoint of {name} does not fit its adapter: {exc}") from exc
        if resume.replay_state is not None:
            sealer.load_state_dict(resume.replay_state, schema=schema)
    peer = Peer(
        name=name,
        learner=learner,
        sealer=sealer,
        schedule=schedule,
        local_steps=plan.local_steps,
        gossip_steps=plan.gossip_steps,
        encoder=build(ENCODERS, gossip.codec),
        aggregator=Aggregator(gossip.aggregation),
        mix_bound=gossip.mix_bound,
        train=plan.train,
        eval_every=plan.eval_every,
        total_rounds=plan.total_rounds,
        start_round=resume.round + 1 if resume is not None else 0,
        max_future_rounds=gossip.max_future_rounds,
        audit=audit,
        checkpoint_dir=checkpoint_dir,
        metrics=metrics,
        secure=plan.secure,
    )
    restored: tuple[str, ...] = ()
    if resume is not None:  # after set_state: D² restarts on a set_state outside a round
        where = checkpoint_dir or Path(".")
        restored = tuple(
            restore_components(resume, peer.components(), schema=schema, directory=where)
        )
    return Assembled(peer=peer, restored=restored)
