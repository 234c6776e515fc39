"""Who mixes with whom, and with which weights, round by round, by site name.

A static topology has one row set; a time-varying one (e.g. one-peer exponential) cycles
through several. Graph nodes that are ints become site-00, site-01, ...; string nodes (a
consortium's site names) stay as they are.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import networkx as nx

from topology.mixing import DEFAULT_RULE, mixing_weights


def site_names(nodes: Sequence[Hashable]) -> dict[Hashable, str]:
    """Roster names for graph nodes: ints become site-00, site-01...; strings stay as they are."""
    width = max(2, len(str(max(len(nodes) - 1, 0))))
    return {v: (f"site-{v:0{width}d}" if isinstance(v, int) else str(v)) for v in nodes}


@dataclass(frozen=True)
class MixingSchedule:
    """Per-round mixing rows by site name; round r uses rows[r % len(rows)]."""

    rows: tuple[Mapping[str, Mapping[str, float]], ...]

    @classmethod
    def from_graphs(cls, graphs: Sequence[nx.Graph], *, rule: str = DEFAULT_RULE) -> MixingSchedule:
        names = site_names(list(graphs[0].nodes))
        rows = []
        for g in graphs:
            w = mixing_weights(g, rule=rule)
            rows.append({names[u]: {names[v]: x for v, x in row.items()} for u, row in w.items()})
        return cls(rows=tuple(rows))

    @property
    def sites(self) -> list[str]:
        return list(self._site_order)

    @cached_property
    def _site_order(self) -> tuple[str, ...]:
        return tuple(self.rows[0])

    def has_site(self, site: str) -> bool:
        """Membership in O(1): a site checks itself at start, with thousands of others."""
        return site in self.rows[0]

    def row(self, round: int, site: str) -> Mapping[str, float]:
        return self.rows[round % len(self.rows)][site]

    def neighbours(self, round: int, site: str) -> frozenset[str]:
        return frozenset(self.row(round, site)) - {site}

    def edges(self) -> list[tuple[str, str]]:
        """Every edge used in any round, each once, sorted."""
        pairs = {
            tuple(sorted((u, v)))
            for rows in self.rows
            for u, row in rows.items()
            for v in row
            if u != v
        }
        return sorted((a, b) for a, b in pairs)
