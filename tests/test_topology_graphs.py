"""Graph builders: the shapes they promise and the inputs they refuse."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest

from topology.errors import TopologyError
from topology.graphs import KINDS, build_graph, graph_schedule

STATIC_CASES = [
    ("ring", 16, {}),
    ("torus", 16, {}),
    ("complete", 8, {}),
    ("star", 9, {}),
    ("hypercube", 16, {}),
    ("random-regular", 16, {"degree": 4, "seed": 1}),
    ("erdos-renyi", 20, {"seed": 2}),
    ("small-world", 20, {"degree": 4, "p": 0.2, "seed": 3}),
    ("exponential", 12, {}),
    ("one-peer-exponential", 16, {}),
    ("one-peer-exponential", 12, {}),
]


@pytest.mark.parametrize(("kind", "n", "kwargs"), STATIC_CASES)
def test_every_builder_gives_a_connected_simple_graph_of_the_asked_size(
    kind: str, n: int, kwargs: dict[str, object]
) -> None:
    g = build_graph(kind, nodes=n, **kwargs)  # type: ignore[arg-type]
    assert g.number_of_nodes() == n
    assert nx.is_connected(g)
    assert nx.number_of_selfloops(g) == 0


def test_every_kind_is_covered_by_the_cases() -> None:
    assert {k for k, _, _ in STATIC_CASES} | {"file"} == set(KINDS)


def test_ring_torus_hypercube_complete_have_their_textbook_degrees() -> None:
    assert {d for _, d in build_graph("ring", nodes=16).degree} == {2}
    assert {d for _, d in build_graph("torus", nodes=16).degree} == {4}
    assert {d for _, d in build_graph("hypercube", nodes=16).degree} == {4}
    assert {d for _, d in build_graph("complete", nodes=6).degree} == {5}
    star = build_graph("star", nodes=6)
    assert sorted(d for _, d in star.degree) == [1, 1, 1, 1, 1, 5]


def test_random_graphs_are_reproducible_for_a_seed_and_differ_across_seeds() -> None:
    a = build_graph("random-regular", nodes=16, degree=4, seed=7)
    b = build_graph("random-regular", nodes=16, degree=4, seed=7)
    c = build_graph("random-regular", nodes=16, degree=4, seed=8)
    assert sorted(a.edges) == sorted(b.edges)
    assert sorted(a.edges) != sorted(c.edges)


def test_one_peer_exponential_gives_each_site_one_peer_per_round_for_powers_of_two() -> None:
    schedule = graph_schedule("one-peer-exponential", nodes=16)
    assert len(schedule) == 4
    for g in schedule:
        assert {d for _, d in g.degree} == {1}
    assert nx.is_connected(nx.compose_all(schedule))


def test_static_kinds_have_a_one_graph_schedule() -> None:
    assert len(graph_schedule("ring", nodes=5)) == 1


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("ring", {"nodes": 0}, "at least 2"),
        ("random-regular", {"nodes": 7, "degree": 3}, "n\\*d must be even"),
        ("random-regular", {"nodes": 5, "degree": 5}, "impossible"),
        ("hypercube", {"nodes": 12}, "power-of-two"),
        ("torus", {"nodes": 10}, "rows x cols"),
        ("erdos-renyi", {"nodes": 10, "p": 0.0}, "--p"),
        ("nonsense", {"nodes": 4}, "unknown topology"),
        ("file", {}, "needs a path"),
    ],
)
def test_impossible_requests_raise_topology_error(
    kind: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(TopologyError, match=message):
        build_graph(kind, **kwargs)  # type: ignore[arg-type]


def test_graph_files_keep_string_site_names(tmp_path: Path) -> None:
    edges = tmp_path / "links.txt"
    edges.write_text("# consortium links\nzurich basel\nbasel geneva\ngeneva zurich\n")
    g = build_graph("file", path=edges)
    assert set(g.nodes) == {"zurich", "basel", "geneva"}
    as_json = tmp_path / "g.json"
    as_json.write_text(json.dumps({"nodes": ["a", "b", "c"], "edges": [["a", "b"], ["b", "c"]]}))
    assert sorted(build_graph("file", path=as_json).edges) == [("a", "b"), ("b", "c")]
    graphml = tmp_path / "g.graphml"
    nx.write_graphml(nx.path_graph(["x", "y", "z"]), graphml)
    assert set(build_graph("file", path=graphml).nodes) == {"x", "y", "z"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a b\nb b\n", "self loop"),
        ("a b\nc d\n", "disconnected"),
        ("a b c\n", "expected 'a b'"),
        ("", "no nodes"),
    ],
)
def test_bad_graph_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "bad.txt"
    f.write_text(content)
    with pytest.raises(TopologyError, match=message):
        build_graph("file", path=f)


def test_missing_and_malformed_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="not found"):
        build_graph("file", path=tmp_path / "missing.txt")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(TopologyError, match="cannot read"):
        build_graph("file", path=broken)
    broken_xml = tmp_path / "broken.graphml"
    broken_xml.write_text("<graphml><unclosed>")
    with pytest.raises(TopologyError):
        build_graph("file", path=broken_xml)
