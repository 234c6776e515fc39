"""Graph builders for gossip topologies.

Every builder returns a connected, simple, undirected networkx graph (or raises
TopologyError), because gossip on a disconnected graph never reaches consensus and a self loop
would silently double-count a site's own state in the mixing weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx

from topology.errors import TopologyError
from topology.graph_io import load_graph

KINDS: tuple[str, ...] = (
    "ring",
    "torus",
    "complete",
    "star",
    "hypercube",
    "random-regular",
    "erdos-renyi",
    "small-world",
    "exponential",
    "one-peer-exponential",
    "file",
)
TIME_VARYING_KINDS: frozenset[str] = frozenset({"one-peer-exponential"})
DEFAULT_DEGREE = 4
DEFAULT_REWIRE_P = 0.1
_MAX_RESAMPLES = 1000


def validate_graph(graph: nx.Graph) -> None:
    """Raise TopologyError unless `graph` is usable for gossip."""
    if graph.number_of_nodes() == 0:
        raise TopologyError("graph has no nodes")
    if graph.is_directed() or graph.is_multigraph():
        raise TopologyError("graph must be simple and undirected")
    loops = list(nx.selfloop_edges(graph))
    if loops:
        raise TopologyError(f"graph has a self loop at node {loops[0][0]!r}")
    if not nx.is_connected(graph):
        parts = nx.number_connected_components(graph)
        raise TopologyError(f"graph is disconnected ({parts} components); gossip cannot converge")


def build_graph(
    kind: str,
    *,
    nodes: int | None = None,
    degree: int | None = None,
    p: float | None = None,
    seed: int = 0,
    path: Path | str | None = None,
) -> nx.Graph:
    """Build a validated topology; for time-varying kinds, the union of its schedule."""
    if kind == "file":
        if path is None:
            raise TopologyError("kind 'file' needs a path (--file)")
        graph = load_graph(Path(path))
        if nodes is not None and nodes != graph.number_of_nodes():
            raise TopologyError(
                f"--nodes {nodes} disagrees with the file's {graph.number_of_nodes()} nodes"
            )
        validate_graph(graph)
        return graph
    n = _check_nodes(kind, nodes)
    if kind in TIME_VARYING_KINDS:
        graph = nx.compose_all(graph_schedule(kind, nodes=n))
    else:
        graph = _BUILDERS[kind](n, degree, p, seed)
    validate_graph(graph)
    return graph


def graph_schedule(
    kind: str,
    *,
    nodes: int | None = None,
    degree: int | None = None,
    p: float | None = None,
    seed: int = 0,
    path: Path | str | None = None,
) -> list[nx.Graph]:
    """Per-round graphs: round r gossips on schedule[r % len(schedule)].

    Static kinds give a one-element schedule. Single rounds of a time-varying kind may be
    disconnected (one-peer exponential is a matching); only their union must be connected.
    Undirected one-peer exponential: for n a power of two, round k pairs i with i XOR 2^k;
    otherwise round k links i with i + 2^k mod n (two peers per round).
    """
    if kind != "one-peer-exponential":
        return [build_graph(kind, nodes=nodes, degree=degree, p=p, seed=seed, path=path)]
    n = _check_nodes(kind, nodes)
    power_of_two = n & (n - 1) == 0
    schedule = []
    for hop in _exponential_hops(n):
        g = nx.Graph()
        g.add_nodes_from(range(n))
        if power_of_two:
            # i talks to i XOR 2^k: a perfect matching, so each site has exactly one peer per
            # round and log2(n) rounds of pairwise averaging give the exact mean.
            g.add_edges_from((i, i ^ hop) for i in range(n) if i < i ^ hop)
        else:
            g.add_edges_from((i, (i + hop) % n) for i in range(n) if (i + hop) % n != i)
        schedule.append(g)
    return schedule


def _check_nodes(kind: str, nodes: int | None) -> int:
    if kind not in KINDS:
        raise TopologyError(f"unknown topology {kind!r}; choose one of: {', '.join(KINDS)}")
    if nodes is None:
        raise TopologyError(f"topology {kind!r} needs a node count (--nodes)")
    if nodes < 2:
        raise TopologyError(f"--nodes must be at least 2, got {nodes}")
    return nodes


def _exponential_hops(n: int) -> list[int]:
    return [2**k for k in range(max(1, math.ceil(math.log2(n))))]


def _ring(n: int, degree: int | None, p: float | None, seed: int) -> nx.Graph:
    return nx.cycle_graph(n) if n > 2 else nx.path_graph(n)


def _torus(n: int, degree: int | None, p: float | None, seed: int) -> nx.Graph:
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    cols = n // rows
    if rows < 3:
        raise TopologyError(
            f"a torus needs nodes = rows x cols with both >= 3 (e.g. 9, 12, 16); got {n}"
        )
    grid = nx.grid_2d_graph(rows, cols, periodic=True)
    return nx.convert_node_labels_to_integers(grid, ordering="sorted")


def _complete(n: int, degree: int | None, p: float | None, seed: int) -> nx.Graph:
    return nx.complete_graph(n)


def _star(n: int, degree: int | None, p: float | None, seed: int) -> nx.Graph:
    return nx.star_graph(n - 1)


def _hypercube(n: int, degree: int | None, p: float | None, seed: int) -> nx.Graph:
    dim = n.bit_length() - 1
    if 2**dim != n:
        raise TopologyError(f"a hypercube needs a power-of-two node count; got {n}")
    cube = nx.hypercube_graph(dim)
    return nx.convert_node_labels_to_integers(cube, ordering="sorted")


def _random_regular(n: int, degree: int | None, p: float | None, seed: int) -> nx.Graph:
    d = DEFAULT_DEGREE if degree is None else degree
    if d < 1 or d >= n:
        raise TopologyError(f"a {d}-regular graph on {n} nodes is impossible (need 1 <= d < n)")
    if (n * d) % 2:
        raise TopologyError(f"a {d}-regular graph on {n} nodes is impossible: n*d must be even")
    if d == 1 and n > 2:
        raise TopologyError("a 1-regular graph on more than 2 nodes is always disconnected")
    for attempt in range(_MAX_RESAMPLES):
        g = nx.random_regular_graph(d, n, seed=seed + attempt)
        if nx.is_connected(g):
            return g
    raise TopologyError(f"no connected {d}-regular graph found in {_MAX_RESAMPLES} samples")


def _erdos_renyi(n: int, degree: int | None, p: float | None, seed: int) -> nx.Graph:
    prob = min(1.0, 2.0 * math.log(n) / n) if p is None else p
    if not 0.0 < prob <= 1.0:
        raise TopologyError(f"--p must be in (0, 1], got {prob}")
    for attempt in range(_MAX_RESAMPLES):
        g = nx.gnp_random_graph(n, prob, seed=seed + attempt)
        if nx.is_connected(g):
            return g
    raise TopologyError(
        f"no connected Erdős–Rényi graph G({n}, {prob}) in {_MAX_RESAMPLES} samples; raise --p"
    )


def _small_world(n: int, degree: int | None, p: float | None, seed: int) -> nx.Graph:
    k = DEFAULT_DEGREE if degree is None else degree
    prob = DEFAULT_REWIRE_P if p is None else p
    if k < 2 or k >= n:
        raise TopologyError(f"small-world needs 2 <= degree < nodes; got degree {k}, nodes {n}")
    if not 0.0 <= prob <= 1.0:
        raise TopologyError(f"--p (rewiring probability) must be in [0, 1], got {prob}")
    try:
        return nx.connected_watts_strogatz_graph(n, k, prob, tries=_MAX_RESAMPLES, seed=seed)
    except nx.NetworkXError as exc:
        raise TopologyError(f"small-world graph: {exc}") from exc


def _exponential(n: int, degree: int | None, p: float | None, seed: int) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for hop in _exponential_hops(n):
        g.add_edges_from((i, (i + hop) % n) for i in range(n) if (i + hop) % n != i)
    return g


_BUILDERS = {
    "ring": _ring,
    "torus": _torus,
    "complete": _complete,
    "star": _star,
    "hypercube": _hypercube,
    "random-regular": _random_regular,
    "erdos-renyi": _erdos_renyi,
    "small-world": _small_world,
    "exponential": _exponential,
}
