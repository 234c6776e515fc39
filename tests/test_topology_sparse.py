"""The sparse and iterative paths that let a topology of thousands of sites be set up without
an N x N array: they must give what the dense path gives wherever both can run."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from scipy import sparse

from topology.errors import TopologyError
from topology.graphs import build_graph, graph_schedule
from topology.mixing import RULES, mixing_matrix, mixing_weights, sparse_mixing_matrix
from topology.spectral import lambda2, laplacian_extremes, periodic_lambda2
from topology.summary import diameter

GRAPHS = [
    ("ring", 30, {}),
    ("torus", 36, {}),
    ("star", 25, {}),
    ("exponential", 40, {}),
    ("random-regular", 60, {"degree": 4, "seed": 3}),
    ("random-regular", 50, {"degree": 3, "seed": 1}),
    ("small-world", 45, {"seed": 2}),
    ("erdos-renyi", 40, {"seed": 7}),
]


def _dense_metropolis_hastings(graph: nx.Graph) -> np.ndarray:
    """The dense construction the simulator's recorded runs were made with."""
    nodes = list(graph.nodes)
    index = {v: i for i, v in enumerate(nodes)}
    w = np.zeros((len(nodes), len(nodes)))
    for u, v in graph.edges:
        weight = 1.0 / (1.0 + max(graph.degree[u], graph.degree[v]))
        w[index[u], index[v]] = weight
        w[index[v], index[u]] = weight
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


@pytest.mark.parametrize(("kind", "n", "kwargs"), GRAPHS)
def test_sparse_metropolis_hastings_is_the_dense_matrix_bit_for_bit(
    kind: str, n: int, kwargs: dict[str, int]
) -> None:
    graph = build_graph(kind, nodes=n, **kwargs)  # type: ignore[arg-type]
    w = sparse_mixing_matrix(graph)
    assert sparse.issparse(w)
    assert np.array_equal(w.toarray(), _dense_metropolis_hastings(graph))


@pytest.mark.parametrize(("kind", "n", "kwargs"), GRAPHS)
def test_iterative_lambda2_matches_the_dense_eigenvalues(
    kind: str, n: int, kwargs: dict[str, int]
) -> None:
    graph = build_graph(kind, nodes=n, **kwargs)  # type: ignore[arg-type]
    for rule in RULES:
        w = sparse_mixing_matrix(graph, rule=rule)
        dense = lambda2(w.toarray())
        assert lambda2(w, dense_limit=0) == pytest.approx(dense, abs=1e-9)


@pytest.mark.parametrize(("kind", "n", "kwargs"), GRAPHS)
def test_iterative_laplacian_extremes_match_the_dense_ones(
    kind: str, n: int, kwargs: dict[str, int]
) -> None:
    graph = build_graph(kind, nodes=n, **kwargs)  # type: ignore[arg-type]
    lap = sparse.csr_array(nx.laplacian_matrix(graph).astype(float))
    largest, second = laplacian_extremes(lap)
    it_largest, it_second = laplacian_extremes(lap, dense_limit=0)
    assert it_largest == pytest.approx(largest, abs=1e-9)
    assert it_second == pytest.approx(second, abs=1e-9)


@pytest.mark.parametrize("n", [12, 16, 20, 32])
def test_iterative_periodic_rate_matches_the_dense_product(n: int) -> None:
    ws = [sparse_mixing_matrix(g) for g in graph_schedule("one-peer-exponential", nodes=n)]
    dense = periodic_lambda2([w.toarray() for w in ws])
    assert periodic_lambda2(ws, dense_limit=0) == pytest.approx(dense, abs=1e-9)


def test_exact_averaging_is_a_rate_of_zero_on_the_iterative_path_too() -> None:
    ws = [sparse_mixing_matrix(g) for g in graph_schedule("one-peer-exponential", nodes=64)]
    assert periodic_lambda2(ws, dense_limit=0) == 0.0
    assert lambda2(sparse_mixing_matrix(build_graph("complete", nodes=20)), dense_limit=0) == (
        pytest.approx(0.0, abs=1e-12)
    )


@pytest.mark.parametrize(("kind", "n", "kwargs"), GRAPHS)
def test_each_sites_row_is_its_row_of_the_sparse_matrix(
    kind: str, n: int, kwargs: dict[str, int]
) -> None:
    graph = build_graph(kind, nodes=n, **kwargs)  # type: ignore[arg-type]
    for rule in RULES:
        dense = mixing_matrix(graph, rule=rule)
        nodes = list(graph.nodes)
        for u, row in mixing_weights(graph, rule=rule).items():
            i = nodes.index(u)
            assert list(row) == [u, *graph.neighbors(u)]  # own weight first, then neighbours
            assert row == {v: dense[i, nodes.index(v)] for v in row}


@pytest.mark.parametrize(("kind", "n", "kwargs"), GRAPHS)
def test_batched_diameter_is_networkx_diameter(kind: str, n: int, kwargs: dict[str, int]) -> None:
    graph = build_graph(kind, nodes=n, **kwargs)  # type: ignore[arg-type]
    assert diameter(graph, batch=7) == nx.diameter(graph)


def test_diameter_of_a_disconnected_graph_is_refused() -> None:
    graph = nx.Graph([(0, 1), (2, 3)])
    with pytest.raises(TopologyError, match="disconnected"):
        diameter(graph)


def test_a_large_topology_is_summarised_without_any_dense_matrix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above the dense limit no N x N array is made: toarray and the dense eigensolvers
    are forbidden here, and the summary still comes out (and agrees with the dense
    lambda2 computed beforehand)."""
    from topology.summary import summarize

    graph = build_graph("random-regular", nodes=600, degree=4, seed=1)
    dense_lambda2 = lambda2(mixing_matrix(graph), dense_limit=10_000)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dense N x N computation ran")

    monkeypatch.setattr(np.linalg, "eigvalsh", forbidden)
    monkeypatch.setattr(sparse.csr_array, "toarray", forbidden)
    summary = summarize("random-regular", [graph])
    assert summary.lambda2 == pytest.approx(dense_lambda2, abs=1e-9)
    assert summary.diameter == nx.diameter(graph)
