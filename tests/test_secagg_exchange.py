"""Secure exchanges over whole graphs: the receiver recovers exactly (within the fixed-point
bound) the plain weighted mix of the neighbours that completed, with dropouts at any phase,
and nothing at all below the threshold."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from gossipmed.errors import ConfigError
from gossipmed.mixing.secagg import (
    AggregateResult,
    BelowThreshold,
    FixedPoint,
    InstanceConfig,
    InstanceId,
    Phase,
    check_threshold,
    run_graph_exchange,
    threshold_for,
)
from topology.graphs import build_graph
from topology.mixing import mixing_matrix, mixing_weights

ROSTER = b"\x42" * 32
FP = FixedPoint()


def _name(v: object) -> str:
    return f"site-{v}"


def _setup(graph: nx.Graph) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
    neighbours = {_name(v): [_name(u) for u in graph.neighbors(v)] for v in graph.nodes}
    weights = {
        _name(v): {_name(u): w for u, w in row.items()} for v, row in mixing_weights(graph).items()
    }
    return neighbours, weights


def _values(sites: list[str], seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        s: {"lora_A": torch.randn(4, 8, generator=gen), "lora_B": torch.randn(8, 2, generator=gen)}
        for s in sites
    }


def _plain_sum(
    receiver: str,
    contributors: tuple[str, ...],
    weights: dict[str, dict[str, float]],
    values: dict[str, dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    return {
        name: sum(
            (weights[receiver][j] * values[j][name].double().clamp(-FP.range, FP.range))
            for j in contributors
        )
        for name in values[contributors[0]]
    }  # type: ignore[misc]


def _assert_close(result: AggregateResult, expected: dict[str, torch.Tensor]) -> None:
    got = result.tensors(torch.float64)
    bound = FP.error_bound(len(result.contributors))
    for name, exp in expected.items():
        assert (got[name] - exp).abs().max().item() <= bound, name


GRAPHS = {
    # a ring where each site also links to its second neighbours (degree 4): the plain ring
    # (degree 2) cannot reach t >= 3, see the next test
    "ring-lattice-8": lambda: build_graph("small-world", nodes=8, degree=4, p=0.0),
    "torus-9": lambda: build_graph("torus", nodes=9),
    "torus-12": lambda: build_graph("torus", nodes=12),
    "random-regular-8-deg4": lambda: build_graph("random-regular", nodes=8, degree=4, seed=1),
    "random-regular-10-deg5": lambda: build_graph("random-regular", nodes=10, degree=5, seed=2),
}


def test_the_plain_ring_cannot_reach_the_threshold_and_is_refused_naming_every_site() -> None:
    graph = build_graph("ring", nodes=6)
    neighbours, weights = _setup(graph)
    assert check_threshold(neighbours) == sorted(neighbours)
    with pytest.raises(ConfigError, match="site-0"):
        run_graph_exchange(
            neighbours=neighbours,
            weights=weights,
            values=_values(sorted(neighbours)),
            roster_hash=ROSTER,
            round=0,
        )


@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_recovered_sum_is_the_plain_weighted_mix_within_the_fixed_point_bound(kind: str) -> None:
    graph = GRAPHS[kind]()
    neighbours, weights = _setup(graph)
    sites = sorted(neighbours)
    values = _values(sites, seed=len(sites))
    results = run_graph_exchange(
        neighbours=neighbours, weights=weights, values=values, roster_hash=ROSTER, round=3
    )
    w = mixing_matrix(graph)
    index = {_name(v): i for i, v in enumerate(graph.nodes)}
    for receiver, result in results.items():
        assert isinstance(result, AggregateResult), result
        assert result.contributors == tuple(sorted(neighbours[receiver]))
        assert result.reconstructed == ()
        _assert_close(result, _plain_sum(receiver, result.contributors, weights, values))
        # The gossip step: own weighted state plus the secure sum is row i of W X.
        got = result.tensors(torch.float64)
        for name in values[receiver]:
            mixed = weights[receiver][receiver] * values[receiver][name].double() + got[name]
            plain = sum(w[index[receiver], index[s]] * values[s][name].double() for s in sites)
            bound = FP.error_bound(len(result.contributors)) + 1e-12
            assert (mixed - plain).abs().max().item() <= bound


def test_a_contributor_dropping_after_its_shares_is_unmasked_from_the_survivors() -> None:
    graph = build_graph("random-regular", nodes=8, degree=4, seed=1)
    neighbours, weights = _setup(graph)
    values = _values(sorted(neighbours), seed=7)
    receiver = "site-0"
    dropped = sorted(neighbours[receiver])[1]
    results = run_graph_exchange(
        neighbours=neighbours,
        weights=weights,
        values=values,
        roster_hash=ROSTER,
        round=4,
        drops={(receiver, dropped): Phase.MASK},
    )
    result = results[receiver]
    assert isinstance(result, AggregateResult)
    survivors = tuple(sorted(set(neighbours[receiver]) - {dropped}))
    assert result.contributors == survivors
    assert result.reconstructed == (dropped,)
    assert result.weight_sum == pytest.approx(sum(weights[receiver][j] for j in survivors))
    _assert_close(result, _plain_sum(receiver, survivors, weights, values))
    # Every other receiver was unaffected.
    for other, res in results.items():
        if other != receiver:
            assert isinstance(res, AggregateResult) and res.reconstructed == ()


def test_a_site_that_crashes_after_sharing_everywhere_leaves_every_neighbour_a_sum() -> None:
    graph = build_graph("torus", nodes=9)
    neighbours, weights = _setup(graph)
    values = _values(sorted(neighbours), seed=8)
    crashed = "site-4"
    drops = {(i, crashed): Phase.MASK for i in neighbours[crashed]}
    results = run_graph_exchange(
        neighbours=neighbours,
        weights=weights,
        values=values,
        roster_hash=ROSTER,
        round=5,
        drops=drops,
    )
    for receiver in neighbours[crashed]:
        result = results[receiver]
        assert isinstance(result, AggregateResult)
        assert result.reconstructed == (crashed,)
        _assert_close(result, _plain_sum(receiver, result.contributors, weights, values))


@pytest.mark.parametrize(
    ("phase", "included", "reconstructed"),
    [
        (Phase.ADVERTISE, False, False),
        (Phase.SHARE, False, False),
        (Phase.MASK, False, True),
        (Phase.CONSISTENCY, True, False),  # its masked input is in: the sum includes it
        (Phase.UNMASK, True, False),
    ],
)
def test_one_dropout_at_each_phase(phase: Phase, included: bool, reconstructed: bool) -> None:
    graph = build_graph("random-regular", nodes=8, degree=4, seed=3)
    neighbours, weights = _setup(graph)
    values = _values(sorted(neighbours), seed=9)
    receiver = "site-5"
    quitter = sorted(neighbours[receiver])[0]
    results = run_graph_exchange(
        neighbours=neighbours,
        weights=weights,
        values=values,
        roster_hash=ROSTER,
        round=6,
        drops={(receiver, quitter): phase},
    )
    result = results[receiver]
    assert isinstance(result, AggregateResult)
    assert (quitter in result.contributors) == included
    assert result.reconstructed == ((quitter,) if reconstructed else ())
    _assert_close(result, _plain_sum(receiver, result.contributors, weights, values))


@pytest.mark.parametrize("phase", [p for p in Phase if p < Phase.DONE])
def test_below_threshold_in_any_phase_skips_the_exchange_without_a_sum(phase: Phase) -> None:
    graph = build_graph("random-regular", nodes=8, degree=4, seed=3)
    neighbours, weights = _setup(graph)
    receiver = "site-2"
    assert threshold_for(4) == 3
    quitters = sorted(neighbours[receiver])[:2]  # 4 - 2 < 3
    results = run_graph_exchange(
        neighbours=neighbours,
        weights=weights,
        values=_values(sorted(neighbours)),
        roster_hash=ROSTER,
        round=7,
        drops={(receiver, q): phase for q in quitters},
    )
    assert isinstance(results[receiver], BelowThreshold)
    assert sum(isinstance(r, AggregateResult) for r in results.values()) == len(results) - 1


def test_threshold_is_more_than_a_strict_majority_and_at_least_three() -> None:
    assert [threshold_for(n) for n in range(1, 11)] == [3, 3, 3, 3, 4, 4, 5, 5, 6, 6]
    assert all(2 * threshold_for(n) >= n + 2 for n in range(1, 200))
    assert threshold_for(4, minimum=4) == 4
    with pytest.raises(ConfigError):
        threshold_for(4, minimum=2)


def test_check_threshold_names_exactly_the_sites_with_too_few_neighbours() -> None:
    star = build_graph("star", nodes=6)  # hub of degree 5, leaves of degree 1
    neighbours, _ = _setup(star)
    assert check_threshold(neighbours) == [f"site-{i}" for i in range(1, 6)]
    mixed = {"a": ["b", "c", "d"], "b": ["a", "c", "d"], "c": ["a", "b"], "d": ["a", "b"]}
    assert check_threshold(mixed) == ["c", "d"]
    assert check_threshold(mixed, minimum=4) == ["a", "b", "c", "d"]
    with pytest.raises(ConfigError):
        check_threshold({"a": ["a", "b", "c"]})
    with pytest.raises(ConfigError):
        check_threshold(mixed, minimum=2)


def _config(**overrides: object) -> InstanceConfig:
    names = ["b", "c", "d", "e"]
    base: dict[str, object] = {
        "instance": InstanceId(ROSTER, "a", 0, 0),
        "weights": {n: 0.2 for n in names},
        "sign_keys": {n: bytes(32) for n in names},
        "schema": {"x": (3,)},
        "threshold": 3,
    }
    base.update(overrides)
    return InstanceConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        {"threshold": 2},  # below 3
        {"threshold": 5},  # above n
        {
            "weights": {n: 0.2 for n in "bcdefghi"},
            "sign_keys": {n: bytes(32) for n in "bcdefghi"},
            "threshold": 4,
        },  # 2t == n: a lying receiver could satisfy two lists
        {"weights": {"b": 0.2, "c": 0.2, "d": 1.5, "e": 0.1}},
        {"weights": {"b": 0.2, "c": 0.2, "d": 0.0, "e": 0.1}},
        {
            "weights": {"a": 0.2, "c": 0.2, "d": 0.2, "e": 0.1},
            "sign_keys": {n: bytes(32) for n in "acde"},
        },
        {"sign_keys": {n: bytes(32) for n in "bcd"}},
        {"sign_keys": {n: bytes(31) for n in "bcde"}},
        {"schema": {}},
        {"schema": {"x": (-1,)}},
        {"instance": "a"},
    ],
)
def test_instance_parameters_are_validated(overrides: dict[str, object]) -> None:
    _config()  # the base is valid
    with pytest.raises(ConfigError):
        _config(**overrides)


def test_instance_ids_are_validated_and_encode_uniquely() -> None:
    ids = [
        InstanceId(ROSTER, "a", 1, 0),
        InstanceId(ROSTER, "a", 0, 1),
        InstanceId(ROSTER, "b", 1, 0),
        InstanceId(b"\x43" * 32, "a", 1, 0),
        InstanceId(ROSTER, "a1", 0, 0),
    ]
    assert len({i.encode() for i in ids}) == len(ids)
    for bad in (
        {"roster_hash": b"\x00" * 31},
        {"receiver": "bad name"},
        {"round": -1},
        {"step": 2**32},
        {"round": True},
    ):
        kwargs: dict[str, object] = {"roster_hash": ROSTER, "receiver": "a", "round": 0, "step": 0}
        kwargs.update(bad)
        with pytest.raises(ConfigError):
            InstanceId(**kwargs)  # type: ignore[arg-type]


def test_weights_sum_and_result_tensors_have_the_schema() -> None:
    graph = build_graph("torus", nodes=9)
    neighbours, weights = _setup(graph)
    values = _values(sorted(neighbours))
    result = run_graph_exchange(
        neighbours=neighbours, weights=weights, values=values, roster_hash=ROSTER, round=1
    )["site-0"]
    assert isinstance(result, AggregateResult)
    tensors = result.tensors()
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"lora_A": (4, 8), "lora_B": (8, 2)}
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert result.fixed_sum.dtype == np.int64
