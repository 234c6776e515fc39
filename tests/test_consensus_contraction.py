"""With training off, gossip is x <- W x: the measured per-round contraction of the consensus
distance must match the topology's lambda2 (the engine mixes exactly what topology says), and
lambda2 ** k when a round has k exchanges (multi-gossip). That is the plain `weighted` rule;
the default `bounded` rule scales neighbours above the median norm down, which is not linear
and contracts more slowly (gossipmed.mixing.bounds, docs/benchmarks/robustness.md)."""

from pathlib import Path
from typing import Any

import pytest

from gossipmed.choice import default_choice
from gossipmed.consortium.settings import AUTO_GOSSIP_STEPS, ConsortiumSettings
from gossipmed.learn.config import DataConfig, LearningConfig
from gossipmed.mixing.rules import RULES
from node.round.config import GossipConfig
from node.sim.config import SimConfig, SimSection
from node.sim.run import run_simulation
from topology.spectral import AUTO_CONTRACTION, gossip_steps_for


@pytest.mark.parametrize(
    ("kind", "nodes", "rounds"),
    [("ring", 8, 40), ("torus", 9, 14), ("random-regular", 16, 40)],
)
def test_measured_contraction_is_within_ten_percent_of_lambda2(
    kind: str, nodes: int, rounds: int, tmp_path: Path
) -> None:
    summary = _run_without_training(kind, nodes=nodes, rounds=rounds, tmp_path=tmp_path)
    measured = summary["contraction"]["measured"]
    lam2 = summary["topology"]["lambda2"]
    assert 0 < lam2 < 1
    assert measured == pytest.approx(lam2, rel=0.10)
    first = summary["per_round"]["gossip"][0]["consensus_distance"]
    last = summary["per_round"]["gossip"][-1]["consensus_distance"]
    assert last < first * lam2 ** (rounds // 2)  # it really did contract, geometrically


@pytest.mark.parametrize(
    ("kind", "nodes", "rounds"),
    [("ring", 8, 5), ("torus", 9, 5), ("random-regular", 16, 5)],
)
def test_auto_gossip_steps_contract_by_lambda2_to_their_number_per_round(
    kind: str, nodes: int, rounds: int, tmp_path: Path
) -> None:
    summary = _run_without_training(
        kind, nodes=nodes, rounds=rounds, tmp_path=tmp_path, gossip_steps=AUTO_GOSSIP_STEPS
    )
    lam2 = summary["topology"]["lambda2"]
    steps = summary["contraction"]["gossip_steps"]
    assert steps == gossip_steps_for(lam2) > 1
    assert lam2**steps <= AUTO_CONTRACTION
    assert summary["contraction"]["measured"] == pytest.approx(lam2**steps, rel=0.10)
    assert summary["contraction"]["expected"] == pytest.approx(lam2**steps)


def _run_without_training(
    kind: str, *, nodes: int, rounds: int, tmp_path: Path, gossip_steps: int = 1
) -> dict[str, Any]:
    config = SimConfig(
        sim=SimSection(
            topology=kind,
            rounds=rounds,
            train=False,
            problem="quadratic",
            sealing="plaintext",
            seed=3,
        ),
        consortium=ConsortiumSettings(gossip_steps=gossip_steps),
        gossip=GossipConfig(aggregation=default_choice(RULES, "weighted")),
        learning=LearningConfig(data=DataConfig(n_sites=nodes, dataset="notes")),
    )
    return run_simulation(config, out_dir=tmp_path)
