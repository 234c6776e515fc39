"""The default rule's worst-case norm growth, as a property of whatever neighbours send.

`bounded` scales each neighbour's state down to the lower median norm m of the states mixed
(own included), so one exchange gives ||x_i'|| <= max(||x_i||, m); with at most ceil(n/2)
dishonest among the n neighbours heard, m is at most the largest honest norm H, so
||x_i'|| <= H: a factor of 1, which cannot compound (gossipmed.mixing.bounds). The secure
mix, which sees only the weighted sum, holds that sum to the site's own norm, so
||x_i'|| <= ||x_i||.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmed.mixing.bounds import (
    InfluenceBound,
    bound_secure_sum,
    clip_to_median_norm,
    median_norm_growth_bound,
    state_norm,
)
from gossipmed.mixing.rules import Aggregator
from gossipmed.mixing.secagg import run_graph_exchange
from node.round.audit import ListAudit
from node.round.secure_mix import SecureOutcome, mix_outcome

SHAPES = {"a": (3,), "b": (2, 2)}
F32_MAX = float(torch.finfo(torch.float32).max)
ROUNDING = 1e-5  # float32 states: the scaled and averaged values are rounded once each

honest_value = st.floats(-1e3, 1e3, allow_nan=False, width=32)
any_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([F32_MAX, -F32_MAX, 1e30, 0.0]),
)


def _state(values: list[float]) -> dict[str, torch.Tensor]:
    flat = torch.tensor(values, dtype=torch.float32)
    return {"a": flat[:3].clone(), "b": flat[3:7].reshape(2, 2).clone()}


def _states(value: st.SearchStrategy[float]) -> st.SearchStrategy[dict[str, torch.Tensor]]:
    return st.lists(value, min_size=7, max_size=7).map(_state)


@st.composite
def neighbourhoods(draw: st.DrawFn) -> tuple[dict, dict, set[str], dict[str, float]]:
    """(states heard incl. "me", row over all neighbours incl. silent ones, attackers, norms)"""
    n = draw(st.integers(1, 7))
    names = [f"n{j}" for j in range(n)]
    attackers = set(draw(st.lists(st.sampled_from(names), max_size=math.ceil(n / 2))))
    states = {"me": draw(_states(honest_value))}
    for name in names:
        states[name] = draw(_states(any_value if name in attackers else honest_value))
    silent = draw(st.integers(0, 2))
    raw = draw(st.lists(st.floats(0.01, 1.0), min_size=n + silent + 1, max_size=n + silent + 1))
    keys = ["me", *names, *[f"quiet{k}" for k in range(silent)]]
    row = {k: w / sum(raw) for k, w in zip(keys, raw, strict=True)}
    return states, row, attackers, {k: state_norm(v) for k, v in states.items()}


@settings(max_examples=100, deadline=None, derandomize=True)
@given(neighbourhoods())
def test_the_default_mix_never_exceeds_the_largest_honest_norm_heard(case: tuple) -> None:
    states, row, attackers, norms = case
    mixed = Aggregator().mix(self_name="me", row=row, states=states)
    norm = state_norm(mixed)
    honest = max(v for k, v in norms.items() if k not in attackers)
    assert norm <= honest * (1 + ROUNDING) + 1e-30, (norm, honest)
    assert norm <= median_norm_growth_bound(norms, self_name="me") * (1 + ROUNDING) + 1e-30


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.dictionaries(st.sampled_from(["me", "x", "y", "z"]), _states(any_value), min_size=1))
def test_whoever_sends_what_the_mix_stays_within_own_norm_or_the_median(states: dict) -> None:
    """No honest majority assumed: the bound is max(own, median), attackers' median included."""
    states.setdefault("me", _state([1.0] * 7))
    norms = {k: state_norm(v) for k, v in states.items()}
    row = {k: 1 / len(states) for k in states}
    mixed = Aggregator().mix(self_name="me", row=row, states=states)
    bound = median_norm_growth_bound(norms, self_name="me")
    assert math.isfinite(state_norm(mixed))
    assert state_norm(mixed) <= bound * (1 + ROUNDING) + 1e-30


def test_one_loud_neighbour_of_a_ring_site_is_scaled_to_the_honest_one() -> None:
    own = {"x": torch.full((4,), 1.0)}  # norm 2
    honest = {"x": torch.full((4,), 1.5)}  # norm 3
    loud = {"x": torch.full((4,), 1.5e3)}  # norm 3000
    clipped = clip_to_median_norm({"me": own, "h": honest, "m": loud}, self_name="me")
    assert clipped.limit == pytest.approx(3.0)
    assert clipped.scaled == {"m"}
    assert state_norm(clipped.states["m"]) == pytest.approx(3.0)
    assert clipped.states["h"] is honest and clipped.states["me"] is own


def test_in_agreement_nothing_is_scaled_and_the_rule_is_the_weighted_average() -> None:
    state = {"x": torch.arange(6, dtype=torch.float32)}
    states = {"me": state, "a": dict(state), "b": dict(state)}
    row = {"me": 0.5, "a": 0.25, "b": 0.25}
    mixed, scaled = Aggregator().mix_reporting(self_name="me", row=row, states=states)
    assert scaled == frozenset()
    assert torch.equal(mixed["x"], state["x"])


@settings(max_examples=80, deadline=None, derandomize=True)
@given(_states(honest_value), _states(any_value), st.floats(0.0, 1.0))
def test_the_bounded_secure_sum_never_raises_the_sites_norm(
    own: dict, total: dict, weight: float
) -> None:
    """Whatever sum the contributors produce (the site cannot see their states), the mix
    (1 - W) x_i + s' has norm at most ||x_i||."""
    total64 = {k: v.double() for k, v in total.items()}
    bounded, _ = bound_secure_sum(own, total64, weight=weight)
    mixed = {k: (1 - weight) * own[k].double() + bounded[k] for k in own}
    assert state_norm(mixed) <= state_norm(own) * (1 + 1e-9) + 1e-30


def test_a_real_secure_exchange_with_one_loud_contributor_does_not_raise_the_norm() -> None:
    names = [f"s{i}" for i in range(4)]
    neighbours = {n: [m for m in names if m != n] for n in names}
    weights = {n: {m: 0.25 for m in names if m != n} for n in names}
    values = {n: {"w": torch.full((3, 2), 0.01 * (i + 1))} for i, n in enumerate(names)}
    values["s3"] = {"w": torch.full((3, 2), 30.0)}  # within the public range, 3000x the rest
    results = run_graph_exchange(
        neighbours=neighbours, weights=weights, values=values, roster_hash=b"r" * 32, round=0
    )
    result = results["s0"]
    assert not isinstance(result, Exception)
    own = values["s0"]
    audit = ListAudit()
    common = {"site": "s0", "round": 0, "audit": audit, "bound": InfluenceBound()}
    outcome = SecureOutcome(result=result)
    mixed, _d, contributors, scaled = mix_outcome(own, outcome, bound_norm=True, **common)
    assert scaled and contributors == {"s1", "s2", "s3"}
    assert state_norm(mixed) <= state_norm(own) * (1 + 1e-6)
    unbounded, _d, _c, scaled = mix_outcome(own, outcome, bound_norm=False, **common)
    assert not scaled and state_norm(unbounded) > 100 * state_norm(own)  # what `weighted` does
