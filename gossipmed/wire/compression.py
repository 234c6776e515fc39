"""How a site's state becomes the tensors of an update, and how updates become states again.

Sending side (`UpdateEncoder`, one per site, chosen in `[gossip] codec`):
    raw | fp16 | bf16 | int8   the dense state in that wire codec (stateless)
    topk                        sparse deltas with error feedback (gossipmed.wire.error_feedback):
                                a dense keyframe first and every `refresh_every` rounds, the
                                top `fraction` of what changed in between

Receiving side (`ReplicaDecoder`, every site): whatever codec a neighbour chose, its update
becomes that neighbour's full state. A dense update is the state; a `topk` delta is added to
the replica of the sender, which must have seen every exchange before it. The codec arrives
with the update (it is part of the signed header), so a receiver never guesses, and sites
with different codecs can be neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

import gossipmed.wire.codecs  # noqa: F401  (registers the fp16/bf16/int8/topk codecs by name)
from gossipmed.choice import Spec, require_number
from gossipmed.errors import ConfigError
from gossipmed.learn.learner import AdapterState
from gossipmed.registry import Registry
from gossipmed.wire.error_feedback import SPARSE_CODEC, DeltaOutOfSync, ErrorFeedback
from gossipmed.wire.tensors import WireError
from gossipmed.wire.update import Update, next_exchange


class UpdateEncoder(Protocol):
    def encode(
        self, state: Mapping[str, torch.Tensor], *, round: int, step: int
    ) -> tuple[Mapping[str, torch.Tensor], str]:
        """(tensors to seal, codec name) for this exchange's state."""
        ...

    def force_keyframes(self, count: int = 1) -> bool:
        """Make the next `count` updates dense (neighbours' copies of us may be out of
        step); False when the encoder keeps no reference to fall out of step with."""
        ...

    def state_dict(self) -> dict[str, Any] | None:
        """What must survive a restart (None: nothing)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any], *, schema: Mapping[str, Any]) -> None: ...


class DenseEncoder:
    """The state itself, in a dense wire codec."""

    def __init__(self, codec: str) -> None:
        if codec == SPARSE_CODEC:
            raise ConfigError("topk is not a dense codec")
        self.codec = codec

    def encode(
        self, state: Mapping[str, torch.Tensor], *, round: int, step: int
    ) -> tuple[Mapping[str, torch.Tensor], str]:
        return state, self.codec

    def force_keyframes(self, count: int = 1) -> bool:
        return False

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: Mapping[str, Any], *, schema: Mapping[str, Any]) -> None:
        raise WireError(f"the {self.codec} codec keeps no state to restore")


class TopkEncoder:
    """Top-k deltas with error feedback; keyframes on the first send, every `refresh_every`
    rounds (their first exchange), and as many as `force_keyframes` asked for."""

    def __init__(self, *, fraction: float, refresh_every: int = 0, dense_codec: str = "raw"):
        if refresh_every < 0:
            raise ConfigError("refresh_every must be >= 0 (0: keyframe on the first send only)")
        if dense_codec == SPARSE_CODEC:
            raise ConfigError("keyframes need a dense codec")
        self.feedback = ErrorFeedback(fraction=fraction)
        self.refresh_every = refresh_every
        self.dense_codec = dense_codec
        self.last_codec: str | None = None
        self.keyframes_due = 0

    def is_keyframe(self, round: int, step: int) -> bool:
        if not self.feedback.started or self.keyframes_due:
            return True
        return self.refresh_every > 0 and step == 0 and round % self.refresh_every == 0

    def encode(
        self, state: Mapping[str, torch.Tensor], *, round: int, step: int
    ) -> tuple[Mapping[str, torch.Tensor], str]:
        if self.is_keyframe(round, step):
            self.keyframes_due = max(0, self.keyframes_due - 1)
            self.feedback.keyframe(state)
            self.last_codec = self.dense_codec
            return state, self.dense_codec
        self.last_codec = SPARSE_CODEC
        return self.feedback.compress(state), SPARSE_CODEC

    def force_keyframes(self, count: int = 1) -> bool:
        self.keyframes_due = max(self.keyframes_due, count)
        return True

    def state_dict(self) -> dict[str, Any] | None:
        return self.feedback.to_dict()

    def load_state_dict(self, state: Mapping[str, Any], *, schema: Mapping[str, Any]) -> None:
        """A restored residual takes the configured fraction (the residual itself does not
        depend on it)."""
        restored = ErrorFeedback.from_dict(state, expected=schema)
        restored.fraction = self.feedback.fraction
        self.feedback = restored


def _float32(state: Mapping[str, torch.Tensor]) -> AdapterState:
    return {k: v.detach().to(torch.float32).clone() for k, v in state.items()}


class ReplicaDecoder:
    """Every neighbour's latest full state as this site knows it; turns deltas into states."""

    def __init__(self, *, steps_per_round: int) -> None:
        self.steps_per_round = steps_per_round
        self.replicas: dict[str, AdapterState] = {}
        self._at: dict[str, tuple[int, int]] = {}

    def decode(self, update: Update) -> dict[str, torch.Tensor]:
        sender, exchange = update.sender, update.exchange
        if update.codec != SPARSE_CODEC:
            self.replicas[sender] = _float32(update.tensors)
            self._at[sender] = exchange
            return update.tensors
        last = self._at.get(sender)
        expected = (
            None if last is None else next_exchange(*last, steps_per_round=self.steps_per_round)
        )
        if sender not in self.replicas or exchange != expected:
            self.replicas.pop(sender, None)
            self._at.pop(sender, None)
            where = "none" if last is None else f"{last[0]}.{last[1]}"
            raise DeltaOutOfSync(
                f"delta from {sender!r} for exchange {exchange[0]}.{exchange[1]} but the "
                f"replica is at {where}; waiting for its next keyframe"
            )
        replica = self.replicas[sender]
        for name, delta in update.tensors.items():
            replica[name].add_(delta.to(torch.float32))
        self._at[sender] = exchange
        return {k: v.to(update.tensors[k].dtype).clone() for k, v in replica.items()}


# --- the registry of choices for `[gossip] codec` ----------------------------------------------


@dataclass(frozen=True)
class TopkParams:
    fraction: float = 0.01
    """Share of entries sent each exchange (the largest changes; the rest carried by error
    feedback)."""
    refresh_every: int = 0
    """Send the full state every this many exchanges; 0: only the first send is full."""

    def __post_init__(self) -> None:
        require_number(self.fraction, what="fraction", lo=1e-9, hi=1.0)
        if not math.isfinite(self.fraction):
            raise ConfigError("fraction must be finite")
        if type(self.refresh_every) is not int or self.refresh_every < 0:
            raise ConfigError("refresh_every must be an integer >= 0 (0: first send only)")


def _dense(codec: str) -> Any:
    return lambda _params: DenseEncoder(codec)


ENCODERS: Registry[Spec[UpdateEncoder]] = Registry("codec")
for _name, _summary in (
    ("raw", "the state as it is (float32): exact"),
    ("fp16", "half precision: half the bytes"),
    ("bf16", "bfloat16: half the bytes, float32's range"),
    ("int8", "8-bit with a per-tensor scale: a quarter of the bytes"),
):
    ENCODERS.register(_name, Spec(name=_name, build=_dense(_name), summary=_summary))
ENCODERS.register(
    SPARSE_CODEC,
    Spec(
        name=SPARSE_CODEC,
        build=lambda p: TopkEncoder(fraction=p.fraction, refresh_every=p.refresh_every),
        params=TopkParams,
        summary="sparse deltas of the top `fraction` entries with error feedback",
    ),
)
