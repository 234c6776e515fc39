"""Compressed tensor codecs for the update wire format: fp16, bf16, int8 and sparse top-k.

Each codec is registered in `gossipmed.wire.tensors` under the name that travels in the envelope
header, so a receiver decodes with exactly the codec the sender used. Decoding is as strict
as the raw codec's: every size, index and scale is checked against the receiver's own schema
before any tensor is allocated, and the output always has the receiver's dtype and shape,
so a compressed update can never change what a site's adapter looks like.

The "topk" codec is only a wire format (the nonzero entries as sorted int32 indices plus
float32 values); choosing which entries to send, and remembering what was left out, is
`topk_sparsify` plus `gossipmed.wire.error_feedback`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from gossipmed.errors import WireError
from gossipmed.wire.tensors import (
    DTYPES,
    DtypeNotAllowed,
    NonFiniteTensor,
    PayloadSchemaError,
    ShapeMismatch,
    TensorSpec,
    check_finite,
    check_tensor_names,
    parse_shape,
    register_codec,
    tensor_from_bytes,
    tensor_to_bytes,
)

INT8_LEVELS = 127  # symmetric: -128 is never produced and is refused on decode
INDEX_DTYPE = "<i4"
VALUE_DTYPE = "<f4"

__all__ = [
    "CODEC_NAMES",
    "HalfCodec",
    "Int8Codec",
    "TopKCodec",
    "topk_sparsify",
]


def _records(encoded: object, expected: Mapping[str, TensorSpec]) -> dict[str, Any]:
    if not isinstance(encoded, dict):
        raise PayloadSchemaError("payload tensors must be a map")
    check_tensor_names(encoded, expected)
    return encoded


def _record(rec: object, *, name: str, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(rec, dict) or set(rec) != keys:
        raise PayloadSchemaError(f"tensor {name!r} must be a map of {', '.join(sorted(keys))}")
    return rec


def _checked_shape(rec: Mapping[str, Any], *, name: str, want: tuple[int, ...]) -> None:
    shape = parse_shape(rec["shape"], name=name)
    if shape != want:
        raise ShapeMismatch(f"tensor {name!r}: shape {list(shape)}, expected {list(want)}")


def _bytes_field(rec: Mapping[str, Any], key: str, *, name: str, length: int) -> bytes:
    data = rec[key]
    if not isinstance(data, bytes):
        raise PayloadSchemaError(f"tensor {name!r}: {key} must be bytes")
    if len(data) != length:
        raise ShapeMismatch(f"tensor {name!r}: {key} has {len(data)} bytes, expected {length}")
    return data


# --- fp16 / bf16 -----------------------------------------------------------------------------

_HALF_KEYS = frozenset({"dtype", "shape", "data"})


class HalfCodec:
    """Every tensor cast to a 16-bit float on the wire and back to the receiver's dtype.

    Halves the bytes of float32 adapters. fp16 keeps 10 mantissa bits but overflows above
    65504 (refused at encode time rather than sent as Inf); bf16 keeps float32's range with
    7 mantissa bits.
    """

    def __init__(self, name: str, wire_dtype: str) -> None:
        self.name = name
        self.wire_dtype = wire_dtype
        self._torch = DTYPES[wire_dtype].torch_dtype

    def encode(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        out = {}
        for name, tensor in tensors.items():
            half = tensor.detach().to(self._torch)
            if not bool(torch.isfinite(half).all()):
                raise WireError(f"tensor {name!r} overflows {self.wire_dtype}; use another codec")
            dtype, shape, data = tensor_to_bytes(half)
            out[name] = {"dtype": dtype, "shape": shape, "data": data}
        return out

    def decode(
        self, encoded: object, *, expected: Mapping[str, TensorSpec]
    ) -> dict[str, torch.Tensor]:
        recs = _records(encoded, expected)
        itemsize = DTYPES[self.wire_dtype].itemsize
        for name, (_dtype, shape) in expected.items():
            rec = _record(recs[name], name=name, keys=_HALF_KEYS)
            if rec["dtype"] != self.wire_dtype:
                raise DtypeNotAllowed(
                    f"tensor {name!r}: codec {self.name} carries {self.wire_dtype} only"
                )
            _checked_shape(rec, name=name, want=shape)
            _bytes_field(rec, "data", name=name, length=math.prod(shape) * itemsize)
        out = {}
        for name, (dtype, shape) in expected.items():
            rec = recs.pop(name)
            half = tensor_from_bytes(rec["data"], dtype=self.wire_dtype, shape=shape)
            check_finite(name, half)
            out[name] = half.to(DTYPES[dtype].torch_dtype)
            check_finite(name, out[name])
        return out


# --- int8 with one scale per tensor ----------------------------------------------------------

_INT8_KEYS = frozenset({"shape", "scale", "data"})


class Int8Codec:
    """Symmetric linear quantisation, q = round(x / s) in [-127, 127], s = max|x| / 127.

    A quarter of float32's bytes; the error per entry is at most s / 2, i.e. 0.4% of the
    tensor's largest magnitude, which is why one outlier coordinate costs precision for the
    whole tensor (acceptable for adapters, whose entries are of similar size).
    """

    name = "int8"

    def encode(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        out = {}
        for name, tensor in tensors.items():
            x = tensor.detach().to(torch.float32).cpu()
            peak = float(x.abs().max()) if x.numel() else 0.0
            scale = peak / INT8_LEVELS if peak > 0 else 0.0
            if not math.isfinite(scale):
                raise WireError(f"tensor {name!r} is not finite")
            q = (
                torch.round(x / scale).clamp_(-INT8_LEVELS, INT8_LEVELS)
                if scale > 0
                else torch.zeros_like(x)
            )
            data = q.to(torch.int8).contiguous().numpy().tobytes()
            out[name] = {"shape": list(x.shape), "scale": float(scale), "data": data}
        return out

    def decode(
        self, encoded: object, *, expected: Mapping[str, TensorSpec]
    ) -> dict[str, torch.Tensor]:
        recs = _records(encoded, expected)
        for name, (_dtype, shape) in expected.items():
            rec = _record(recs[name], name=name, keys=_INT8_KEYS)
            _checked_shape(rec, name=name, want=shape)
            scale = rec["scale"]
            if type(scale) is not float or not math.isfinite(scale) or scale < 0:
                raise NonFiniteTensor(f"tensor {name!r}: scale must be a finite float >= 0")
            _bytes_field(rec, "data", name=name, length=math.prod(shape))
        out = {}
        for name, (dtype, shape) in expected.items():
            rec = recs.pop(name)
            q = np.frombuffer(rec["data"], dtype="i1")
            if q.size and int(q.min()) < -INT8_LEVELS:
                raise PayloadSchemaError(f"tensor {name!r}: int8 level -128 is not used")
            with np.errstate(over="ignore"):  # overflow becomes Inf, refused just below
                x = torch.from_numpy(q.astype(np.float32) * np.float32(rec["scale"]))
            x = x.reshape(shape)
            out[name] = x.to(DTYPES[dtype].torch_dtype)
            check_finite(name, out[name])  # a huge scale can overflow the receiver's dtype
        return out


# --- sparse top-k ----------------------------------------------------------------------------

_TOPK_KEYS = frozenset({"shape", "indices", "values"})


def topk_sparsify(tensor: torch.Tensor, *, fraction: float) -> torch.Tensor:
    """A dense tensor keeping only the ceil(fraction * n) largest-magnitude entries (ties
    broken by torch.topk); everything else is exactly zero."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError("fraction must be in (0, 1]")
    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    k = min(n, math.ceil(fraction * n))
    out = torch.zeros_like(flat)
    if k:
        idx = torch.topk(flat.abs(), k, sorted=False).indices
        out[idx] = flat[idx]
    return out.reshape(tensor.shape)


