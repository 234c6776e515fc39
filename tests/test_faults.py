"""Drops, churn and stragglers: deterministic, and rounds still carry through to consensus."""

from pathlib import Path

import pytest

from gossipmed.errors import ConfigError
from gossipmed.learn.config import DataConfig, LearningConfig
from node.round.config import GossipConfig
from node.sim.config import SimConfig, SimSection
from node.sim.faults import FaultConfig, FaultInjector
from node.sim.run import run_simulation


def test_fault_decisions_are_reproducible_and_near_their_rates() -> None:
    a = FaultInjector(FaultConfig(drop_prob=0.2, offline_prob=0.1, seed=7), round_timeout=30.0)
    b = FaultInjector(FaultConfig(drop_prob=0.2, offline_prob=0.1, seed=7), round_timeout=30.0)
    drops = [a.dropped(r, "x", "y") for r in range(4000)]
    assert drops == [b.dropped(r, "x", "y") for r in range(4000)]
    assert sum(drops) / len(drops) == pytest.approx(0.2, abs=0.03)
    offline = [a.offline(r, "x") for r in range(4000)]
    assert sum(offline) / len(offline) == pytest.approx(0.1, abs=0.02)


def test_invalid_probabilities_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        FaultConfig(drop_prob=1.0)
    with pytest.raises(ConfigError):
        FaultConfig(straggler_delay=-1)


def _config(*, round_timeout: float = 30.0, **faults: float) -> SimConfig:
    return SimConfig(
        sim=SimSection(topology="ring", rounds=60, train=False, problem="quadratic", seed=1),
        gossip=GossipConfig(round_timeout_s=round_timeout),
        faults=FaultConfig(**faults),  # type: ignore[arg-type]
        learning=LearningConfig(data=DataConfig(n_sites=8, dataset="notes")),
    )


def test_drops_and_churn_slow_consensus_but_do_not_stop_it(tmp_path: Path) -> None:
    summary = run_simulation(
        _config(
            drop_prob=0.2,
            offline_prob=0.1,
            straggler_prob=0.1,
            straggler_delay=60.0,
            round_timeout=30.0,
        ),
        out_dir=tmp_path,
    )
    rows = summary["per_round"]["gossip"]
    assert len(rows) == 60 and all(row["sites"] == 8 for row in rows)
    assert any(row["online"] < 8 for row in rows)  # churn happened
    assert min(row["heard_fraction"] for row in rows) < 1.0  # drops happened
    assert summary["audit"].get("rejected:stale", 0) > 0  # stragglers arrived late
    first, last = rows[0]["consensus_distance"], rows[-1]["consensus_distance"]
    assert last < 1e-3 * first  # still converges
    clean = run_simulation(_config(), out_dir=tmp_path / "clean")
    assert clean["contraction"]["measured"] < summary["contraction"]["measured"]
