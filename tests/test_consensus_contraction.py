"""With training off, gossip is x <- W x: the measured per-round contraction of the consensus
distance must match the topology's lambda2 (the engine mixes exactly what topology says)."""

from pathlib import Path

import pytest

from gossipmed.config import DataConfig, LearningConfig
from node.sim_config import SimConfig, SimSection
from node.simulate import run_simulation


@pytest.mark.parametrize(
    ("kind", "nodes", "rounds"),
    [("ring", 8, 40), ("torus", 9, 14), ("random-regular", 16, 40)],
)
def test_measured_contraction_is_within_ten_percent_of_lambda2(
    kind: str, nodes: int, rounds: int, tmp_path: Path
) -> None:
    config = SimConfig(
        sim=SimSection(
            topology=kind,
            rounds=rounds,
            train=False,
            problem="quadratic",
            sealing="plaintext",
            seed=3,
        ),
        learning=LearningConfig(data=DataConfig(n_sites=nodes, dataset="notes")),
    )
    summary = run_simulation(config, out_dir=tmp_path)
    measured = summary["contraction"]["measured"]
    lam2 = summary["topology"]["lambda2"]
    assert 0 < lam2 < 1
    assert measured == pytest.approx(lam2, rel=0.10)
    first = summary["per_round"]["gossip"][0]["consensus_distance"]
    last = summary["per_round"]["gossip"][-1]["consensus_distance"]
    assert last < first * lam2 ** (rounds // 2)  # it really did contract, geometrically
