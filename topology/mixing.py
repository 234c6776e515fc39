"""Mixing matrices W for gossip averaging x <- W x.

Both rules give symmetric, doubly stochastic, non-negative W supported on the graph's edges,
which is what makes repeated mixing converge to the exact average of the sites' states.

W is built sparse (one row per site, a few entries each): a consortium of thousands of sites
never needs an N x N array. `mixing_matrix` is the dense view, for small graphs and tests.
"""

from __future__ import annotations

from collections.abc import Hashable

import networkx as nx
import numpy as np
from scipy import sparse

from topology.errors import TopologyError
from topology.spectral import laplacian_extremes

RULES: tuple[str, ...] = ("metropolis-hastings", "best-constant")
DEFAULT_RULE = "metropolis-hastings"


def sparse_mixing_matrix(graph: nx.Graph, *, rule: str = DEFAULT_RULE) -> sparse.csr_array:
    """W (CSR) with rows/columns in `list(graph.nodes)` order."""
    if rule == "metropolis-hastings":
        return _metropolis_hastings(graph)
    if rule == "best-constant":
        return _best_constant(graph)
    raise TopologyError(f"unknown mixing rule {rule!r}; choose one of: {', '.join(RULES)}")


def mixing_matrix(graph: nx.Graph, *, rule: str = DEFAULT_RULE) -> np.ndarray:
    """W as a dense array with rows/columns in `list(graph.nodes)` order (small graphs)."""
    dense: np.ndarray = sparse_mixing_matrix(graph, rule=rule).toarray()
    return dense


def mixing_weights(
    graph: nx.Graph, *, rule: str = DEFAULT_RULE
) -> dict[Hashable, dict[Hashable, float]]:
    """Each node's row of W as {itself, then its neighbours: weight}; what one site needs."""
    nodes = list(graph.nodes)
    index = {v: i for i, v in enumerate(nodes)}
    w = sparse_mixing_matrix(graph, rule=rule)
    rows: dict[Hashable, dict[Hashable, float]] = {}
    for u, i in index.items():
        start, end = w.indptr[i], w.indptr[i + 1]
        entries = dict(zip(w.indices[start:end].tolist(), w.data[start:end].tolist(), strict=True))
        row = {u: entries.get(i, 0.0)}
        for v in graph.neighbors(u):
            row[v] = entries.get(index[v], 0.0)
        rows[u] = row
    return rows


def _edge_arrays(graph: nx.Graph) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, rows, cols) of every off-diagonal entry, both directions, self loops left out."""
    index = {v: i for i, v in enumerate(graph.nodes)}
    pairs = np.array(
        [(index[u], index[v]) for u, v in graph.edges if u != v], dtype=np.int64
    ).reshape(-1, 2)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
    return len(index), rows, cols


def _with_diagonal(n: int, rows: np.ndarray, cols: np.ndarray, off: np.ndarray) -> sparse.csr_array:
    """W from its off-diagonal entries, the diagonal making each row sum to one.

    The row sum is taken over a zero-filled length-n row, exactly as numpy sums a dense row,
    so the diagonal is bit for bit the one the dense construction gave (the simulator's
    recorded runs depend on it) while only one length-n buffer is ever held."""
    offdiag = sparse.csr_array((off, (rows, cols)), shape=(n, n))
    offdiag.sum_duplicates()
    offdiag.sort_indices()
    buffer = np.zeros(n)
    diagonal = np.empty(n)
    for i in range(n):
        start, end = offdiag.indptr[i], offdiag.indptr[i + 1]
        columns = offdiag.indices[start:end]
        buffer[columns] = offdiag.data[start:end]
        diagonal[i] = 1.0 - buffer.sum()
        buffer[columns] = 0.0
    w = offdiag + sparse.diags_array(diagonal, format="csr")
    w.sort_indices()
    return sparse.csr_array(w)


def _metropolis_hastings(graph: nx.Graph) -> sparse.csr_array:
    """w_ij = 1 / (1 + max(d_i, d_j)) on edges; local degrees suffice, so each site can
    compute its own row knowing only its neighbours' degrees."""
    n, rows, cols = _edge_arrays(graph)
    degree = np.array([d for _, d in graph.degree], dtype=np.float64)
    off = 1.0 / (1.0 + np.maximum(degree[rows], degree[cols]))
    return _with_diagonal(n, rows, cols, off)


def _best_constant(graph: nx.Graph) -> sparse.csr_array:
    """W = I - a L with the constant edge weight a = 2 / (lambda_max(L) + lambda_2(L)) of
    Xiao & Boyd, capped at 1 / max degree so that no diagonal entry goes negative."""
    n = graph.number_of_nodes()
    if n == 1:
        return sparse.csr_array(np.ones((1, 1)))
    lap = nx.laplacian_matrix(graph, nodelist=list(graph.nodes)).astype(float)
    lam_max, lam_2 = laplacian_extremes(sparse.csr_array(lap))
    max_degree = max(d for _, d in graph.degree)
    alpha = min(2.0 / (lam_max + lam_2), 1.0 / max_degree)
    w = sparse.eye_array(n, format="csr") - alpha * sparse.csr_array(lap)
    w.sort_indices()
    return sparse.csr_array(w)
