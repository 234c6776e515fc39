"""The global consensus distance in two passes, without gathering every state in one place.

Each host returns the exact sum of its sites' states; the driver adds the hosts' sums and
divides once; each host returns its sites' distances to that mean. The sums are exact
whole numbers (every float32 coordinate's magnitude, scaled by 2**149, split into 31-bit bands
that carry its sign),
so they do not depend on how sites are spread over hosts or in which order they are added:
the mean, and every distance, is the same bit for bit for any number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from gossipmed.metrics import flatten_state

BAND_BITS = 31
SCALE_BITS = 149  # 2**-149 is the smallest float32 (subnormal): every float32 * 2**149 is whole
BANDS = 9  # 9 * 31 bits cover float32's range scaled by 2**149 (below 2**277)

BandSums = dict[int, torch.Tensor]
"""band k -> float64 sum of that band's signed digits over every state (bands that are all
zero left out). A digit is below 2**31, so the sum over fewer than 2**22 states is a whole
number below 2**53: exact in float64, whatever the order of addition."""


def band_sums(states: Iterable[Mapping[str, torch.Tensor]]) -> tuple[int, BandSums]:
    """(number of states, their exact sum in bands)."""
    count, sums = 0, BandSums()
    for state in states:
        count += 1
        flat = flatten_state(state)
        sign = torch.sign(flat)
        rest = flat.abs_().mul_(2.0**SCALE_BITS)  # whole numbers with <= 24 significant bits
        top = float(rest.max()) if rest.numel() else 0.0
        k = min(BANDS - 1, int(math.log2(top)) // BAND_BITS) if top > 0 else -1
        while k >= 0:  # from the top band down, until nothing is left
            unit = 2.0 ** (BAND_BITS * k)
            digits = torch.mul(rest, 1.0 / unit).floor_()
            rest.sub_(digits, alpha=unit)  # exact: it only clears the bits taken
            if k in sums:
                sums[k].addcmul_(digits, sign)
            else:
                sums[k] = digits.mul_(sign)
            if not bool(rest.any()):
                break
            k -= 1
    return count, sums


def add_band_sums(parts: Sequence[tuple[int, BandSums]]) -> tuple[int, BandSums]:
    count, total = 0, BandSums()
    for n, sums in parts:
        count += n
        for k, digits in sums.items():
            total[k] = total[k] + digits if k in total else digits.clone()
    return count, total


def mean_of(count: int, sums: BandSums, *, size: int) -> torch.Tensor:
    """The float64 mean from exact sums, always added up in the same band order (largest
    first, so the rounding is that of one float64 sum of the bands)."""
    if count == 0:
        raise ValueError("consensus distance of zero sites")
    mean = torch.zeros(size, dtype=torch.float64)
    for k in sorted(sums, reverse=True):
        mean += sums[k] * 2.0 ** (BAND_BITS * k - SCALE_BITS)
    return mean / count


def distances_to(states: Iterable[Mapping[str, torch.Tensor]], mean: torch.Tensor) -> list[float]:
    """||x_i - mean|| per state, in float64."""
    return [float(torch.linalg.vector_norm(flatten_state(s) - mean)) for s in states]


def overall(per_site: Sequence[float]) -> float:
    """The global D: root mean square of the per-site distances."""
    return math.sqrt(math.fsum(d * d for d in per_site) / len(per_site))
