"""`gossipmed simulate` with the real language-model learners (toy base), end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gossipmed.metrics import read_metrics
from node.cli import main


@pytest.mark.slow
def test_noise_is_planned_for_each_runs_own_steps(tiny_base: Path, tmp_path: Path) -> None:
    """Sites and baselines calibrate their noise for exactly the steps they will take: the
    centralized baseline (n_sites x the steps of one site) ends within the same epsilon
    budget instead of being refused mid-run, and no run leaves most of its budget unused."""
    out = tmp_path / "run"
    args = [
        "simulate", "--base-model", str(tiny_base), "--dataset", "notes",
        "--nodes", "3", "--topology", "ring", "--rounds", "2", "--local-steps", "2",
        "--batch-size", "8", "--max-train-examples", "120", "--eval-size", "12",
        "--epsilon", "8", "--baselines", "--json", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    gossip = read_metrics(out / "metrics.jsonl")
    central = read_metrics(out / "baselines/centralized/metrics.jsonl")
    local = read_metrics(out / "baselines/local-only/metrics.jsonl")
    assert len(gossip) == len(local) == 3 * 2 and len(central) == 2
    for records in (gossip, local, central):
        assert all(0 < r.epsilon <= 8.0 for r in records)
        assert max(r.epsilon for r in records) > 0.9 * 8.0
    assert all(r.neighbours_heard == 2 for r in gossip)
    assert len(list((out / "adapters").iterdir())) == 3
    assert json.loads((out / "summary.json").read_text())
