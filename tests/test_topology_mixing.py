"""Mixing matrices and spectral predictions: the properties gossip convergence rests on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topology.graphs import build_graph, graph_schedule
from topology.mixing import RULES, mixing_matrix, mixing_weights
from topology.spectral import lambda2, predicted_rounds
from topology.summary import summarize

BUILDERS = st.sampled_from(
    [
        ("ring", {}),
        ("complete", {}),
        ("star", {}),
        ("exponential", {}),
        ("erdos-renyi", {}),
        ("small-world", {"degree": 2}),
        ("random-regular", {"degree": 2}),
    ]
)


def _assert_valid_mixing(w: np.ndarray) -> None:
    assert np.allclose(w, w.T, atol=1e-12), "W must be symmetric"
    assert np.allclose(w.sum(axis=0), 1.0) and np.allclose(w.sum(axis=1), 1.0)
    assert (w >= -1e-12).all(), "W must be non-negative"


@settings(max_examples=60, deadline=None, derandomize=True)
@given(builder=BUILDERS, n=st.integers(min_value=3, max_value=24), seed=st.integers(0, 1000))
def test_every_builder_and_rule_gives_symmetric_doubly_stochastic_nonnegative_w(
    builder: tuple[str, dict[str, int]], n: int, seed: int
) -> None:
    kind, kwargs = builder
    if kind == "random-regular" and n < 3:
        return
    graph = build_graph(kind, nodes=n, seed=seed, **kwargs)  # type: ignore[arg-type]
    for rule in RULES:
        _assert_valid_mixing(mixing_matrix(graph, rule=rule))


@pytest.mark.parametrize(
    ("kind", "n", "kwargs"),
    [("torus", 16, {}), ("hypercube", 8, {}), ("random-regular", 16, {"degree": 4})],
)
def test_structured_builders_give_valid_w_too(kind: str, n: int, kwargs: dict[str, int]) -> None:
    graph = build_graph(kind, nodes=n, **kwargs)  # type: ignore[arg-type]
    for rule in RULES:
        _assert_valid_mixing(mixing_matrix(graph, rule=rule))


def test_each_schedule_round_of_one_peer_exponential_is_a_valid_w() -> None:
    for g in graph_schedule("one-peer-exponential", nodes=12):
        _assert_valid_mixing(mixing_matrix(g))


def test_a_sites_row_matches_the_matrix_and_sums_to_one() -> None:
    g = build_graph("random-regular", nodes=10, degree=3, seed=4)
    w = mixing_matrix(g)
    rows = mixing_weights(g)
    for i, u in enumerate(g.nodes):
        assert math.isclose(sum(rows[u].values()), 1.0)
        for v, weight in rows[u].items():
            assert math.isclose(weight, w[i, list(g.nodes).index(v)])


def test_known_spectra_of_ring_torus_and_complete() -> None:
    ring = lambda2(mixing_matrix(build_graph("ring", nodes=16)))
    assert ring == pytest.approx(1 / 3 + 2 / 3 * math.cos(2 * math.pi / 16))
    assert predicted_rounds(ring) == 133
    assert lambda2(mixing_matrix(build_graph("torus", nodes=16))) == pytest.approx(0.6)
    complete = lambda2(mixing_matrix(build_graph("complete", nodes=8)))
    assert complete == pytest.approx(0.0, abs=1e-12)
    assert predicted_rounds(complete) == 1


def test_one_peer_exponential_reaches_exact_average_after_one_period() -> None:
    summary = summarize("one-peer-exponential", graph_schedule("one-peer-exponential", nodes=16))
    assert summary.lambda2 == 0.0
    assert summary.predicted_rounds == 4
    x = np.random.default_rng(0).normal(size=(16, 3))
    for g in graph_schedule("one-peer-exponential", nodes=16):
        x = mixing_matrix(g) @ x
    assert np.allclose(x, x.mean(axis=0))


@pytest.mark.parametrize(
    ("kind", "n", "kwargs"),
    [("ring", 16, {}), ("torus", 16, {}), ("random-regular", 16, {"degree": 4, "seed": 5})],
)
def test_pure_averaging_contracts_consensus_distance_at_rate_lambda2(
    kind: str, n: int, kwargs: dict[str, int]
) -> None:
    """Over 30 rounds of x <- W x the per-round contraction is within 10% of lambda2."""
    graph = build_graph(kind, nodes=n, **kwargs)  # type: ignore[arg-type]
    w = mixing_matrix(graph)
    x = np.random.default_rng(42).normal(size=(n, 32))
    start = np.linalg.norm(x - x.mean(axis=0))
    rounds = 30
    for _ in range(rounds):
        x = w @ x
    end = np.linalg.norm(x - x.mean(axis=0))
    measured = (end / start) ** (1 / rounds)
    assert measured == pytest.approx(lambda2(w), rel=0.10)
