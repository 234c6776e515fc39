"""Compressed codecs: what each promises about precision and size, and that decoding stays
as strict as the raw codec's (sizes before allocation, indices in range, no duplicates,
finite values, the receiver's own dtype and shape)."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gossipmed.wire.codecs  # noqa: F401  (registers the codecs)
from gossipmed.errors import WireError
from gossipmed.wire.codecs import CODEC_NAMES, topk_sparsify
from gossipmed.wire.tensors import (
    DtypeNotAllowed,
    NonFiniteTensor,
    PayloadSchemaError,
    ShapeMismatch,
    TensorSetMismatch,
    decode_payload,
    encode_payload,
    get_codec,
    schema_of,
)

MAX = 1 << 22


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "lora_A": torch.randn(8, 64, generator=gen) * 0.05,
        "lora_B": torch.randn(64, 8, generator=gen) * 0.01,
        "bias": torch.zeros(3),
    }


def _round_trip(tensors: dict[str, torch.Tensor], codec: str) -> tuple[dict[str, Any], int]:
    data = encode_payload(tensors, epsilon=1.0, codec=codec)
    out = decode_payload(data, codec=codec, expected=schema_of(tensors), max_bytes=MAX)
    return out.tensors, len(data)


def _payload(codec: str, tensors: dict[str, Any]) -> bytes:
    body = {"v": 2, "tensors": tensors, "epsilon": 0.0}
    return bytes(msgpack.packb(body, use_bin_type=True))


def _decode(codec: str, tensors: dict[str, Any], schema: dict[str, Any]) -> Any:
    return decode_payload(_payload(codec, tensors), codec=codec, expected=schema, max_bytes=MAX)


SCHEMA = {"w": ("float32", (4, 5))}


def test_every_codec_is_registered_by_its_header_name() -> None:
    assert set(CODEC_NAMES) == {"raw", "fp16", "bf16", "int8", "topk"}
    for name in CODEC_NAMES:
        assert get_codec(name).name == name


@pytest.mark.parametrize(
    ("codec", "rel_tol", "max_ratio"),
    [("fp16", 1e-3, 0.55), ("bf16", 8e-3, 0.55), ("int8", 4.1e-3, 0.30)],
)
def test_dense_codecs_shrink_bytes_and_bound_the_error(
    codec: str, rel_tol: float, max_ratio: float
) -> None:
    state = _state()
    _raw, raw_size = _round_trip(state, "raw")
    out, size = _round_trip(state, codec)
    assert size < max_ratio * raw_size
    for name, t in state.items():
        assert out[name].dtype == torch.float32 and out[name].shape == t.shape
        peak = float(t.abs().max()) or 1.0
        assert float((out[name] - t).abs().max()) <= rel_tol * peak


def test_int8_error_is_at_most_half_a_step() -> None:
    x = {"w": torch.linspace(-1.0, 1.0, 1001)}
    out, _ = _round_trip(x, "int8")
    assert float((out["w"] - x["w"]).abs().max()) <= 0.5 / 127 + 1e-7
    assert torch.equal(out["w"][[0, -1]], x["w"][[0, -1]])  # the peak is exact


def test_fp16_refuses_to_send_what_it_cannot_represent() -> None:
    with pytest.raises(WireError, match="overflows"):
        encode_payload({"w": torch.tensor([1e6])}, epsilon=0.0, codec="fp16")
    out, _ = _round_trip({"w": torch.tensor([1e6])}, "bf16")  # bf16 has float32's range
    assert float(out["w"][0]) == pytest.approx(1e6, rel=1e-2)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=3),
    fraction=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31),
)
def test_topk_carries_exactly_the_kept_entries(
    shape: list[int], fraction: float, seed: int
) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    sparse = topk_sparsify(x, fraction=fraction)
    kept = int((sparse != 0).sum())
    assert kept == min(x.numel(), int(np.ceil(fraction * x.numel())))
    if kept:  # every kept magnitude beats every dropped one
        dropped = x[sparse == 0].abs()
        assert dropped.numel() == 0 or float(dropped.max()) <= float(sparse.abs().max())
    out, _ = _round_trip({"w": sparse}, "topk")
    assert torch.equal(out["w"], sparse)


def test_topk_bytes_scale_with_k_not_with_the_tensor() -> None:
    x = {"w": torch.randn(256, 256, generator=torch.Generator().manual_seed(1))}
    _raw, raw_size = _round_trip(x, "raw")
    _out, size = _round_trip({"w": topk_sparsify(x["w"], fraction=0.01)}, "topk")
    assert raw_size / size > 45  # 8 bytes per kept entry vs 4 per entry: 50x minus framing


# --- strict decoding ---------------------------------------------------------------------


def _half(data: bytes, dtype: str = "float16", shape: Any = None) -> dict[str, Any]:
    return {"w": {"dtype": dtype, "shape": shape or [4, 5], "data": data}}


def test_half_decode_checks_dtype_shape_and_length() -> None:
    good = np.zeros(20, dtype="<f2").tobytes()
    assert _decode("fp16", _half(good), SCHEMA).tensors["w"].dtype == torch.float32
    with pytest.raises(DtypeNotAllowed):
        _decode("fp16", _half(good, dtype="bfloat16"), SCHEMA)
    with pytest.raises(ShapeMismatch):
        _decode("fp16", _half(good, shape=[5, 4]), SCHEMA)
    with pytest.raises(ShapeMismatch):
        _decode("fp16", _half(good[:-2]), SCHEMA)
    with pytest.raises(NonFiniteTensor):
        _decode("fp16", _half(np.full(20, np.inf, dtype="<f2").tobytes()), SCHEMA)
    with pytest.raises(TensorSetMismatch):
        _decode("fp16", {"v": _half(good)["w"]}, SCHEMA)


def _int8(data: bytes, scale: Any = 0.5, **extra: Any) -> dict[str, Any]:
    return {"w": {"shape": [4, 5], "scale": scale, "data": data, **extra}}


def test_int8_decode_checks_scale_levels_and_length() -> None:
    good = np.arange(-10, 10, dtype="i1").tobytes()
    out = _decode("int8", _int8(good), SCHEMA).tensors["w"]
    assert float(out.reshape(-1)[0]) == -5.0
    for bad_scale in (float("nan"), float("inf"), -1.0, 1):
        with pytest.raises(NonFiniteTensor):
            _decode("int8", _int8(good, scale=bad_scale), SCHEMA)
    with pytest.raises(PayloadSchemaError, match="-128"):
        _decode("int8", _int8(np.full(20, -128, dtype="i1").tobytes()), SCHEMA)
    with pytest.raises(ShapeMismatch):
        _decode("int8", _int8(good + b"\x00"), SCHEMA)
    with pytest.raises(PayloadSchemaError):
        _decode("int8", _int8(good, extra=1), SCHEMA)
    with pytest.raises(NonFiniteTensor):  # 127 * 3e38 overflows float32
        _decode("int8", _int8(np.full(20, 127, dtype="i1").tobytes(), scale=3e38), SCHEMA)


def _topk(idx: list[int], vals: list[float], shape: Any = None) -> dict[str, Any]:
    return {
        "w": {
            "shape": shape or [4, 5],
            "indices": np.array(idx, dtype="<i4").tobytes(),
            "values": np.array(vals, dtype="<f4").tobytes(),
        }
    }


def test_topk_decode_rejects_bad_indices_and_values() -> None:
    out = _decode("topk", _topk([0, 7, 19], [1.0, -2.0, 3.0]), SCHEMA).tensors["w"].reshape(-1)
    assert out[7] == -2.0 and int((out != 0).sum()) == 3
    with pytest.raises(ShapeMismatch, match="out of range"):
        _decode("topk", _topk([0, 20], [1.0, 1.0]), SCHEMA)
    with pytest.raises(ShapeMismatch, match="out of range"):
        _decode("topk", _topk([-1, 3], [1.0, 1.0]), SCHEMA)
    with pytest.raises(PayloadSchemaError, match="duplicates"):
        _decode("topk", _topk([3, 3], [1.0, 1.0]), SCHEMA)
    with pytest.raises(PayloadSchemaError, match="increasing"):
        _decode("topk", _topk([5, 3], [1.0, 1.0]), SCHEMA)
    with pytest.raises(NonFiniteTensor):
        _decode("topk", _topk([1, 2], [1.0, float("nan")]), SCHEMA)
    with pytest.raises(ShapeMismatch, match="disagree"):
        _decode("topk", _topk([1, 2], [1.0]), SCHEMA)
    with pytest.raises(ShapeMismatch, match="more entries"):
        _decode("topk", _topk(list(range(21)), [1.0] * 21), SCHEMA)
    with pytest.raises(ShapeMismatch):
        _decode("topk", _topk([1], [1.0], shape=[20]), SCHEMA)


def test_topk_never_allocates_what_the_sender_claims() -> None:
    # A huge claimed shape is refused by the schema check before anything is allocated.
    with pytest.raises(ShapeMismatch):
        _decode("topk", _topk([1], [1.0], shape=[2**31 - 1, 2**31 - 1]), SCHEMA)


def test_decoded_tensors_take_the_receivers_dtype() -> None:
    schema = {"w": ("bfloat16", (4, 5))}
    for codec, tensors in [
        ("fp16", _half(np.ones(20, dtype="<f2").tobytes())),
        ("int8", _int8(np.ones(20, dtype="i1").tobytes())),
        ("topk", _topk([2], [1.5])),
    ]:
        assert _decode(codec, tensors, schema).tensors["w"].dtype == torch.bfloat16
