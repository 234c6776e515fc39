"""Tensor encoding and the bounded msgpack parser under the envelope."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmed.wire.tensors import (
    CODECS,
    DtypeNotAllowed,
    MalformedEnvelope,
    NonFiniteTensor,
    PayloadSchemaError,
    ShapeMismatch,
    TensorSetMismatch,
    TensorSpec,
    UnknownCodec,
    decode_payload,
    encode_payload,
    get_codec,
    schema_of,
    unpack_bounded,
)

MAX = 1 << 20
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _decode(data: bytes, schema: Mapping[str, TensorSpec], codec: str = "raw") -> Any:
    return decode_payload(data, codec=codec, expected=schema, max_bytes=MAX)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    seed=st.integers(0, 2**31),
)
def test_raw_codec_round_trips_bit_exactly(dtype: torch.dtype, shape: list[int], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors = {"w": torch.randn(shape, generator=gen).to(dtype), "b": torch.ones(2, dtype=dtype)}
    data = encode_payload(tensors, epsilon=1.5)
    out = _decode(data, schema_of(tensors))
    assert out.epsilon == 1.5
    for k, t in tensors.items():
        assert out.tensors[k].dtype == t.dtype
        assert torch.equal(out.tensors[k], t)  # randn has no NaN, so equality is bitwise
        out.tensors[k].add_(0)  # decoded tensors are writable, not views of the input


def _payload(tensors: dict[str, Any], **extra: Any) -> bytes:
    body = {"v": 2, "tensors": tensors, "epsilon": 0.0, **extra}
    return msgpack.packb(body, use_bin_type=True)


def _rec(dtype: str, shape: list[int], data: bytes) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data": data}


SCHEMA: dict[str, TensorSpec] = {"w": ("float32", (2,))}
GOOD = np.array([1.0, 2.0], dtype="<f4").tobytes()


def test_wire_dtype_outside_allow_list_is_refused() -> None:
    with pytest.raises(DtypeNotAllowed):
        _decode(_payload({"w": _rec("float64", [2], b"\0" * 16)}), SCHEMA)


def test_wire_dtype_other_than_expected_is_refused() -> None:
    with pytest.raises(DtypeNotAllowed):
        _decode(_payload({"w": _rec("float16", [2], b"\0" * 4)}), SCHEMA)


@pytest.mark.parametrize(
    ("shape", "data"), [([3], GOOD), ([2], GOOD[:-1]), ([2], GOOD + b"\0"), ([-2], GOOD)]
)
def test_shape_and_byte_length_must_agree_with_the_schema(shape: list[int], data: bytes) -> None:
    with pytest.raises(ShapeMismatch):
        _decode(_payload({"w": _rec("float32", shape, data)}), SCHEMA)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_non_finite_values_are_refused(bad: float, dtype: str) -> None:
    t = torch.tensor([1.0, bad]).to(getattr(torch, dtype))
    raw = t.view(torch.int16) if dtype == "bfloat16" else t
    data = raw.numpy().tobytes()
    with pytest.raises(NonFiniteTensor):
        _decode(_payload({"w": _rec(dtype, [2], data)}), {"w": (dtype, (2,))})


def test_extra_or_missing_tensors_are_refused() -> None:
    with pytest.raises(TensorSetMismatch, match="extra"):
        _decode(
            _payload({"w": _rec("float32", [2], GOOD), "x": _rec("float32", [2], GOOD)}), SCHEMA
        )
    with pytest.raises(TensorSetMismatch, match="missing"):
        _decode(_payload({}), SCHEMA)


@pytest.mark.parametrize(
    "extra",
    [
        {"n_examples": 7},  # version 1 sent the real batch size: refused, not ignored
        {"epsilon": True},
        {"epsilon": float("nan")},
        {"v": 1},
        {"v": 3},
    ],
)
def test_payload_scalars_are_type_checked(extra: dict[str, Any]) -> None:
    with pytest.raises(PayloadSchemaError):
        _decode(_payload({"w": _rec("float32", [2], GOOD)}, **extra), SCHEMA)


def test_sender_refuses_to_encode_non_finite_tensors() -> None:
    from gossipmed.errors import WireError

    with pytest.raises(WireError):
        encode_payload({"w": torch.tensor([float("nan")])}, epsilon=0.0)


def test_unpack_refuses_ext_types_and_oversized_containers() -> None:
    kw: dict[str, Any] = {"max_str": 8, "max_array": 4, "max_map": 4, "max_items": 100}
    with pytest.raises(MalformedEnvelope, match="ext_len"):
        unpack_bounded(msgpack.packb(msgpack.ExtType(1, b"x")), max_bin=10, what="x", **kw)
    with pytest.raises(MalformedEnvelope):
        unpack_bounded(msgpack.packb(list(range(5))), max_bin=10, what="x", **kw)
    with pytest.raises(MalformedEnvelope):
        unpack_bounded(msgpack.packb(b"x" * 11), max_bin=10, what="x", **kw)


def test_unpack_counts_objects_across_the_whole_structure() -> None:
    many_small = [[1, 2, 3, 4]] * 4  # 4 lists of 4: under per-container limits, over budget
    with pytest.raises(MalformedEnvelope, match="too many"):
        unpack_bounded(
            msgpack.packb([many_small] * 4),
            max_bin=10,
            max_str=8,
            max_array=4,
            max_map=4,
            max_items=30,
            what="x",
        )


def test_unpack_refuses_deep_nesting_and_length_claims_beyond_the_input() -> None:
    kw: dict[str, Any] = {"max_str": 8, "max_array": 4, "max_map": 4, "max_items": 10**6}
    with pytest.raises(MalformedEnvelope):
        unpack_bounded(b"\x91" * 100_000 + b"\xc0", max_bin=10, what="x", **kw)
    with pytest.raises(MalformedEnvelope):
        unpack_bounded(b"\xc6\xff\xff\xff\xff", max_bin=2**31, what="x", **kw)  # bin32 4 GiB
    with pytest.raises(MalformedEnvelope):
        unpack_bounded(b"\xdd\xff\xff\xff\xff", max_bin=10, what="x", **kw)  # array32


def test_unknown_codec_is_a_typed_error() -> None:
    with pytest.raises(UnknownCodec):
        get_codec("zstd-magic")


def test_a_new_codec_plugs_in_through_the_registry() -> None:
    class NegatingCodec:
        """Toy codec: proves the envelope needs no change to carry another encoding."""

        name = "test-negate"

        def encode(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
            return CODECS.get("raw").encode({k: -t for k, t in tensors.items()})

        def decode(
            self, encoded: object, *, expected: Mapping[str, TensorSpec]
        ) -> dict[str, torch.Tensor]:
            return {k: -t for k, t in CODECS.get("raw").decode(encoded, expected=expected).items()}

    with CODECS.registered("test-negate", NegatingCodec()):
        t = {"w": torch.tensor([1.0, -2.0])}
        data = encode_payload(t, epsilon=0.0, codec="test-negate")
        assert torch.equal(_decode(data, schema_of(t), codec="test-negate").tensors["w"], t["w"])
    assert "test-negate" not in CODECS
