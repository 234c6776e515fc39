"""Tensors <-> fixed-point vectors mod 2**B, and the public bounds on a decoded sum.

A contributor clips each coordinate to the public range, and scales its vector down to the
public L2 norm `l2` when one is set, before weighting. So an honest sum of n terms with
weights w_j (W = sum w_j <= 1) lies within W * range per coordinate and W * l2 in L2 norm
(plus rounding); the receiver checks both, exactly, on the decoded integers. That is the only
screening a masked sum allows, and it bounds the SUM, not one contributor: a dishonest
contributor can use the honest ones' unused headroom and place the sum anywhere inside
these bounds (one wrapped contribution can move it anywhere in Z mod 2**B; the checks refuse
what lands outside).
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
    clipped = np.empty(total, dtype=np.float64)
    offset = 0
    for name, shape in schema.items():
        tensor = values[name]
        if not tensor.is_floating_point() or tuple(tensor.shape) != shape:
            raise ValueError(f"tensor {name!r} must be floating point of shape {list(shape)}")
        if bool(torch.isnan(tensor).any()):
            raise NonFiniteInput(f"tensor {name!r} holds NaN")
        x = tensor.detach().to("cpu", torch.float64).reshape(-1).numpy()
        np.clip(x, -fixed_point.range, fixed_point.range, out=clipped[offset : offset + x.size])
        offset += x.size
    factor = weight * fixed_point.scale  # exact: the scale is a power of two
    if fixed_point.l2 is not None:
        norm = float(np.linalg.norm(clipped))
        if norm > fixed_point.l2:
            factor *= fixed_point.l2 / norm  # shrinking keeps every coordinate within range
    np.multiply(clipped, factor, out=clipped)
    np.rint(clipped, out=clipped)
    # |x| <= range * scale < 2**(B-1) (checked by FixedPoint), so the cast is exact;
    # two's complement then makes it the residue mod 2**B.
    np.copyto(as_signed, clipped, casting="unsafe")
    return out


_RELATIVE_SLACK = 1e-9
"""Covers float64 rounding in the clipping and the weight products (each ~1e-16 relative)."""
_LIMB_BITS = 16


def sum_bound(weight_sum: float, terms: int, fixed_point: FixedPoint) -> int:
    """Largest |integer sum| per coordinate honest contributions can produce (range, weights,
    rounding)."""
    return math.ceil(weight_sum * fixed_point.range * fixed_point.scale) + terms


def l2_bound(weight_sum: float, terms: int, coords: int, fixed_point: FixedPoint) -> int | None:
    """Largest L2 norm of the integer sum honest contributions can produce: each term is
    within w_j * l2 * scale, plus half a unit of rounding per coordinate (sqrt(d) / 2)."""
    if fixed_point.l2 is None:
        return None
    exact = weight_sum * fixed_point.l2 * fixed_point.scale * (1 + _RELATIVE_SLACK)
    return math.ceil(exact + terms * (math.sqrt(coords) / 2 + 1))


def exact_sum_of_squares(values: np.ndarray) -> int:
    """sum(v**2) of int64 values as an exact Python int: |v| is split into 16-bit limbs, so
    every limb product is below 2**32 and each of their sums over up to 2**31 coordinates
    fits in a uint64."""
    magnitude = np.abs(values.astype(np.int64)).astype(np.uint64)
    limbs = []
    while True:
        limbs.append(magnitude & np.uint64(2**_LIMB_BITS - 1))
        magnitude = magnitude >> np.uint64(_LIMB_BITS)
        if not magnitude.any():
            break
    total = 0
    for i, a in enumerate(limbs):
        for j in range(i, len(limbs)):
            part = int(np.sum(a * limbs[j], dtype=np.uint64))
            total += (part if i == j else 2 * part) << (_LIMB_BITS * (i + j))
    return total


def decode(
    total: np.ndarray, *, weight_sum: float, terms: int, fixed_point: FixedPoint
) -> np.ndarray:
    """The signed integer sum (int64), or SumOutOfRange if a coordinate exceeds the
    per-coordinate bound or the whole exceeds the L2 bound. Both checks are on integers and
    exact: validation keeps the honest sum from wrapping, so a sum that passes is the honest
    contributions plus, at most, whatever a dishonest one added inside the bounds."""
    signed = total.view(fixed_point.signed).astype(np.int64)
    bound = sum_bound(weight_sum, terms, fixed_point)
    worst = max(int(signed.max()), -int(signed.min())) if signed.size else 0
    if worst > bound:
        raise SumOutOfRange(
            f"decoded sum reaches {worst / fixed_point.scale:.6g} per coordinate, beyond the "
            f"public bound {bound / fixed_point.scale:.6g} (sum of weights x range)"
        )
    norm_bound = l2_bound(weight_sum, terms, int(signed.size), fixed_point)
    if norm_bound is not None:
        squares = exact_sum_of_squares(signed)
        if squares > norm_bound * norm_bound:
            raise SumOutOfRange(
                f"decoded sum has L2 norm {math.sqrt(squares) / fixed_point.scale:.6g}, beyond "
                f"the public bound {norm_bound / fixed_point.scale:.6g} (sum of weights x l2)"
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
