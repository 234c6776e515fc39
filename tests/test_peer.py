"""The peer's phases: seal per neighbour, verify and buffer, mix with silent weight to self."""

from collections.abc import Mapping
from pathlib import Path

import networkx as nx
import pytest
import torch

from gossipmed.choice import default_choice
from gossipmed.consortium.settings import AUTO_GOSSIP_STEPS, resolve_gossip_steps
from gossipmed.errors import GossipmedError, PrivacyBudgetExceeded
from gossipmed.learn.learner import AdapterState, EvalStats, TrainStats
from gossipmed.mixing.rules import RULES, Aggregator
from gossipmed.storage.checkpoint import load_state
from gossipmed.wire.plaintext import PlaintextSealer
from node.round.audit import ListAudit
from node.round.peer import Peer
from node.sim.simulation import build_sealers
from topology.mixing import mixing_matrix
from topology.schedule import MixingSchedule


class StepLearner:
    """State w; a training round adds `step` to every entry; budget after `budget` rounds."""

    ledger = None

    def __init__(self, value: float, *, step: float = 0.0, budget: int = 1000) -> None:
        self.w = torch.full((2, 3), value)
        self.step = step
        self.budget = budget
        self.rounds = 0

    def get_state(self) -> AdapterState:
        return {"w": self.w}

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.w = state["w"].clone()

    def train_round(self, *, steps: int) -> TrainStats:
        if self.rounds >= self.budget:
            raise PrivacyBudgetExceeded("spent")
        self.rounds += 1
        self.w = self.w + self.step
        return TrainStats(
            train_loss=1.0, epsilon=float(self.rounds), n_examples=5, steps=steps, seconds=0.0
        )

    def evaluate(self) -> EvalStats:
        return EvalStats(loss=float(self.w.mean()), accuracy=0.5)

    def state_dict(self) -> None:
        return None


WEIGHTED = Aggregator(default_choice(RULES, "weighted"))
"""The plain weighted average: for tests of the mixing weights themselves (the default rule
also scales a neighbour down to the median norm; tests/test_influence_bound.py)."""


def _peers(graph: nx.Graph, *, sealing: str = "plaintext", **kwargs: object) -> dict[str, Peer]:
    schedule = MixingSchedule.from_graphs([graph])
    sealers = build_sealers(
        schedule.sites,
        mode=sealing,
        edges=[(f"site-{u:02d}", f"site-{v:02d}") for u, v in graph.edges],
        topology="test",
    )
    return {
        name: Peer(
            name=name,
            learner=StepLearner(float(i)),
            sealer=sealers[name],
            schedule=schedule,
            local_steps=1,
            **kwargs,
        )  # type: ignore[arg-type]
        for i, name in enumerate(schedule.sites)
    }


@pytest.mark.parametrize("sealing", ["plaintext", "envelope"])
def test_a_full_round_mixes_with_metropolis_hastings_weights(sealing: str) -> None:
    peers = _peers(nx.path_graph(3), sealing=sealing, train=False, aggregator=WEIGHTED)  # 0-1-2
    for p in peers.values():
        for recipient, data in p.outgoing(0).items():
            assert peers[recipient].receive(data)
    records = {n: p.complete_round(0) for n, p in peers.items()}
    # MH on a path: w01 = w12 = 1/3, so site-00 -> (2*0 + 1)/3, site-01 -> (0+1+2)/3
    assert torch.allclose(peers["site-00"].learner.get_state()["w"], torch.full((2, 3), 1 / 3))
    assert torch.allclose(peers["site-01"].learner.get_state()["w"], torch.full((2, 3), 1.0))
    assert records["site-01"].neighbours_heard == 2
    assert records["site-01"].bytes_sent > 0 and records["site-01"].bytes_received > 0


def test_a_silent_neighbour_counts_as_our_own_state() -> None:
    peers = _peers(nx.path_graph(3), train=False)
    out = peers["site-00"].outgoing(0)
    peers["site-01"].outgoing(0)
    peers["site-01"].receive(out["site-01"])  # site-02 says nothing
    rec = peers["site-01"].complete_round(0)
    # w = 1/3*0 + (1/3 + 1/3)*1
    assert torch.allclose(peers["site-01"].learner.get_state()["w"], torch.full((2, 3), 2 / 3))
    assert rec.neighbours_heard == 1 and rec.neighbours_expected == 2


