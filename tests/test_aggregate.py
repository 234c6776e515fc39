"""Mixing: rows stay stochastic, silent neighbours count as self, float64 accumulation."""

import pytest
import torch

from gossipmed.errors import ConfigError
from gossipmed.mixing.rules import (
    AggregationError,
    fold_silent_weight,
    get_rule,
    mix,
    weighted_average,
)


def test_silent_neighbours_weight_goes_to_self() -> None:
    row = {"a": 0.4, "b": 0.3, "c": 0.3}
    folded = fold_silent_weight(row, self_name="a", heard={"b"})
    assert folded == pytest.approx({"a": 0.7, "b": 0.3})
    assert sum(folded.values()) == pytest.approx(1.0)


def test_weighted_average_is_exact_and_keeps_dtype() -> None:
    states = {
        "a": {"w": torch.tensor([1.0, 2.0], dtype=torch.float32)},
        "b": {"w": torch.tensor([3.0, 6.0], dtype=torch.float32)},
    }
    out = weighted_average(states, {"a": 0.25, "b": 0.75})
    assert out["w"].dtype == torch.float32
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0]))


def test_mix_with_nobody_heard_returns_own_state() -> None:
    own = {"w": torch.randn(3, 4)}
    out = mix(rule="weighted", self_name="a", row={"a": 0.5, "b": 0.5}, states={"a": own})
    assert torch.equal(out["w"], own["w"])


def test_mix_refuses_a_state_from_a_non_neighbour() -> None:
    states = {"a": {"w": torch.zeros(2)}, "z": {"w": torch.ones(2)}}
    with pytest.raises(AggregationError):
        mix(rule="weighted", self_name="a", row={"a": 0.5, "b": 0.5}, states=states)


def test_mismatched_shapes_and_bad_weights_raise() -> None:
    states = {"a": {"w": torch.zeros(2)}, "b": {"w": torch.zeros(3)}}
    with pytest.raises(AggregationError):
        weighted_average(states, {"a": 0.5, "b": 0.5})
    with pytest.raises(AggregationError):
        weighted_average({"a": {"w": torch.zeros(2)}}, {"a": 0.9})


def test_unknown_rule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="weighted"):
        get_rule("median-of-nothing")
