"""The one update type that sites exchange, and the sealing interface both encodings share.

An update is one site's adapter state for one exchange `(round, step)` of a gossip round,
in the codec its sender chose. Two encodings exist: the signed and encrypted envelope
(gossipmed.wire.envelope, what the daemon and the default simulator use) and an unauthenticated
plaintext map (gossipmed.wire.plaintext, for fast experiments). Both carry the same fields, so
the peer never needs to know which one it talks through.

Round numbers are bounded (`MAX_ROUND`): a signed envelope from a member may still carry a
hostile round, and nothing downstream (replay guard, catch-up, exchange arithmetic) should
have to reason about numbers near 2**63.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from gossipmed.errors import WireError
from gossipmed.wire.round_limits import MAX_ROUND, MAX_STEPS_PER_ROUND

Schema = Mapping[str, tuple[Any, Any]]
"""Tensor name -> (dtype, shape): what a neighbour's update must look like, exactly."""


@dataclass(frozen=True)
class Update:
    """An opened update: authenticated (envelope) or merely parsed (plaintext), decoded with
    the receiver's own schema. `tensors` are exactly what the codec carried: a dense state,
    or a sparse delta for the `topk` codec (gossipmed.wire.compression rebuilds the state)."""

    sender: str
    recipient: str
    round: int
    step: int
    codec: str
    tensors: dict[str, torch.Tensor]
    epsilon: float
    sent_at: float = 0.0

    @property
    def exchange(self) -> tuple[int, int]:
        return (self.round, self.step)


Admit = Callable[[Update], None]
"""Called by `Sealer.open` once an update is fully verified and decoded, before the sealer
records it as seen (replay state). Raising refuses the update and leaves that state alone."""


class Sealer(Protocol):
    """Turns a state into bytes for each recipient and bytes back into an `Update`."""

    name: str

    def seal_many(
        self,
        *,
        update_tensors: Mapping[str, torch.Tensor],
        round: int,
        step: int,
        recipients: Sequence[str],
        epsilon: float,
        codec: str = "raw",
    ) -> dict[str, bytes]:
        """Encode once, then one message per recipient."""
        ...

    def seal(
        self,
        *,
        update_tensors: Mapping[str, torch.Tensor],
        round: int,
        recipient: str,
        epsilon: float,
        step: int = 0,
        codec: str = "raw",
    ) -> bytes: ...

    def open(self, data: bytes, *, expected_schema: Schema, admit: Admit | None = None) -> Update:
        """Verify, then decode; raises a GossipmedError subclass on anything wrong."""
        ...

    def state_dict(self) -> dict[str, Any] | None:
        """Replay state that must survive a restart (None: the encoding keeps none)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any], *, schema: Schema) -> None: ...


class SealOne:
    """`seal` for one recipient, in terms of the sealer's own `seal_many`."""

    def seal_many(
        self,
        *,
        update_tensors: Mapping[str, torch.Tensor],
        round: int,
        step: int,
        recipients: Sequence[str],
        epsilon: float,
        codec: str = "raw",
    ) -> dict[str, bytes]:
        raise NotImplementedError

    def seal(
        self,
        *,
        update_tensors: Mapping[str, torch.Tensor],
        round: int,
        recipient: str,
        epsilon: float,
        step: int = 0,
        codec: str = "raw",
    ) -> bytes:
        return self.seal_many(
            update_tensors=update_tensors,
            round=round,
            step=step,
            recipients=[recipient],
            epsilon=epsilon,
            codec=codec,
        )[recipient]


def check_exchange(round: int, step: int) -> None:
    """Refuse an exchange index outside the protocol's bounds (also on the sending side)."""
    if type(round) is not int or not 0 <= round <= MAX_ROUND:
        raise WireError(f"round must be an integer in [0, {MAX_ROUND}]")
    if type(step) is not int or not 0 <= step < MAX_STEPS_PER_ROUND:
        raise WireError(f"step must be an integer in [0, {MAX_STEPS_PER_ROUND})")


def next_exchange(round: int, step: int, *, steps_per_round: int) -> tuple[int, int]:
    """The exchange that follows `(round, step)` when a round has `steps_per_round` steps."""
    return (round, step + 1) if step + 1 < steps_per_round else (round + 1, 0)
