"""Read and write graphs with string node names (site names), so a consortium can describe
its real links in a file: edge list (`a b` per line), JSON (`{"nodes": [...], "edges":
[[a, b], ...]}`, the format `--save` writes) or GraphML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx

from topology.errors import TopologyError

MAX_GRAPH_FILE_BYTES = 16 * 1024 * 1024


def load_graph(path: Path) -> nx.Graph:
    """Load a graph; structure is validated by the caller (graphs.validate_graph)."""
    if not path.is_file():
        raise TopologyError(f"graph file not found: {path}")
    if path.stat().st_size > MAX_GRAPH_FILE_BYTES:
        raise TopologyError(f"graph file {path} is larger than {MAX_GRAPH_FILE_BYTES} bytes")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return _from_json(json.loads(path.read_text(encoding="utf-8")), path)
        if suffix == ".graphml":
            g = nx.read_graphml(path)
            if g.is_directed() or g.is_multigraph():
                g = nx.Graph(g.to_undirected())
            return nx.relabel_nodes(g, {v: str(v) for v in g.nodes})
        return _from_edge_list(path.read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, nx.NetworkXError) as exc:
        raise TopologyError(f"cannot read graph file {path}: {exc}") from exc
    except Exception as exc:  # GraphML parser raises assorted XML errors
        if isinstance(exc, TopologyError):
            raise
        raise TopologyError(f"cannot parse graph file {path}: {exc}") from exc


def graph_to_json(graph: nx.Graph) -> dict[str, Any]:
    return {
        "nodes": [str(v) for v in graph.nodes],
        "edges": [[str(a), str(b)] for a, b in graph.edges],
    }


def save_graph(graph: nx.Graph, path: Path) -> None:
    path.write_text(json.dumps(graph_to_json(graph), indent=2) + "\n", encoding="utf-8")


def _from_json(doc: Any, path: Path) -> nx.Graph:
    if not isinstance(doc, dict) or not isinstance(doc.get("edges"), list):
        raise TopologyError(f"{path}: JSON graph must be an object with an 'edges' list")
    g = nx.Graph()
    nodes = doc.get("nodes", [])
    if not isinstance(nodes, list):
        raise TopologyError(f"{path}: 'nodes' must be a list")
    g.add_nodes_from(str(v) for v in nodes)
    for i, edge in enumerate(doc["edges"]):
        if not isinstance(edge, list | tuple) or len(edge) != 2:
            raise TopologyError(f"{path}: edge #{i} must be a pair of node names")
        g.add_edge(str(edge[0]), str(edge[1]))
    return g


def _from_edge_list(text: str, path: Path) -> nx.Graph:
    g = nx.Graph()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) == 1:
            g.add_node(parts[0])
        elif len(parts) == 2:
            g.add_edge(parts[0], parts[1])
        else:
            raise TopologyError(f"{path}:{lineno}: expected 'a b' (one edge per line)")
    return g
