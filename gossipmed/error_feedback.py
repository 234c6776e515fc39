"""Top-k compressed gossip with error feedback: send sparse changes, never lose the rest.

Gossip exchanges whole adapter states, and a sparsified state is useless (most entries would
read as zero). So a site sends the top-k entries of how far its state has moved from what its
neighbours already hold (`reference`), and each neighbour adds that to its replica of the
sender. What was not sent stays in the residual `state - reference` and competes again next
round (error feedback), so every change eventually arrives; nothing is silently dropped.

    sender   delta = state - last_sent + residual;  c = topk(delta);  residual = delta - c
    receiver replica[sender] += c                     (so replica == state - residual)

Replicas must see every delta in order. The receiver checks that rounds from one sender are
consecutive and drops a replica that missed one (a lost message or an offline round); the
sender's next keyframe (a dense state, every `refresh_every` rounds and on its first send)
rebuilds it. Until then that neighbour's deltas are rejected like any invalid update, which
the gossip round treats as a silent neighbour. Static topologies suit this codec; with faults
or time-varying graphs set `refresh_every`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import torch

from gossipmed.checkpoint import atomic_write_bytes
from gossipmed.codecs import topk_sparsify
from gossipmed.errors import CheckpointError, WireError
from gossipmed.learner import AdapterState
from gossipmed.wire import (
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


FEEDBACK_FILE = "error_feedback.msgpack"


def save_feedback(directory: Path, feedback: ErrorFeedback) -> None:
    """Checkpoint the sender's residual next to the adapter (atomic, msgpack, no pickle)."""
    atomic_write_bytes(directory / FEEDBACK_FILE, feedback.to_bytes(), mode=0o600)


def load_feedback(
    directory: Path, *, expected: Mapping[str, tuple[Any, Any]]
) -> ErrorFeedback | None:
    """The checkpointed residual, or None when there is none (the next send is then a
    keyframe, which owes nothing, so losing the residual loses no update)."""
    path = directory / FEEDBACK_FILE
    if not path.is_file():
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from exc
    return ErrorFeedback.from_bytes(raw, expected=expected)


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


class CompressedSealer:
    """Wraps an envelope sealer: top-k deltas with error feedback out, replicas in.

    The inner sealer must carry the codec in the (signed) envelope header and expose it as a
    writable `codec` attribute and the header bytes to `header_codec` (EnvelopeSealer does);
    the codec tells a receiver whether the payload is a dense keyframe or a sparse delta.
    `feedback` resumes a checkpointed residual (load_feedback); receivers' replicas are not
    checkpointed: after a restart each neighbour's deltas are refused until its keyframe.
    """

    def __init__(
        self,
        inner: Any,
        *,
        fraction: float,
        refresh_every: int = 0,
        exchanges_per_round: int = 1,
        dense_codec: str = "raw",
        feedback: ErrorFeedback | None = None,
    ) -> None:
        if not hasattr(inner, "codec"):
            raise WireError("top-k gossip needs a sealer that carries the codec (envelope)")
        if refresh_every < 0:
            raise ValueError("refresh_every must be >= 0 (0: keyframe on the first send only)")
        if exchanges_per_round < 1:
            raise ValueError("exchanges_per_round must be >= 1")
        if dense_codec == SPARSE_CODEC:
            raise ValueError("keyframes need a dense codec")
        self.inner = inner
        self.feedback = feedback if feedback is not None else ErrorFeedback(fraction=fraction)
        self.refresh_every = refresh_every
        self.exchanges_per_round = exchanges_per_round
        self.dense_codec = dense_codec
        self.replicas: dict[str, AdapterState] = {}
        self._replica_round: dict[str, int] = {}

    def is_keyframe(self, round: int) -> bool:
        """`round` is the wire round, the exchange index with several exchanges per round
        (node.peer): refresh_every counts training rounds, keyframing their first exchange."""
        if not self.feedback.started:
            return True
        r, step = divmod(round, self.exchanges_per_round)
        return self.refresh_every > 0 and step == 0 and r % self.refresh_every == 0

    def seal_many(
        self,
        *,
        update_tensors: Mapping[str, torch.Tensor],
        round: int,
        recipients: Sequence[str],
        n_examples: int,
        epsilon: float,
    ) -> dict[str, bytes]:
        if self.is_keyframe(round):
            self.inner.codec = self.dense_codec
            tensors: Mapping[str, torch.Tensor] = update_tensors
            self.feedback.keyframe(update_tensors)
        else:
            self.inner.codec = SPARSE_CODEC
            tensors = self.feedback.compress(update_tensors)
        out: dict[str, bytes] = self.inner.seal_many(
            update_tensors=tensors,
            round=round,
            recipients=recipients,
            n_examples=n_examples,
            epsilon=epsilon,
        )
        return out

    def seal(
        self,
        *,
        update_tensors: Mapping[str, torch.Tensor],
        round: int,
        recipient: str,
        n_examples: int,
        epsilon: float,
    ) -> bytes:
        return self.seal_many(
            update_tensors=update_tensors,
            round=round,
            recipients=[recipient],
            n_examples=n_examples,
            epsilon=epsilon,
        )[recipient]

    def open(self, data: bytes, *, expected_schema: Mapping[str, tuple[Any, Any]]) -> Any:
        update = self.inner.open(data, expected_schema=expected_schema)
        codec = header_codec(data)  # authenticated: inner.open verified these header bytes
        sender, rnd = update.sender, update.round
        if codec != SPARSE_CODEC:
            self.replicas[sender] = _float32(update.tensors)
        else:
            last = self._replica_round.get(sender)
            if sender not in self.replicas or last is None or rnd != last + 1:
                self.replicas.pop(sender, None)
                raise DeltaOutOfSync(
                    f"delta from {sender!r} for round {rnd} but the replica is at "
                    f"{'none' if last is None else last}; waiting for its next keyframe"
                )
            replica = self.replicas[sender]
            for name, delta in update.tensors.items():
                replica[name].add_(delta.to(torch.float32))
        self._replica_round[sender] = rnd
        dtypes = {k: v.dtype for k, v in update.tensors.items()}
        full = {k: v.to(dtypes[k]).clone() for k, v in self.replicas[sender].items()}
        return dataclasses.replace(update, tensors=full)


def header_codec(data: bytes) -> str:
    """The codec named in an envelope's header (call only after the envelope verified)."""
    outer = unpack_bounded(
        bytes(data),
        max_bin=len(data),
        max_str=8,
        max_array=0,
        max_map=3,
        max_items=8,
        what="envelope",
    )
    header = unpack_bounded(
        outer["h"], max_bin=64, max_str=128, max_array=0, max_map=8, max_items=16, what="header"
    )
    codec = header["codec"]
    if not isinstance(codec, str):
        raise WireError("header codec must be a string")
    return codec


__all__ = [
    "CompressedSealer",
    "DeltaOutOfSync",
    "ErrorFeedback",
    "header_codec",
    "load_feedback",
    "save_feedback",
]
