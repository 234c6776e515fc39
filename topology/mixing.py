"""Mixing matrices W for gossip averaging x <- W x.

Both rules give symmetric, doubly stochastic, non-negative W supported on the graph's edges,
which is what makes repeated mixing converge to the exact average of the sites' states.
"""

from __future__ import annotations

from collections.abc import Hashable

import networkx as nx
import numpy as np

from topology.errors import TopologyError

RULES: tuple[str, ...] = ("metropolis-hastings", "best-constant")
DEFAULT_RULE = "metropolis-hastings"


def mixing_matrix(graph: nx.Graph, *, rule: str = DEFAULT_RULE) -> np.ndarray:
    """W with rows/columns in `list(graph.nodes)` order."""
    if rule == "metropolis-hastings":
        return _metropolis_hastings(graph)
    if rule == "best-constant":
        return _best_constant(graph)
    raise TopologyError(f"unknown mixing rule {rule!r}; choose one of: {', '.join(RULES)}")


def mixing_weights(
    graph: nx.Graph, *, rule: str = DEFAULT_RULE
) -> dict[Hashable, dict[Hashable, float]]:
    """Each node's row of W as {neighbour or itself: weight}; what one site needs to mix."""
    index = {v: i for i, v in enumerate(graph.nodes)}
    w = mixing_matrix(graph, rule=rule)
    rows: dict[Hashable, dict[Hashable, float]] = {}
    for u, i in index.items():
        row = {u: float(w[i, i])}
        for v in graph.neighbors(u):
            row[v] = float(w[i, index[v]])
        rows[u] = row
    return rows


def _metropolis_hastings(graph: nx.Graph) -> np.ndarray:
    """w_ij = 1 / (1 + max(d_i, d_j)) on edges; local degrees suffice, so each site can
    compute its own row knowing only its neighbours' degrees."""
    nodes = list(graph.nodes)
    index = {v: i for i, v in enumerate(nodes)}
    w = np.zeros((len(nodes), len(nodes)))
    for u, v in graph.edges:
        if u == v:
            continue
        weight = 1.0 / (1.0 + max(graph.degree[u], graph.degree[v]))
        w[index[u], index[v]] = weight
        w[index[v], index[u]] = weight
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def _best_constant(graph: nx.Graph) -> np.ndarray:
    """W = I - a L with the constant edge weight a = 2 / (lambda_max(L) + lambda_2(L)) of
    Xiao & Boyd, capped at 1 / max degree so that no diagonal entry goes negative."""
    n = graph.number_of_nodes()
    if n == 1:
        return np.ones((1, 1))
    lap = nx.laplacian_matrix(graph, nodelist=list(graph.nodes)).toarray().astype(float)
    eig = np.linalg.eigvalsh(lap)
    max_degree = max(d for _, d in graph.degree)
    alpha = min(2.0 / (eig[-1] + eig[1]), 1.0 / max_degree)
    w: np.ndarray = np.eye(n) - alpha * lap
    return w
