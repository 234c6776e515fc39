"""Split a pooled training set across sites: natural (real hospitals), IID, or Dirichlet label skew.

All schemes are deterministic given the seed and return disjoint index lists, one per site.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gossipmed.errors import DataError
from gossipmed.learn.datasets import Example

MIN_PER_SITE = 2
_MAX_DIRICHLET_TRIES = 100


def partition_natural(examples: Sequence[Example], *, sites: Sequence[str]) -> list[list[int]]:
    index = {name: i for i, name in enumerate(sites)}
    out: list[list[int]] = [[] for _ in sites]
    for i, ex in enumerate(examples):
        if ex.site not in index:
            raise DataError(f"example {i} has site {ex.site!r}, not one of {list(sites)}")
        out[index[ex.site]].append(i)
    return out


def partition_iid(n_examples: int, *, n_sites: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(n_examples)
    return [sorted(int(i) for i in chunk) for chunk in np.array_split(order, n_sites)]


def partition_dirichlet(
    labels: Sequence[str | None], *, n_sites: int, alpha: float, seed: int
) -> list[list[int]]:
    """Per label, split its examples across sites with proportions ~ Dirichlet(alpha).

    Redraws (seeded) until every site has at least MIN_PER_SITE examples, the usual recipe
    (Hsu et al. 2019) that keeps tiny alphas from producing empty sites.
    """
    rng = np.random.default_rng(seed)
    keys = sorted({"" if x is None else x for x in labels})
    by_label = {k: [i for i, x in enumerate(labels) if ("" if x is None else x) == k] for k in keys}
    for _ in range(_MAX_DIRICHLET_TRIES):
        out: list[list[int]] = [[] for _ in range(n_sites)]
        for k in keys:
            idx = np.array(by_label[k])
            rng.shuffle(idx)
            proportions = rng.dirichlet(np.full(n_sites, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                out[site].extend(int(i) for i in chunk)
        if min(len(s) for s in out) >= MIN_PER_SITE:
            return [sorted(s) for s in out]
    raise DataError(
        f"Dirichlet(alpha={alpha}) left a site with < {MIN_PER_SITE} examples after "
        f"{_MAX_DIRICHLET_TRIES} draws; use more data, fewer sites or a larger alpha"
    )


def partition(
    examples: Sequence[Example],
    *,
    scheme: str,
    n_sites: int,
    alpha: float,
    seed: int,
    natural_sites: Sequence[str] = (),
) -> list[list[int]]:
    if n_sites < 1:
        raise DataError("n_sites must be >= 1")
    if len(examples) < n_sites * MIN_PER_SITE:
        raise DataError(f"{len(examples)} examples are too few for {n_sites} sites")
    if scheme == "natural":
        if not natural_sites:
            raise DataError("this dataset has no natural sites; use iid or dirichlet")
        if len(natural_sites) != n_sites:
            raise DataError(
                f"this dataset has {len(natural_sites)} natural sites "
                f"({', '.join(natural_sites)}), not {n_sites}"
            )
        return partition_natural(examples, sites=natural_sites)
    if scheme == "iid":
        return partition_iid(len(examples), n_sites=n_sites, seed=seed)
    if scheme == "dirichlet":
        return partition_dirichlet(
            [ex.partition_key for ex in examples], n_sites=n_sites, alpha=alpha, seed=seed
        )
    raise DataError(f"unknown partition scheme {scheme!r}")
