"""Issue #13 finding 1: a neighbour must not be able to replay a site's DP draws.

The daemon's Poisson sampling and Gaussian noise used to come from a generator seeded with
public values (the config's seed and the site's index; after a resume, a public tag), so a
neighbour who knew the config rebuilt the noise and recovered the clipped gradient. Now every
start and resume of a daemon seeds it from the OS; only a simulation is seeded, on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from node.cli import main
from node.daemon.cluster import create_cluster, toy_sections
from node.daemon.config import load_daemon_settings
from node.daemon.site_daemon import SiteDaemon

pytest_plugins = ["daemon_support"]  # fixture: toy_base
pytestmark = pytest.mark.slow


def one_round(site: Path) -> dict[str, torch.Tensor]:
    daemon = SiteDaemon(load_daemon_settings(site))
    try:
        daemon.peer.train(daemon.peer.round)
        return daemon.learner.get_state()
    finally:
        daemon.metrics.close()


def test_two_starts_of_the_same_daemon_draw_different_noise(tmp_path: Path, toy_base: Path) -> None:
    def sections(i: int) -> dict[str, Any]:
        s = toy_sections(index=i, nodes=2, base_model=toy_base, rounds=0, round_timeout_s=5.0)
        s["dp"] = {"epsilon": 1000.0, "noise_multiplier": 1.0}
        s["train"]["seed"] = 0  # a public, fixed seed in the config
        return s

    a = create_cluster(tmp_path / "a", nodes=2, topology="ring", sections=sections)[0]
    b = create_cluster(tmp_path / "b", nodes=2, topology="ring", sections=sections)[0]
    first, second = one_round(a), one_round(b)  # same config, same data, same start state
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_a_simulation_with_a_fixed_seed_stays_reproducible(tmp_path: Path, tiny_base: Path) -> None:
    args = [
        "simulate", "--base-model", str(tiny_base), "--dataset", "notes", "--nodes", "2",
        "--topology", "ring", "--rounds", "1", "--local-steps", "2", "--batch-size", "8",
        "--max-train-examples", "60", "--eval-size", "6", "--seed", "5", "--json",
    ]  # fmt: skip
    runs = []
    for name in ("one", "two"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs.append([{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines])
    assert runs[0] == runs[1]