class TopKCodec:
    """The nonzero entries of each tensor as strictly increasing int32 indices into the
    flattened tensor plus float32 values; 8 bytes per kept entry instead of 4 per entry.

    The codec sends whatever is nonzero, so the sparsity is the caller's (topk_sparsify);
    a dense tensor is valid input and costs twice its raw size.
    """

    name = "topk"

    def encode(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        out = {}
        for name, tensor in tensors.items():
            flat = tensor.detach().to(torch.float32).cpu().reshape(-1)
            if flat.numel() > 2**31 - 1:
                raise WireError(f"tensor {name!r} is too large for int32 indices")
            idx = torch.nonzero(flat, as_tuple=False).reshape(-1)
            out[name] = {
                "shape": list(tensor.shape),
                "indices": idx.to(torch.int32).numpy().astype(INDEX_DTYPE).tobytes(),
                "values": flat[idx].numpy().astype(VALUE_DTYPE).tobytes(),
            }
        return out

    def decode(
        self, encoded: object, *, expected: Mapping[str, TensorSpec]
    ) -> dict[str, torch.Tensor]:
        recs = _records(encoded, expected)
        for name, (_dtype, shape) in expected.items():
            rec = _record(recs[name], name=name, keys=_TOPK_KEYS)
            _checked_shape(rec, name=name, want=shape)
            indices, values = rec["indices"], rec["values"]
            if not isinstance(indices, bytes) or not isinstance(values, bytes):
                raise PayloadSchemaError(f"tensor {name!r}: indices and values must be bytes")
            if len(indices) % 4 or len(indices) != len(values):
                raise ShapeMismatch(f"tensor {name!r}: indices and values lengths disagree")
            if len(indices) // 4 > math.prod(shape):
                raise ShapeMismatch(f"tensor {name!r}: more entries than the tensor holds")
        out = {}
        for name, (dtype, shape) in expected.items():
            rec = recs.pop(name)
            n = math.prod(shape)
            idx = np.frombuffer(rec["indices"], dtype=INDEX_DTYPE).astype(np.int64)
            val = np.frombuffer(rec["values"], dtype=VALUE_DTYPE)
            if idx.size:
                if int(idx[0]) < 0 or int(idx[-1]) >= n:
                    raise ShapeMismatch(f"tensor {name!r}: index out of range [0, {n})")
                if idx.size > 1 and not bool(np.all(np.diff(idx) > 0)):
                    raise PayloadSchemaError(
                        f"tensor {name!r}: indices must be strictly increasing (no duplicates)"
                    )
                if not bool(np.isfinite(val).all()):
                    raise NonFiniteTensor(f"tensor {name!r} contains NaN or Inf")
            dense = torch.zeros(n, dtype=torch.float32)
            dense[torch.from_numpy(idx)] = torch.from_numpy(val.astype(np.float32))
            out[name] = dense.reshape(shape).to(DTYPES[dtype].torch_dtype)
            check_finite(name, out[name])
        return out


_CODECS = (HalfCodec("fp16", "float16"), HalfCodec("bf16", "bfloat16"), Int8Codec(), TopKCodec())
CODEC_NAMES: tuple[str, ...] = ("raw", *(c.name for c in _CODECS))
for _codec in _CODECS:
    register_codec(_codec)
