"""Top-k compressed gossip with error feedback: send sparse changes, never lose the rest.

Gossip exchanges whole adapter states, and a sparsified state is useless (most entries would
read as zero). So a site sends the top-k entries of how far its state has moved from what its
neighbours already hold (`reference`), and each neighbour adds that to its replica of the
sender. What was not sent stays in the residual `state - reference` and competes again next
round (error feedback), so every change eventually arrives; nothing is silently dropped.

    sender   delta = state - last_sent + residual;  c = topk(delta);  residual = delta - c
    receiver replica[sender] += c                     (so replica == state - residual)

Replicas must see every delta in order. The receiver checks that exchanges from one sender
are consecutive and drops a replica that missed one (a lost message or an offline round);
the sender's next keyframe (a dense state, every `refresh_every` rounds and on its first
send) rebuilds it. Until then that neighbour's deltas are rejected like any invalid update,
which the gossip round treats as a silent neighbour. Static topologies suit this codec; with
faults or time-varying graphs set `refresh_every`. The sending and receiving sides are
gossipmed.wire.compression.TopkEncoder and ReplicaDecoder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack
import torch

from gossipmed.errors import WireError
from gossipmed.learn.learner import AdapterState
from gossipmed.wire.codecs import topk_sparsify
from gossipmed.wire.tensors import (
    TensorSpec,
    normalise_schema,
    parse_shape,
    tensor_from_bytes,
    tensor_to_bytes,
    unpack_bounded,
)

EF_VERSION = 1
SPARSE_CODEC = "topk"
MAX_STATE_BYTES = 1 << 30


class DeltaOutOfSync(WireError):
    """A sparse delta arrived for a sender whose replica is missing or missed a round."""


def _float32(state: Mapping[str, torch.Tensor]) -> AdapterState:
    return {k: v.detach().to(torch.float32).clone() for k, v in state.items()}


class ErrorFeedback:
    """One site's sender-side memory: the state last sent and the residual not yet sent."""

    def __init__(self, *, fraction: float) -> None:
        if not 0.0 < fraction <= 1.0 or not math.isfinite(fraction):
            raise ValueError("top-k fraction must be in (0, 1]")
        self.fraction = fraction
        self.last: AdapterState | None = None
        self.residual: AdapterState = {}

    @property
    def started(self) -> bool:
        return self.last is not None

    def keyframe(self, state: Mapping[str, torch.Tensor]) -> None:
        """The whole state was sent densely: neighbours hold it exactly, nothing is owed."""
        self.last = _float32(state)
        self.residual = {k: torch.zeros_like(v) for k, v in self.last.items()}

    def compress(self, state: Mapping[str, torch.Tensor]) -> AdapterState:
        """The sparse float32 change to send this round; the rest goes into the residual."""
        if self.last is None:
            raise WireError("error feedback has no reference yet: send a keyframe first")
        if set(state) != set(self.last):
            raise WireError("state tensors differ from the error-feedback reference")
        sent: AdapterState = {}
        for name, tensor in state.items():
            current = tensor.detach().to(torch.float32)
            delta = current - self.last[name] + self.residual[name]
            sparse = topk_sparsify(delta, fraction=self.fraction)
            self.residual[name] = delta - sparse
            self.last[name] = current.clone()
            sent[name] = sparse
        return sent

    def residual_norm(self) -> float:
        return math.sqrt(sum(float(r.double().pow(2).sum()) for r in self.residual.values()))

    # -- checkpoints: msgpack maps, tensors as dtype/shape/bytes, never pickle ---------------

    def to_dict(self) -> dict[str, Any]:
        def pack(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
            out = {}
            for name, t in state.items():
                dtype, shape, data = tensor_to_bytes(t)
                out[name] = {"dtype": dtype, "shape": shape, "data": data}
            return out

        return {
            "v": EF_VERSION,
            "fraction": self.fraction,
            "last": None if self.last is None else pack(self.last),
            "residual": pack(self.residual),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, expected: Mapping[str, tuple[Any, Any]]
    ) -> ErrorFeedback:
        """Rebuild from `to_dict`, checking every tensor against the site's adapter schema."""
        if not isinstance(data, Mapping) or set(data) != {"v", "fraction", "last", "residual"}:
            raise WireError("error-feedback state must be a map of v, fraction, last, residual")
        if data["v"] != EF_VERSION or type(data["v"]) is not int:
            raise WireError(f"unsupported error-feedback version {str(data['v'])[:20]}")
        fraction = data["fraction"]
        if type(fraction) is not float:
            raise WireError("error-feedback fraction must be a float")
        try:
            ef = cls(fraction=fraction)
        except ValueError as exc:
            raise WireError(str(exc)) from None
        schema = {k: ("float32", shape) for k, (_d, shape) in normalise_schema(expected).items()}
        if data["last"] is None:
            if data["residual"]:
                raise WireError("error-feedback residual without a reference")
            return ef
        ef.last = _unpack_state(data["last"], schema)
        ef.residual = _unpack_state(data["residual"], schema)
        return ef

    def to_bytes(self) -> bytes:
        return bytes(msgpack.packb(self.to_dict(), use_bin_type=True))

    @classmethod
    def from_bytes(cls, raw: bytes, *, expected: Mapping[str, tuple[Any, Any]]) -> ErrorFeedback:
        obj = unpack_bounded(
            raw,
            max_bin=MAX_STATE_BYTES,
            max_str=256,
            max_array=8,
            max_map=4096,
            max_items=8 * 4096 + 16,
            what="error-feedback state",
        )
        return cls.from_dict(obj, expected=expected)


def _unpack_state(obj: object, schema: Mapping[str, TensorSpec]) -> AdapterState:
    if not isinstance(obj, dict) or set(obj) != set(schema):
        raise WireError("error-feedback tensors differ from the adapter schema")
    out: AdapterState = {}
    for name, (dtype, shape) in schema.items():
        rec = obj[name]
        if not isinstance(rec, dict) or set(rec) != {"dtype", "shape", "data"}:
            raise WireError(f"error-feedback tensor {name!r} must be a map of dtype, shape, data")
        if rec["dtype"] != dtype or parse_shape(rec["shape"], name=name) != shape:
            raise WireError(f"error-feedback tensor {name!r} has the wrong dtype or shape")
        if not isinstance(rec["data"], bytes):
            raise WireError(f"error-feedback tensor {name!r}: data must be bytes")
        out[name] = tensor_from_bytes(rec["data"], dtype=dtype, shape=shape)
        if not bool(torch.isfinite(out[name]).all()):
            raise WireError(f"error-feedback tensor {name!r} is not finite")
    return out


__all__ = ["DeltaOutOfSync", "ErrorFeedback"]
