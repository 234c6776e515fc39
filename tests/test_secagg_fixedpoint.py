"""Fixed-point encoding: clipping, exact modular sums, the stated error bound, the range check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gossipmed.errors import ConfigError
from gossipmed.mixing.secagg.errors import NonFiniteInput, SumOutOfRange
from gossipmed.mixing.secagg.fixedpoint import decode, encode, sum_bound, to_tensors
from gossipmed.mixing.secagg.params import MAX_CONTRIBUTORS, FixedPoint

SCHEMA = {"a": (2, 3), "b": (4,)}


def _sum_encoded(parts: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(parts[0])
    for p in parts:
        np.add(total, p, out=total)
    return total


@pytest.mark.parametrize("fp", [FixedPoint(), FixedPoint(range=4.0, frac_bits=16, modulus_bits=32)])
def test_sum_of_encodings_decodes_to_the_weighted_sum_within_the_bound(fp: FixedPoint) -> None:
    gen = torch.Generator().manual_seed(3)
    weights = [0.2, 0.25, 0.3, 0.05, 0.1]
    values = [
        {k: torch.randn(s, generator=gen) * fp.range for k, s in SCHEMA.items()} for _ in weights
    ]
    parts = [
        encode(v, schema=SCHEMA, weight=w, fixed_point=fp)
        for v, w in zip(values, weights, strict=True)
    ]
    assert all(p.dtype == fp.word for p in parts)
    ints = decode(_sum_encoded(parts), weight_sum=sum(weights), terms=5, fixed_point=fp)
    got = to_tensors(ints, schema=SCHEMA, fixed_point=fp, dtype=torch.float64)
    for name in SCHEMA:
        exact = sum(
            w * v[name].double().clamp(-fp.range, fp.range)
            for v, w in zip(values, weights, strict=True)
        )
        err = (got[name] - exact).abs().max().item()
        assert err <= fp.error_bound(5)
    # the float32 output adds only its own rounding
    as32 = to_tensors(ints, schema=SCHEMA, fixed_point=fp)
    assert as32["a"].dtype == torch.float32
    assert torch.allclose(as32["a"].double(), got["a"], rtol=2**-23, atol=0)


def test_the_error_bound_is_met_and_nearly_reached() -> None:
    # Values that land on half units maximise rounding error: the bound must hold for them,
    # and a bound half as large would not (so this test can fail if the rounding is wrong).
    fp = FixedPoint(range=1.0, frac_bits=8)
    half_unit = 0.5 / fp.scale
    x = torch.full((64,), 0.25 + half_unit * 0.999)
    terms = 4
    parts = [encode({"x": x}, schema={"x": (64,)}, weight=1.0, fixed_point=fp) for _ in range(4)]
    ints = decode(_sum_encoded(parts), weight_sum=4.0, terms=terms, fixed_point=fp)
    got = ints.astype(np.float64) / fp.scale
    err = np.abs(got - 4 * x.double().numpy()).max()
    assert err <= fp.error_bound(terms)
    assert err > fp.error_bound(terms) / 2


def test_contributors_clip_to_the_public_range_before_weighting() -> None:
    fp = FixedPoint(range=2.0)
    x = {"x": torch.tensor([-100.0, -2.0, 0.5, 3.0, math.inf, -math.inf])}
    ints = encode(x, schema={"x": (6,)}, weight=0.5, fixed_point=fp).view(np.int64)
    assert (ints / fp.scale).tolist() == [-1.0, -1.0, 0.25, 1.0, 1.0, -1.0]


def test_nan_is_refused_not_encoded() -> None:
    with pytest.raises(NonFiniteInput):
        encode(
            {"x": torch.tensor([0.0, math.nan])},
            schema={"x": (2,)},
            weight=1.0,
            fixed_point=FixedPoint(),
        )


def test_encode_checks_the_schema() -> None:
    fp = FixedPoint()
    with pytest.raises(ValueError):
        encode({"x": torch.zeros(3)}, schema={"x": (4,)}, weight=1.0, fixed_point=fp)
    with pytest.raises(ValueError):
        encode({"y": torch.zeros(4)}, schema={"x": (4,)}, weight=1.0, fixed_point=fp)
    with pytest.raises(ValueError):
        encode(
            {"x": torch.zeros(4, dtype=torch.int32)}, schema={"x": (4,)}, weight=1.0, fixed_point=fp
        )


def test_a_wrapped_contribution_is_caught_by_the_range_check() -> None:
    fp = FixedPoint(range=1.0)
    honest = encode({"x": torch.ones(4)}, schema={"x": (4,)}, weight=0.5, fixed_point=fp)
    decode(honest, weight_sum=0.5, terms=1, fixed_point=fp)  # in range
    # A malicious contributor adds 2^62 to one coordinate: mod 2^64 it is just another value.
    evil = honest.copy()
    evil[2] += np.uint64(2**62)
    with pytest.raises(SumOutOfRange):
        decode(evil, weight_sum=0.5, terms=1, fixed_point=fp)
    # the most negative value cannot hide from the check either
    evil = honest.copy()
    evil[0] = np.uint64(2**63)
    with pytest.raises(SumOutOfRange):
        decode(evil, weight_sum=0.5, terms=1, fixed_point=fp)
    # just beyond sum(w) x range, plus rounding slack, is refused
    edge = np.full(1, sum_bound(0.5, 1, fp) + 1, dtype=np.int64).view(np.uint64)
    with pytest.raises(SumOutOfRange):
        decode(edge, weight_sum=0.5, terms=1, fixed_point=fp)


def test_honest_worst_case_sums_never_wrap() -> None:
    # MAX_CONTRIBUTORS contributors at weight 1 and +-range decode exactly, in both moduli.
    for fp in (FixedPoint(), FixedPoint(range=8.0, frac_bits=20, modulus_bits=32)):
        for sign in (1.0, -1.0):
            one = encode(
                {"x": torch.full((3,), sign * fp.range)},
                schema={"x": (3,)},
                weight=1.0,
                fixed_point=fp,
            )
            total = np.zeros_like(one)
            for _ in range(MAX_CONTRIBUTORS):
                np.add(total, one, out=total)
            ints = decode(
                total, weight_sum=float(MAX_CONTRIBUTORS), terms=MAX_CONTRIBUTORS, fixed_point=fp
            )
            assert (ints / fp.scale).tolist() == [sign * fp.range * MAX_CONTRIBUTORS] * 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"range": 0.0},
        {"range": -1.0},
        {"range": math.inf},
        {"frac_bits": -1},
        {"frac_bits": 53},
        {"modulus_bits": 48},
        {"range": 2.0**20, "frac_bits": 40},  # would wrap / lose float64 exactness
        {"range": 32.0, "frac_bits": 32, "modulus_bits": 32},
    ],
)
def test_fixed_point_parameters_that_could_wrap_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        FixedPoint(**kwargs)  # type: ignore[arg-type]
