"""Issue #13 finding 3: one member's huge finite values must not crash, spread, or drain.

A signed update from an enrolled neighbour carried values near 3e38: finite, so the wire let
them through; the plain weighted mix accepted them, training then made NaN, the next seal
raised, the daemon died, the neighbour it had forwarded to died too, and every restart
charged another round of privacy first. Now each neighbour's pull is bounded (the default
`bounded` rule), a mix that is not finite or explodes is rolled back and audited (every
rule), and no round is charged to the ledger from a state that is not finite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import networkx as nx
import pytest
import torch

from gossipmed.choice import default_choice
from gossipmed.errors import ConfigError
from gossipmed.learn.learner import AdapterState, EvalStats, TrainStats
from gossipmed.mixing.bounds import InfluenceBound, clip_to_median_norm, state_norm
from gossipmed.mixing.rules import RULES, Aggregator
from node.round.audit import ListAudit
from node.round.peer import Peer
from node.sim.simulation import build_sealers
from topology.schedule import MixingSchedule

HUGE = 3e38


class Learner:
    """x pulled towards 1 by each round; counts the rounds a ledger would be charged for."""

    ledger = None

    def __init__(self, value: float) -> None:
        self.x = torch.full((64,), value)
        self.charged = 0

    def get_state(self) -> AdapterState:
        return {"x": self.x.clone()}

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.x = state["x"].clone()

    def train_round(self, *, steps: int) -> TrainStats:
        self.charged += 1
        self.x = self.x + 0.1 * (1.0 - self.x) * self.x  # overflows from a huge state
        return TrainStats(train_loss=0.0, epsilon=float(self.charged), n_examples=1, steps=steps,
                          seconds=0.0)  # fmt: skip

    def evaluate(self) -> EvalStats:
        return EvalStats(loss=0.0, accuracy=0.0)

    def state_dict(self) -> None:
        return None


def path_of_three(rule: str, audit: ListAudit) -> dict[str, Peer]:
    """mallory - victim - far: real envelopes between enrolled members."""
    graph = nx.path_graph(3)
    schedule = MixingSchedule.from_graphs([graph])
    names = schedule.sites
    sealers = build_sealers(names, mode="envelope", edges=schedule.edges(), topology="path")
    return {
        name: Peer(
            name=name,
            learner=Learner(0.5),
            sealer=sealers[name],
            schedule=schedule,
            local_steps=1,
            aggregator=Aggregator(default_choice(RULES, rule)),
            audit=audit,
        )
        for name in names
    }


def run_round(peers: dict[str, Peer], r: int, *, poison: str | None = None) -> None:
    for p in peers.values():
        p.train(r)
    for name, p in peers.items():
        out = p.seal_outgoing(r)
        for recipient, data in out.items():
            if name == poison:  # what the attacker really sends: a signed, huge update
                data = p.sealer.seal(
                    update_tensors={"x": torch.full((64,), HUGE)},
                    round=r,
                    recipient=recipient,
                    epsilon=0.0,
                )
            assert peers[recipient].receive(data)
    for p in peers.values():
        p.complete_round(r)


@pytest.mark.parametrize("rule", ["bounded", "weighted", "trimmed-mean", "cosine-clipped"])
def test_a_huge_update_neither_crashes_nor_spreads_nor_leaves_nan(rule: str) -> None:
    audit = ListAudit()
    peers = path_of_three(rule, audit)
    mallory, victim, far = peers.values()
    for r in range(4):
        run_round(peers, r, poison=mallory.name)
    for p in (victim, far):
        norm = state_norm(p.learner.get_state())
        assert math.isfinite(norm) and norm < 100 * math.sqrt(64), (p.name, norm)
    assert not [e for e in audit.events if e["event"] == "non_finite_training"]


def test_the_plain_average_takes_the_poison_and_the_rollback_undoes_it() -> None:
    audit = ListAudit()
    peers = path_of_three("weighted", audit)
    before = peers["site-01"].learner.get_state()
    run_round(peers, 0, poison="site-00")
    rolled = [e for e in audit.events if e["event"] == "mix_rolled_back"]
    assert [e["site"] for e in rolled] == ["site-01"]
    assert rolled[0]["heard"] == ["site-00", "site-02"]
    # the victim kept its pre-mix state: trained once, not mixed
    trained = before["x"] + 0.1 * (1.0 - before["x"]) * before["x"]
    assert torch.allclose(peers["site-01"].learner.get_state()["x"], trained)


def test_the_default_rule_scales_a_neighbour_down_to_the_median_norm() -> None:
    own = {"x": torch.ones(4)}  # norm 2
    huge = {"x": torch.full((4,), HUGE)}
    clipped = clip_to_median_norm({"me": own, "j": huge}, self_name="me")
    assert state_norm(clipped.states["j"]) == pytest.approx(2.0, rel=1e-6)  # lower median
    assert clipped.states["me"] is own
    zero = {"x": torch.zeros(4)}  # a zero state (FFA-LoRA's B at start): nothing to pull up to
    assert clip_to_median_norm({"me": zero, "j": huge}, self_name="me").limit == 0.0
    mixed = Aggregator().mix(
        self_name="me", row={"me": 0.5, "j": 0.5}, states={"me": own, "j": huge}
    )
    assert state_norm(mixed) <= 2.0 + 1e-6


def test_the_rollback_check_names_its_reason() -> None:
    bound = InfluenceBound()
    before = {"x": torch.ones(16)}
    assert bound.rollback_reason(before, {"x": torch.full((16,), 2.0)}) is None
    assert bound.rollback_reason(before, {"x": torch.tensor([math.nan] * 16)}) == "non_finite"
    reason = bound.rollback_reason(before, {"x": torch.full((16,), 100.0)})
    assert reason is not None and reason.startswith("exploding")


def test_no_privacy_is_charged_from_a_state_that_is_not_finite() -> None:
    audit = ListAudit()
    peer = path_of_three("bounded", audit)["site-00"]
    learner = peer.learner
    assert isinstance(learner, Learner)
    learner.x[3] = math.inf  # however it got there
    peer.train(0)
    assert learner.charged == 0
    assert [e["event"] for e in audit.events] == ["non_finite_state"]


def test_training_that_turns_the_state_non_finite_is_not_kept() -> None:
    audit = ListAudit()
    peer = path_of_three("weighted", audit)["site-00"]
    learner = peer.learner
    assert isinstance(learner, Learner)
    learner.x = torch.full((64,), 1e30)  # large but finite: the update overflows
    peer.train(0)
    assert learner.charged == 1  # the steps ran, so their privacy is spent
    assert torch.equal(learner.x, torch.full((64,), 1e30))  # but their result is dropped
    assert [e["event"] for e in audit.events] == ["non_finite_training"]
    assert all(math.isfinite(len(d)) for d in peer.seal_outgoing(0).values())


def test_bound_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_ratio"):
        InfluenceBound(max_ratio=0.5)
    from node.round.config import GossipConfig

    with pytest.raises(ConfigError, match=r"gossip\.max_ratio"):
        GossipConfig(max_mix_growth=0.0)
