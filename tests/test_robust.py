"""Robust mixing rules: what an attacker can and cannot do to one site's mixing step."""

from __future__ import annotations

import pytest
import torch

from gossipmed.robust import (
    ROBUST_RULES,
    RobustAggregationError,
    clipped_gossip,
    coordinate_median,
    trim_count,
    trimmed_mean,
    with_params,
)


def _states(values: dict[str, list[float]]) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {"x": torch.tensor(v), "y": torch.tensor([[v[0]]])} for n, v in values.items()}


def _uniform(names: list[str]) -> dict[str, float]:
    return {n: 1.0 / len(names) for n in names}


def test_median_ignores_one_outlier_among_three() -> None:
    states = _states({"me": [1.0, 2.0], "n1": [1.2, 1.8], "bad": [1e6, -1e6]})
    out = coordinate_median(states, _uniform(list(states)))
    assert out["x"].tolist() == pytest.approx([1.2, 1.8])
    assert out["y"].shape == (1, 1) and out["y"].dtype == torch.float32


def test_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    states = _states({"a": [0.0], "b": [1.0], "c": [3.0], "d": [100.0]})
    assert coordinate_median(states, _uniform(list(states)))["x"].tolist() == [2.0]


def test_trimmed_mean_drops_the_extremes_on_both_sides() -> None:
    states = _states({"a": [1.0], "b": [2.0], "c": [3.0], "d": [-50.0], "e": [70.0]})
    assert trimmed_mean(states, _uniform(list(states)))["x"].tolist() == [2.0]
    assert [trim_count(n, 0.2) for n in (1, 2, 3, 5, 10, 11)] == [0, 0, 1, 1, 2, 2]
    assert trim_count(4, 0.45) == 1  # never trims everything away


def test_trimmed_mean_with_nothing_to_trim_is_the_plain_mean() -> None:
    states = _states({"a": [1.0], "b": [4.0]})
    assert trimmed_mean(states, _uniform(["a", "b"]))["x"].tolist() == [2.5]


def test_clipping_bounds_how_far_one_neighbour_can_move_a_site() -> None:
    states = _states({"me": [0.0, 0.0], "h1": [1.0, 0.0], "h2": [0.0, 1.0], "bad": [1e4, 0.0]})
    weights = {"me": 0.25, "h1": 0.25, "h2": 0.25, "bad": 0.25}
    out = clipped_gossip(states, weights, self_name="me")
    # tau = lower median of distances (1, 1, ~1e4) = 1: bad moves us by at most 0.25 * 1
    assert torch.linalg.vector_norm(out["x"]).item() < 0.25 * 3 + 1e-6
    assert out["x"][0].item() == pytest.approx(0.25 + 0.25 * 1.0, abs=1e-3)
    plain = torch.stack([w * states[n]["x"] for n, w in weights.items()]).sum(0)
    assert plain[0].item() > 2000  # what weighted averaging would have done


def test_clipping_with_honest_neighbours_inside_the_radius_is_plain_averaging() -> None:
    states = _states({"me": [0.0], "a": [1.0], "b": [-1.0]})
    weights = {"me": 0.5, "a": 0.3, "b": 0.2}
    out = clipped_gossip(states, weights, self_name="me", radius=10.0)
    assert out["x"].item() == pytest.approx(0.3 - 0.2)


def test_clipped_centre_defaults_to_the_first_state() -> None:
    states = _states({"me": [0.0], "far": [10.0]})
    out = with_params("clipped", radius=1.0)(states, {"me": 0.5, "far": 0.5})
    # the distance spans the whole state (x and y both differ by 10): ||v|| = sqrt(200)
    assert out["x"].item() == pytest.approx(0.5 * 10 / 200**0.5)


def test_rules_check_their_inputs() -> None:
    states = _states({"a": [1.0], "b": [2.0]})
    for rule in ROBUST_RULES.values():
        with pytest.raises(RobustAggregationError):
            rule(states, {"a": 1.0})
        with pytest.raises(RobustAggregationError):
            rule({}, {})
    with pytest.raises(RobustAggregationError):
        clipped_gossip(states, {"a": 0.9, "b": 0.9})
    with pytest.raises(RobustAggregationError):
        clipped_gossip(states, {"a": 0.5, "b": 0.5}, radius=float("nan"))
    with pytest.raises(RobustAggregationError):
        trimmed_mean(states, {"a": 0.5, "b": 0.5}, trim=0.5)
    mismatched = {"a": {"x": torch.zeros(2)}, "b": {"x": torch.zeros(3)}}
    with pytest.raises(RobustAggregationError):
        coordinate_median(mismatched, {"a": 0.5, "b": 0.5})


def _attacked_ring(rule_name: str, *, rounds: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight sites, each mixing with the two nearest on either side; site 0 sends 10x its
    state every round. Returns (honest starts, honest final states)."""
    n = 8
    start = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    names = [f"s{i}" for i in range(n)]
    x = start.clone()
    for _ in range(rounds):
        sent = x.clone()
        sent[0] = 10 * x[0]
        new = x.clone()
        for i in range(1, n):
            nb = [i, *((i + d) % n for d in (-2, -1, 1, 2))]
            states = {names[j]: {"v": x[j] if j == i else sent[j]} for j in nb}
            weights = {names[j]: 1 / len(nb) for j in nb}
            if rule_name == "weighted":
                new[i] = sum(weights[names[j]] * states[names[j]]["v"] for j in nb)
            else:
                new[i] = ROBUST_RULES[rule_name](states, weights)["v"]
        x = new
    return start[1:], x[1:]


def _inside_honest_range(start: torch.Tensor, final: torch.Tensor) -> bool:
    lo, hi = start.min(0).values - 1e-6, start.max(0).values + 1e-6
    return bool(((final >= lo) & (final <= hi)).all())


def test_plain_averaging_is_dragged_out_of_the_honest_range() -> None:
    start, final = _attacked_ring("weighted")
    assert not _inside_honest_range(start, final)


@pytest.mark.parametrize("rule", sorted(ROBUST_RULES))
def test_robust_rules_keep_honest_sites_inside_the_honest_range(rule: str) -> None:
    start, final = _attacked_ring(rule)
    assert _inside_honest_range(start, final)


@pytest.mark.parametrize("rule", ["trimmed-mean", "clipped"])
def test_trimmed_mean_and_clipping_still_reach_consensus(rule: str) -> None:
    # (the coordinate median can freeze before consensus on a sparse graph: a median filter
    # has non-constant fixed points; measured in BENCHMARKS.md)
    _start, final = _attacked_ring(rule)
    assert float((final - final.mean(0)).norm(dim=1).max()) < 0.2
