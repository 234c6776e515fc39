"""One description of a topology that the CLI, the simulator and inspect all report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import networkx as nx
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from topology.errors import TopologyError
from topology.mixing import DEFAULT_RULE, sparse_mixing_matrix
from topology.spectral import (
    DEFAULT_TOLERANCE,
    gossip_steps_for,
    lambda2,
    periodic_lambda2,
    predicted_rounds,
)


@dataclass(frozen=True)
class TopologySummary:
    kind: str
    nodes: int
    edges: int
    min_degree: int
    max_degree: int
    diameter: int
    mixing: str
    lambda2: float
    spectral_gap: float
    predicted_rounds: float  # single exchanges; a round of k exchanges does k of them
    tolerance: float
    time_varying: bool
    auto_gossip_steps: int  # exchanges per round that `gossip_steps = 0` (auto) picks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    kind: str,
    schedule: list[nx.Graph],
    *,
    rule: str = DEFAULT_RULE,
    tol: float = DEFAULT_TOLERANCE,
) -> TopologySummary:
    """Summarise a schedule (one graph for static kinds); degrees/diameter are of the union,
    lambda2 is the effective per-round rate. Sparse throughout: thousands of sites hold no
    N x N array."""
    union = nx.compose_all(schedule)
    if len(schedule) == 1:
        lam2 = lambda2(sparse_mixing_matrix(union, rule=rule))
    else:
        order = list(union.nodes)
        ws = [sparse_mixing_matrix(_reordered(g, order), rule=rule) for g in schedule]
        lam2 = periodic_lambda2(ws)
    rounds = predicted_rounds(lam2, tol)
    if len(schedule) > 1 and lam2 == 0.0:
        rounds = len(schedule)  # exact consensus, but only after one full period
    degrees = [d for _, d in union.degree]
    return TopologySummary(
        kind=kind,
        nodes=union.number_of_nodes(),
        edges=union.number_of_edges(),
        min_degree=min(degrees),
        max_degree=max(degrees),
        diameter=diameter(union),
        mixing=rule,
        lambda2=lam2,
        spectral_gap=1.0 - lam2,
        predicted_rounds=rounds,
        tolerance=tol,
        time_varying=len(schedule) > 1,
        auto_gossip_steps=gossip_steps_for(lam2),
    )


def _reordered(graph: nx.Graph, order: list[object]) -> nx.Graph:
    """Same graph with nodes inserted in `order`, so every W of a schedule lines up."""
    g = nx.Graph()
    g.add_nodes_from(order)
    g.add_edges_from(graph.edges)
    return g


DIAMETER_BATCH = 256
"""Breadth-first searches run at once by `diameter`: a batch x N block of distances."""


def diameter(graph: nx.Graph, *, batch: int = DIAMETER_BATCH) -> int:
    """Longest shortest path of a connected graph: one breadth-first search per node, run in
    compiled code a batch at a time, so memory stays at batch x N instead of N x N."""
    n = graph.number_of_nodes()
    adjacency = sparse.csr_array(nx.to_scipy_sparse_array(graph, nodelist=list(graph.nodes)))
    longest = 0.0
    for start in range(0, n, batch):
        sources = np.arange(start, min(start + batch, n))
        distances = csgraph.shortest_path(
            adjacency, method="D", directed=False, unweighted=True, indices=sources
        )
        longest = max(longest, float(distances.max()))
    if not np.isfinite(longest):
        raise TopologyError("graph is disconnected: its diameter is infinite")
    return int(longest)
