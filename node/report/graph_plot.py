"""PNG drawing of a topology, so a consortium can eyeball the graph it is about to deploy."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

_CIRCULAR_KINDS = frozenset({"ring", "exponential", "one-peer-exponential", "complete"})


def plot_graph(graph: nx.Graph, out: Path, *, title: str, kind: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = graph.number_of_nodes()
    # Circulant graphs read best on a circle; everything else gets a seeded force layout.
    if kind in _CIRCULAR_KINDS:
        pos = nx.circular_layout(graph)
    else:
        pos = nx.spring_layout(graph, seed=0, iterations=200)
    fig, ax = plt.subplots(figsize=(7, 7), dpi=110)
    nx.draw_networkx_edges(graph, pos, ax=ax, alpha=0.5, width=1.2)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=max(60, 600 - 4 * n), node_color="#4c72b0")
    if n <= 40:
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=8, font_color="white")
    ax.set_title(title)
    ax.set_axis_off()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