def test_bad_stale_duplicate_and_foreign_envelopes_are_audited_not_raised() -> None:
    audit = ListAudit()
    peers = _peers(nx.path_graph(3), train=False, audit=audit)
    a, b = peers["site-00"], peers["site-01"]
    env0 = a.outgoing(0)["site-01"]
    b.outgoing(0)
    assert not b.receive(b"\x00garbage")
    assert b.receive(env0)
    assert not b.receive(env0)  # duplicate
    b.complete_round(0)
    assert not b.receive(env0)  # round 0 is over: stale
    stranger = PlaintextSealer(identity="site-02").seal(
        update_tensors={"w": torch.zeros(2, 3)},
        round=1,
        recipient="site-00",
        epsilon=0.0,
    )
    assert not a.receive(stranger)  # site-02 is not a neighbour of site-00
    reasons = [e["reason"] for e in audit.events if e["event"] == "rejected"]
    assert reasons == ["invalid", "duplicate", "stale", "not_a_neighbour"]


def test_early_envelopes_are_buffered_far_future_ones_refused() -> None:
    peers = _peers(nx.path_graph(2), train=False, max_future_rounds=1)
    a, b = peers["site-00"], peers["site-01"]
    a.outgoing(0)
    a.complete_round(0)
    assert b.receive(a.outgoing(1)["site-01"])  # b is still in round 0
    assert b.heard(1) == {"site-00"}
    far = PlaintextSealer(identity="site-00").seal(
        update_tensors={"w": torch.zeros(2, 3)},
        round=5,
        recipient="site-01",
        epsilon=0.0,
    )
    assert not b.receive(far)


def test_wrong_schema_is_rejected() -> None:
    peers = _peers(nx.path_graph(2), train=False)
    bad = PlaintextSealer(identity="site-00").seal(
        update_tensors={"w": torch.zeros(3, 2)},
        round=0,
        recipient="site-01",
        epsilon=0.0,
    )
    assert not peers["site-01"].receive(bad)


def test_spent_budget_stops_training_but_not_gossip() -> None:
    schedule = MixingSchedule.from_graphs([nx.path_graph(2)])
    audit = ListAudit()
    a = Peer(
        name="site-00",
        learner=StepLearner(0.0, step=1.0, budget=1),
        sealer=PlaintextSealer(identity="site-00"),
        schedule=schedule,
        local_steps=1,
        audit=audit,
    )
    first = (a.outgoing(0), a.complete_round(0))[1]
    second = (a.outgoing(1), a.complete_round(1))[1]
    assert first.trained and not second.trained
    assert second.epsilon == 1.0
    assert any(e["event"] == "budget_spent" for e in audit.events)


def test_checkpoint_is_written_atomically_each_round(tmp_path: Path) -> None:
    schedule = MixingSchedule.from_graphs([nx.path_graph(2)])
    a = Peer(
        name="site-00",
        learner=StepLearner(3.0),
        sealer=PlaintextSealer(identity="site-00"),
        schedule=schedule,
        local_steps=1,
        train=False,
        checkpoint_dir=tmp_path,
    )
    a.outgoing(0)
    a.complete_round(0)
    state, meta = load_state(tmp_path)
    assert meta["round"] == 0 and meta["site"] == "site-00"
    assert torch.equal(state["w"], torch.full((2, 3), 3.0))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_completed_round_cannot_be_replayed() -> None:
    peers = _peers(nx.path_graph(2), train=False)
    a = peers["site-00"]
    a.outgoing(0)
    a.complete_round(0)
    with pytest.raises(GossipmedError):
        a.outgoing(0)


def _w(peer: Peer) -> float:
    return float(peer.learner.get_state()["w"][0, 0])


def _exchange_all(peers: Mapping[str, Peer], round: int, step: int) -> None:
    for p in peers.values():
        for recipient, data in p.seal_outgoing(round, step).items():
            assert peers[recipient].receive(data)


