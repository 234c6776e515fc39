"""Tensors <-> fixed-point vectors mod 2**B, and the public bound on a decoded sum.

A contributor clips to the public range before weighting, so an honest sum of n terms with
weights w_j lies within sum(w_j) * range per coordinate; the receiver checks this on the
decoded sum, which is the only screening a masked sum allows (one wrapped contribution can
move it anywhere in Z mod 2**B).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from gossipmed.mixing.secagg.errors import NonFiniteInput, SumOutOfRange
from gossipmed.mixing.secagg.params import FixedPoint


def encode(
    values: Mapping[str, torch.Tensor],
    *,
    schema: Mapping[str, tuple[int, ...]],
    weight: float,
    fixed_point: FixedPoint,
) -> np.ndarray:
    """round(weight * clip(x, -range, range) * 2**frac_bits) mod 2**B, flattened in schema
    order; the unsigned words a contributor masks."""
    if set(values) != set(schema):
        extra, missing = sorted(set(values) - set(schema)), sorted(set(schema) - set(values))
        raise ValueError(
            f"tensors differ from the schema: extra {extra[:5]}, missing {missing[:5]}"
        )
    total = sum(math.prod(s) for s in schema.values())
    out = np.empty(total, dtype=fixed_point.word.newbyteorder("="))
    as_signed = out.view(fixed_point.signed)
    factor = weight * fixed_point.scale  # exact: the scale is a power of two
    offset = 0
    for name, shape in schema.items():
        tensor = values[name]
        if not tensor.is_floating_point() or tuple(tensor.shape) != shape:
            raise ValueError(f"tensor {name!r} must be floating point of shape {list(shape)}")
        if bool(torch.isnan(tensor).any()):
            raise NonFiniteInput(f"tensor {name!r} holds NaN")
        x = tensor.detach().to("cpu", torch.float64).reshape(-1).numpy()  # a fresh copy
        np.clip(x, -fixed_point.range, fixed_point.range, out=x)
        np.multiply(x, factor, out=x)
        np.rint(x, out=x)
        # |x| <= range * scale < 2**(B-1) (checked by FixedPoint), so the cast is exact;
        # two's complement then makes it the residue mod 2**B.
        np.copyto(as_signed[offset : offset + x.size], x, casting="unsafe")
        offset += x.size
    return out


def sum_bound(weight_sum: float, terms: int, fixed_point: FixedPoint) -> int:
    """Largest |integer sum| honest contributions can produce (range, weights, rounding)."""
    return math.ceil(weight_sum * fixed_point.range * fixed_point.scale) + terms


def decode(
    total: np.ndarray, *, weight_sum: float, terms: int, fixed_point: FixedPoint
) -> np.ndarray:
    """The signed integer sum (int64), or SumOutOfRange if any coordinate exceeds the bound."""
    signed = total.view(fixed_point.signed).astype(np.int64)
    bound = sum_bound(weight_sum, terms, fixed_point)
    worst = max(int(signed.max()), -int(signed.min())) if signed.size else 0
    if worst > bound:
        raise SumOutOfRange(
            f"decoded sum reaches {worst / fixed_point.scale:.6g} per coordinate, beyond the "
            f"public bound {bound / fixed_point.scale:.6g} (sum of weights x range)"
        )
    return signed


def to_tensors(
    ints: np.ndarray,
    *,
    schema: Mapping[str, tuple[int, ...]],
    fixed_point: FixedPoint,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Decoded integer sum -> name -> tensor (float64 division by the scale, then `dtype`)."""
    out = {}
    offset = 0
    for name, shape in schema.items():
        size = math.prod(shape)
        part = ints[offset : offset + size].astype(np.float64) / fixed_point.scale
        out[name] = torch.from_numpy(part).reshape(shape).to(dtype)
        offset += size
    return out
