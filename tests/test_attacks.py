"""Simulated attackers: who attacks, what they send, and what label-flipping trains on."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from gossipmed.errors import ConfigError
from gossipmed.learn.data import EncodedSet
from gossipmed.mixing.drift import D2Learner
from gossipmed.wire.plaintext import PlaintextSealer
from node.sim.attacks import (
    AttackConfig,
    AttackingSealer,
    choose_attackers,
    flip_labels,
    poison_state,
)
from node.sim.quadratic import QuadraticLearner

NAMES = [f"site-{i:02d}" for i in range(16)]


def test_attackers_are_fixed_by_the_seed() -> None:
    a = choose_attackers(NAMES, count=2, seed=0)
    assert a == choose_attackers(NAMES, count=2, seed=0) and len(set(a)) == 2
    assert any(choose_attackers(NAMES, count=2, seed=s) != a for s in range(1, 6))
    with pytest.raises(ConfigError):
        choose_attackers(NAMES, count=17, seed=0)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        AttackConfig(kind="bribe", attackers=1)
    with pytest.raises(ConfigError):
        AttackConfig(kind="scale", attackers=0)
    with pytest.raises(ConfigError):
        AttackConfig(kind="noise", attackers=1, noise_std=-1.0)
    assert not AttackConfig().active


def test_message_attacks_transform_the_state_as_documented() -> None:
    state = {"x": torch.tensor([1.0, -2.0, 3.0])}
    gen = torch.Generator().manual_seed(0)
    flip = poison_state(state, config=AttackConfig(kind="sign-flip", attackers=1), generator=gen)
    assert flip["x"].tolist() == [-1.0, 2.0, -3.0]
    scale = poison_state(state, config=AttackConfig(kind="scale", attackers=1), generator=gen)
    assert scale["x"].tolist() == [10.0, -20.0, 30.0]
    noisy = poison_state(
        {"x": torch.ones(10_000)},
        config=AttackConfig(kind="noise", attackers=1, noise_std=0.5),
        generator=gen,
    )["x"]
    assert abs(float((noisy - 1).std()) - 0.5) < 0.02


def test_an_attacking_sealer_poisons_what_it_sends_and_nothing_else() -> None:
    cfg = AttackConfig(kind="scale", attackers=1, scale=3.0)
    bad = AttackingSealer(PlaintextSealer(identity="a"), config=cfg, seed=0)
    honest = PlaintextSealer(identity="b")
    state = {"x": torch.tensor([1.0, 2.0])}
    out = bad.seal_many(update_tensors=state, round=0, step=0, recipients=["b"], epsilon=0.0)
    got = honest.open(out["b"], expected_schema={"x": ("float32", (2,))})
    assert got.tensors["x"].tolist() == [3.0, 6.0]
    assert state["x"].tolist() == [1.0, 2.0]  # the attacker's own state is untouched
    with pytest.raises(ConfigError):
        AttackingSealer(honest, config=AttackConfig(kind="label-flip", attackers=1), seed=0)


def _quadratic_simulation(**sections: dict[str, object]) -> Any:
    from node.sim.config import sim_config_from_mapping
    from node.sim.simulation import Simulation

    raw: dict[str, Any] = {
        "sim": {"problem": "quadratic", "rounds": 1, "seed": 3},
        "data": {"n_sites": 16},
        **sections,
    }
    return Simulation(sim_config_from_mapping(raw))


def test_the_simulator_wraps_only_the_chosen_sites() -> None:
    simulation = _quadratic_simulation(attack={"kind": "sign-flip", "attackers": 2})
    chosen = simulation.attackers
    assert chosen == choose_attackers(NAMES, count=2, seed=3)
    peers = simulation.build_peers()
    wrapped = {n for n, p in peers.items() if isinstance(p.sealer, AttackingSealer)}
    assert wrapped == set(chosen)
    assert _quadratic_simulation().attackers == []


def test_label_flip_on_the_quadratic_problem_negates_the_target() -> None:
    learner = QuadraticLearner(
        start=torch.zeros(2),
        target=torch.tensor([1.0, 2.0]),
        consensus_target=torch.ones(2),
        lr=0.5,
    )
    flip_labels(learner)
    assert learner.target.tolist() == [-1.0, -2.0]


def test_label_flip_poisons_the_learner_inside_a_drift_wrapper() -> None:
    simulation = _quadratic_simulation(
        attack={"kind": "label-flip", "attackers": 1}, gossip={"drift": "d2"}
    )
    (attacker,) = simulation.attackers
    peers = simulation.build_peers()
    honest = next(n for n in peers if n != attacker)
    for name, flipped in ((attacker, True), (honest, False)):
        learner = peers[name].learner
        assert isinstance(learner, D2Learner)
        inner = learner.inner
        assert isinstance(inner, QuadraticLearner)
        index = simulation.names.index(name)
        target = simulation.factory.targets[index]  # type: ignore[attr-defined]
        assert torch.equal(inner.target, -target if flipped else target)


def test_label_flip_rewrites_each_training_target_to_the_next_label() -> None:
    # tokens: prompt 1 2 3; label "a" = [7, 9], label "b" = [8, 9]; pad 0
    labels = ("a", "b")
    cand = EncodedSet(
        input_ids=torch.tensor([[1, 2, 7, 9], [1, 2, 8, 9]]),
        loss_mask=torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]]),
        labels=labels,
    )
    train = EncodedSet(
        input_ids=torch.tensor([[1, 2, 3, 7, 9], [1, 8, 9, 0, 0]]),
        loss_mask=torch.tensor([[0.0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]),
        labels=("a", "b"),
    )
    learner = SimpleNamespace(
        eval_set=SimpleNamespace(candidates=cand, labels=labels),
        train_data=train,
        config=SimpleNamespace(train=SimpleNamespace(loss_on="label")),
        model=SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0)),
    )
    flip_labels(learner)
    out = learner.train_data
    assert out.labels == ("b", "a")
    assert out.input_ids.tolist() == [[1, 2, 3, 8, 9], [1, 7, 9, 0, 0]]
    assert out.loss_mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]


def test_label_flip_refuses_unlabelled_data() -> None:
    with pytest.raises(ConfigError):
        flip_labels(SimpleNamespace(eval_set=SimpleNamespace(candidates=None, labels=())))


# --- through the simulator (quadratic problem: milliseconds per round) ---------------------


def _simulate(**sim: object) -> tuple[float, list[str]]:
    return _simulation(**sim)[:2]


def _simulation(**sim: object) -> tuple[float, list[str], Any, Any]:
    """One exchange per round unless `sim` says otherwise: an attacker gets one pull per
    exchange, so these are the rules' claims at one exchange (docs/benchmarks/robustness.md has
    more)."""
    from node.sim.config import sim_config_from_mapping
    from node.sim.run import robustness_summary
    from node.sim.simulation import Simulation

    attack = {k: sim.pop(k) for k in ("attack", "attackers") if k in sim}
    consortium = {"gossip_steps": sim.pop("gossip_steps", 1)}
    # plain averaging is the explicit, unbounded `weighted` rule (the default bounds each pull)
    gossip = {"aggregation": sim.pop("aggregation", "weighted")}
    config = sim_config_from_mapping(
        {
            "sim": {
                "problem": "quadratic",
                "topology": "random-regular",
                "degree": 4,
                "rounds": 30,
                "seed": 0,
                **sim,
            },
            "consortium": consortium,
            "gossip": gossip,
            "attack": {
                "kind": attack.get("attack", "none"),
                "attackers": attack.get("attackers", 0),
            },
            "data": {"n_sites": 16},
            "train": {"lr": 0.1, "steps_per_round": 5},
        }
    )
    simulation = Simulation(config)
    result = simulation.run_gossip()
    summary = robustness_summary(config, attackers=simulation.attackers, records=result.records)
    return float(summary["honest_accuracy_mean"]), simulation.attackers, simulation, result


@pytest.mark.slow
def test_a_scale_attack_hurts_plain_averaging_and_clipping_absorbs_it() -> None:
    clean, nobody = _simulate()
    assert nobody == []
    attacked, attackers = _simulate(attack="scale", attackers=2)
    assert len(attackers) == 2
    clipped, _ = _simulate(attack="scale", attackers=2, aggregation="clipped")
    assert attacked < clean - 0.05
    assert clipped > clean - 0.02


@pytest.mark.slow
def test_a_run_whose_states_would_overflow_under_attack_completes_and_says_so() -> None:
    """Scale x10 against plain averaging with 7 exchanges per round drives states towards the
    float32 limit. Since issue #13 a mix that is not finite is rolled back, so no honest state
    ever overflows; an attacker whose own poisoned send would be infinite cannot seal it and
    sends nothing (audited `non_finite_state`); the run completes and records the damage."""
    clean, _, _, _ = _simulation(gossip_steps=0)
    attacked, attackers, simulation, result = _simulation(
        gossip_steps=0, attack="scale", attackers=2
    )
    assert len(attackers) == 2
    unsealable = {e["site"] for e in simulation.audit.events if e["event"] == "non_finite_state"}
    assert unsealable and unsealable <= set(attackers)
    for name, state in result.states.items():
        if name not in attackers:
            assert bool(torch.isfinite(state["x"]).all()), name
    assert attacked < clean - 0.05
