"""One description of a topology that the CLI, the simulator and inspect all report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import networkx as nx

from topology.mixing import DEFAULT_RULE, mixing_matrix
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
    lambda2 is the effective per-round rate."""
    union = nx.compose_all(schedule)
    if len(schedule) == 1:
        lam2 = lambda2(mixing_matrix(union, rule=rule))
    else:
        order = list(union.nodes)
        ws = [mixing_matrix(_reordered(g, order), rule=rule) for g in schedule]
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
        diameter=nx.diameter(union),
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
