"""The global consensus distance is streamed: two passes over the states, one state at a time,
with the same bits the stacked computation gave (the recorded runs depend on them)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch

from gossipmed.metrics import LazyStates, consensus_distances, flatten_state


def _stacked(states: list[dict[str, torch.Tensor]]) -> tuple[float, list[float]]:
    """The computation the simulator used before: every state stacked into one N x d tensor."""
    stacked = torch.stack([flatten_state(s) for s in states])
    centred = stacked - stacked.mean(dim=0, keepdim=True)
    per_site = torch.linalg.vector_norm(centred, dim=1)
    return math.sqrt(float((per_site**2).mean())), [float(d) for d in per_site]


@pytest.mark.parametrize(("sites", "dim"), [(2, 5), (8, 256), (33, 100), (300, 256)])
def test_streamed_distances_are_the_stacked_ones_bit_for_bit(sites: int, dim: int) -> None:
    gen = torch.Generator().manual_seed(sites)
    states = [
        {"x": torch.randn(dim, generator=gen) * 3, "b": torch.randn(2, 3, generator=gen)}
        for _ in range(sites)
    ]
    assert consensus_distances(states) == _stacked(states)


def test_a_lazy_view_fetches_each_state_anew_on_each_pass_in_site_order() -> None:
    gen = torch.Generator().manual_seed(0)
    values = [torch.randn(16, generator=gen) for _ in range(6)]
    fetched: list[int] = []

    def getter(i: int) -> object:
        def get() -> Mapping[str, torch.Tensor]:
            fetched.append(i)
            return {"x": values[i].clone()}

        return get

    view = LazyStates([getter(i) for i in range(6)])  # type: ignore[list-item]
    overall, per_site = consensus_distances(view)
    assert fetched == [*range(6), *range(6)]  # two passes, in site order
    want = _stacked([{"x": v} for v in values])
    assert (overall, per_site) == want


def test_a_one_shot_iterator_is_refused_rather_than_read_half() -> None:
    states = ({"x": torch.ones(3)} for _ in range(3))
    with pytest.raises(TypeError, match="re-iterable"):
        consensus_distances(states)


def test_zero_sites_have_no_consensus_distance() -> None:
    with pytest.raises(ValueError, match="zero sites"):
        consensus_distances([])
