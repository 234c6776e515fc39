"""Partitioners: disjoint, complete, seeded; Dirichlet alpha controls label skew."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmed.errors import DataError
from gossipmed.learn.datasets import Example
from gossipmed.learn.partition import partition


def _examples(n: int, n_labels: int = 5) -> list[Example]:
    return [Example(text=str(i), label=f"l{i % n_labels}", site=f"s{i % 3}") for i in range(n)]


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    per_site=st.integers(10, 40),  # Dirichlet may rightly refuse fewer (tested below)
    sites=st.integers(1, 8),
    scheme=st.sampled_from(["iid", "dirichlet"]),
    seed=st.integers(0, 1000),
)
def test_partition_is_a_disjoint_cover(per_site: int, sites: int, scheme: str, seed: int) -> None:
    n = per_site * sites
    parts = partition(_examples(n), scheme=scheme, n_sites=sites, alpha=1.0, seed=seed)
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))
    assert len(parts) == sites


def test_partitions_are_seeded() -> None:
    ex = _examples(200)
    a = partition(ex, scheme="dirichlet", n_sites=4, alpha=0.5, seed=3)
    assert a == partition(ex, scheme="dirichlet", n_sites=4, alpha=0.5, seed=3)
    assert a != partition(ex, scheme="dirichlet", n_sites=4, alpha=0.5, seed=4)


def _label_skew(parts: list[list[int]], ex: list[Example]) -> float:
    """Mean share of each site's most common label (0.2 = uniform over 5 labels)."""
    shares = []
    for p in parts:
        labels = [ex[i].label for i in p]
        shares.append(max(labels.count(x) for x in set(labels)) / len(labels))
    return sum(shares) / len(shares)


def test_small_alpha_means_strong_label_skew() -> None:
    ex = _examples(2000)
    skewed = partition(ex, scheme="dirichlet", n_sites=4, alpha=0.1, seed=0)
    mild = partition(ex, scheme="dirichlet", n_sites=4, alpha=100.0, seed=0)
    iid = partition(ex, scheme="iid", n_sites=4, alpha=1.0, seed=0)
    assert _label_skew(skewed, ex) > 0.5
    assert _label_skew(mild, ex) < 0.3
    assert _label_skew(iid, ex) < 0.3


def test_natural_partition_follows_sites() -> None:
    ex = _examples(30)
    parts = partition(
        ex, scheme="natural", n_sites=3, alpha=1, seed=0, natural_sites=["s0", "s1", "s2"]
    )
    assert all(ex[i].site == f"s{k}" for k, p in enumerate(parts) for i in p)
    with pytest.raises(DataError, match="natural sites"):
        partition(
            ex, scheme="natural", n_sites=4, alpha=1, seed=0, natural_sites=["s0", "s1", "s2"]
        )
    with pytest.raises(DataError, match="no natural sites"):
        partition(ex, scheme="natural", n_sites=3, alpha=1, seed=0)


def test_dirichlet_refuses_data_too_small_to_give_every_site_two_examples() -> None:
    with pytest.raises(DataError, match="Dirichlet"):
        partition(_examples(10, n_labels=1), scheme="dirichlet", n_sites=5, alpha=0.01, seed=0)
