"""The simulator with secure aggregation: the same protocol code, faults as drops, records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gossipmed.errors import ConfigError
from gossipmed.metrics import flatten_state, read_metrics
from gossipmed.mixing.secagg import FixedPoint
from node.cli import main
from node.sim.config import sim_config_from_mapping
from node.sim.simulation import Simulation


def _config(
    *, secure: bool, topology: str = "random-regular", nodes: int = 8, **faults: float
) -> Any:
    return sim_config_from_mapping(
        {
            "sim": {
                "problem": "quadratic",
                "topology": topology,
                "degree": 4,
                "rounds": 4,
                "sealing": "plaintext",
                "seed": 3,
            },
            "data": {"n_sites": nodes},
            "consortium": {"gossip_steps": 1, "secure_aggregation": secure},
            "gossip": {"aggregation": "weighted"},
            "faults": dict(faults),
        }
    )


@pytest.mark.parametrize(("topology", "nodes"), [("random-regular", 8), ("torus", 9)])
def test_secure_rounds_equal_the_plain_weighted_mix_within_the_fixed_point_error(
    topology: str, nodes: int
) -> None:
    """Four rounds of training and mixing: every site's state with secure aggregation is the
    plain weighted mix's to within the fixed-point bound (n / 2^33 per coordinate per
    exchange, n <= 7 here) plus float32 rounding, carried through training."""
    plain = Simulation(_config(secure=False, topology=topology, nodes=nodes)).run_gossip()
    secure = Simulation(_config(secure=True, topology=topology, nodes=nodes)).run_gossip()
    bound = FixedPoint().error_bound(4)
    assert bound < 1e-9
    for site, state in plain.states.items():
        diff = flatten_state(secure.states[site]) - flatten_state(state)
        assert float(diff.abs().max()) < 1e-4, site
    records = [r for r in secure.records if r.run == "gossip"]
    assert all(r.secure and r.secure_skipped is None for r in records)
    assert all(r.secure_contributors == r.neighbours_expected for r in records)
    assert all(r.secure_reconstructed == 0 for r in records)
    assert all(r.bytes_sent > 0 and r.bytes_received > 0 for r in records)


def test_dropped_updates_become_protocol_drops_reconstructed_or_skipped() -> None:
    """A lost masked input is a contributor that shared its keys and went silent: its masks
    are rebuilt from the survivors' shares; below the threshold the exchange is skipped,
    audited, and the site keeps its state."""
    sim = Simulation(_config(secure=True, drop_prob=0.25))
    result = sim.run_gossip()
    records = result.records
    summed = [r for r in records if r.secure_contributors is not None]
    skipped = [r for r in records if r.secure_skipped is not None]
    assert any((r.secure_reconstructed or 0) > 0 for r in summed)
    assert skipped and all("BelowThreshold" in (r.secure_skipped or "") for r in skipped)
    assert all(r.neighbours_heard == 0 and r.local_consensus_distance is None for r in skipped)
    events = [e["event"] for e in sim.audit.events]
    assert events.count("secure_exchange_skipped") == len(skipped)
    assert events.count("secure_exchange") == len(summed)


def test_offline_sites_neither_receive_nor_contribute() -> None:
    sim = Simulation(_config(secure=True, offline_prob=0.3))
    records = sim.run_gossip().records
    offline = [r for r in records if not r.online]
    assert offline and all(not r.secure for r in offline)
    assert all((r.secure_contributors or 0) <= r.neighbours_expected for r in records if r.online)


def test_a_graph_with_small_neighbourhoods_is_refused_naming_the_sites() -> None:
    with pytest.raises(ConfigError, match="too few at: site-00, site-01"):
        Simulation(_config(secure=True, topology="ring"))


def test_cli_run_records_secure_aggregation_in_metrics_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["simulate", "--problem", "quadratic", "--nodes", "6", "--topology", "complete"]
    assert main([*args, "--rounds", "2", "--secure-aggregation", "--json", "--out", str(out)]) == 0
    assert all(r.secure and r.secure_contributors == 5 for r in read_metrics(out / "metrics.jsonl"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["gossip"]["secure"] == {
        "aggregated": 12,
        "skipped": 0,
        "contributors": 60,
        "reconstructed": 0,
    }
    assert summary["config"]["consortium"]["secure_aggregation"] is True


def test_the_sum_based_distance_is_the_distance_to_the_contributors_weighted_mean() -> None:
    from gossipmed.mixing.secagg import run_graph_exchange
    from node.round.secure_mix import secure_mix

    names = [f"s{i}" for i in range(5)]
    neighbours = {n: [m for m in names if m != n] for n in names}
    weights = {n: {m: 0.2 for m in names if m != n} for n in names}
    gen = torch.Generator().manual_seed(0)
    values = {n: {"w": torch.randn(3, 2, generator=gen)} for n in names}
    results = run_graph_exchange(
        neighbours=neighbours, weights=weights, values=values, roster_hash=b"r" * 32, round=0
    )
    result = results["s0"]
    assert not isinstance(result, Exception)
    mixed, distance = secure_mix(values["s0"], result)
    others = torch.stack([values[m]["w"] for m in names[1:]])
    expected_mix = 0.2 * values["s0"]["w"] + 0.2 * others.sum(0)
    assert torch.allclose(mixed["w"], expected_mix, atol=1e-6)
    mean = others.mean(0)
    assert distance == pytest.approx(float(torch.linalg.vector_norm(values["s0"]["w"] - mean)))


def test_secure_aggregation_without_training_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sums of training-free states reveal individual states across rounds (issue #20,
    finding 3), so a simulation that never trains cannot use secure aggregation."""
    mapping = {
        "sim": {"problem": "quadratic", "topology": "complete", "train": False},
        "data": {"n_sites": 6},
        "consortium": {"gossip_steps": 1, "secure_aggregation": True},
    }
    with pytest.raises(ConfigError, match="training"):
        sim_config_from_mapping(mapping)
    args = ["simulate", "--problem", "quadratic", "--nodes", "6", "--topology", "complete"]
    argv = [*args, "--secure-aggregation", "--no-train", "--out", str(tmp_path / "run")]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