@pytest.mark.parametrize("sealing", ["plaintext", "envelope"])
def test_a_round_with_k_gossip_steps_mixes_k_times(sealing: str) -> None:
    graph = nx.path_graph(3)
    peers = _peers(graph, sealing=sealing, train=False, gossip_steps=3, aggregator=WEIGHTED)
    w = torch.tensor(mixing_matrix(graph))
    x = torch.tensor([0.0, 1.0, 2.0], dtype=w.dtype) ** 2  # not an eigenvector of W
    for p, value in zip(peers.values(), x, strict=True):
        p.learner.set_state({"w": torch.full((2, 3), float(value))})
    for r in range(2):  # two rounds: the replay guard sees exchange indices 0..5 in order
        for p in peers.values():
            p.train(r)
        for step in range(3):
            if step:
                for p in peers.values():
                    p.mix_step(r, step - 1)
            _exchange_all(peers, r, step)
        records = [p.complete_round(r) for p in peers.values()]
        x = torch.linalg.matrix_power(w, 3) @ x
        assert [_w(p) for p in peers.values()] == pytest.approx(x.tolist())
        assert records[1].neighbours_heard == 2


def test_an_envelope_for_an_exchange_already_mixed_is_stale() -> None:
    audit = ListAudit()
    peers = _peers(nx.path_graph(2), train=False, gossip_steps=2, audit=audit)
    a, b = peers["site-00"], peers["site-01"]
    a.train(0)
    b.train(0)
    late = a.seal_outgoing(0, 0)["site-01"]
    b.mix_step(0, 0)  # b gave up waiting for a in exchange 0
    assert not b.receive(late)
    assert [e["reason"] for e in audit.events if e["event"] == "rejected"] == ["stale"]
    a.mix_step(0, 0)
    assert b.receive(a.seal_outgoing(0, 1)["site-01"])
    assert b.heard(0, 1) == {"site-00"}


def test_after_the_first_exchange_only_neighbours_just_heard_are_awaited() -> None:
    peers = _peers(nx.path_graph(3), train=False, gossip_steps=3)
    a, b = peers["site-00"], peers["site-01"]
    for p in (a, b):
        p.train(0)
    b.receive(a.seal_outgoing(0, 0)["site-01"])  # site-02 is silent
    assert b.expected(0, 0) == {"site-00", "site-02"}
    b.mix_step(0, 0)
    assert b.expected(0, 1) == {"site-00"}


def test_exchanges_must_be_taken_in_order() -> None:
    peer = _peers(nx.path_graph(2), train=False, gossip_steps=2)["site-00"]
    peer.train(0)
    with pytest.raises(GossipmedError, match="not open"):
        peer.seal_outgoing(0, 1)
    peer.mix_step(0, 0)
    with pytest.raises(GossipmedError, match="last one is mixed by complete_round"):
        peer.mix_step(0, 1)


def test_gossip_steps_zero_means_auto_from_lambda2() -> None:
    assert resolve_gossip_steps(AUTO_GOSSIP_STEPS, lam2=0.805) == 8  # 0.805 ** 8 <= 0.2
    assert resolve_gossip_steps(AUTO_GOSSIP_STEPS, lam2=0.0) == 1  # complete graph
    assert resolve_gossip_steps(3, lam2=0.805) == 3
    with pytest.raises(GossipmedError):
        resolve_gossip_steps(-1, lam2=0.5)


@pytest.mark.parametrize("gossip_steps", [1, 3])
def test_an_envelope_landing_while_its_exchange_is_mixed_is_refused_as_stale(
    gossip_steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receive pump runs in another thread than the mix: an envelope must be either mixed
    or refused, never accepted and then dropped."""
    audit = ListAudit()
    peers = _peers(nx.path_graph(2), train=False, gossip_steps=gossip_steps, audit=audit)
    a, b = peers["site-00"], peers["site-01"]
    a.train(0)
    b.train(0)
    late = b.seal_outgoing(0, 0)["site-00"]
    a.seal_outgoing(0, 0)
    real_mix = a.aggregator.mix_reporting
    outcome = []

    def mix_with_an_arrival(**kwargs: object) -> tuple[AdapterState, frozenset[str]]:
        outcome.append(a.receive(late))
        return real_mix(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(a.aggregator, "mix_reporting", mix_with_an_arrival)
    if gossip_steps > 1:
        a.mix_step(0, 0)
    else:
        a.complete_round(0)
    assert outcome == [False]
    assert [e["reason"] for e in audit.events if e["event"] == "rejected"] == ["stale"]
    assert not [e for e in audit.events if e["event"] == "accepted"]
