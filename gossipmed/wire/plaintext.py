"""The plaintext encoding of an update: msgpack, no signature, no encryption.

Only for simulations that ask for `sealing = "plaintext"`: it runs the same codecs and the
same schema and size checks as the envelope, so an experiment measures the same bytes and
decoding, but it proves nothing about who sent them. The daemon never uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import torch

import gossipmed.wire.codecs  # noqa: F401  (registers the fp16/bf16/int8/topk codecs by name)
from gossipmed.errors import WireError
from gossipmed.wire.tensors import (
    MAX_DIMS,
    MAX_NAME_LEN,
    MAX_TENSORS,
    UnsupportedVersion,
    WrongRecipient,
    get_codec,
    normalise_schema,
    require_int,
    require_map,
    unpack_bounded,
)
from gossipmed.wire.update import Admit, SealOne, Update, check_exchange

PLAINTEXT_VERSION = 2
_KEYS = frozenset({"v", "sender", "recipient", "round", "step", "codec", "epsilon", "tensors"})


class PlaintextSealer(SealOne):
    def __init__(self, *, identity: str, max_bytes: int = 1 << 30) -> None:
        self.name = identity
        self.max_bytes = max_bytes

    def state_dict(self) -> dict[str, Any] | None:
        return None  # no replay protection: nothing to keep

    def load_state_dict(self, state: Mapping[str, Any], *, schema: Any = None) -> None:
        raise WireError("plaintext sealing keeps no state to restore")

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
        check_exchange(round, step)
        tensors = get_codec(codec).encode(update_tensors)
        out = {}
        for recipient in recipients:
            body = {
                "v": PLAINTEXT_VERSION,
                "sender": self.name,
                "recipient": recipient,
                "round": round,
                "step": step,
                "codec": codec,
                "epsilon": float(epsilon),
                "tensors": tensors,
            }
            out[recipient] = bytes(msgpack.packb(body, use_bin_type=True))
        return out

    def open(
        self,
        data: bytes,
        *,
        expected_schema: Mapping[str, tuple[Any, Any]],
        admit: Admit | None = None,
    ) -> Update:
        if len(data) > self.max_bytes:
            raise WireError(f"message of {len(data)} bytes exceeds the {self.max_bytes} limit")
        body = unpack_bounded(
            bytes(data),
            max_bin=self.max_bytes,
            max_str=max(MAX_NAME_LEN, 128),
            max_array=MAX_DIMS,
            max_map=MAX_TENSORS,
            max_items=4 * MAX_TENSORS + 32,
            what="plaintext update",
        )
        if not isinstance(body, dict) or body.get("v") != PLAINTEXT_VERSION:
            raise UnsupportedVersion("unknown plaintext update version")
        body = require_map(body, keys=_KEYS, what="plaintext update")
        sender, recipient, codec = body["sender"], body["recipient"], body["codec"]
        if not all(isinstance(x, str) for x in (sender, recipient, codec)):
            raise WireError("sender, recipient and codec must be strings")
        if recipient != self.name:
            raise WrongRecipient(f"update addressed to {recipient[:64]!r}, not {self.name!r}")
        round_ = require_int(body["round"], what="round")
        step = require_int(body["step"], what="step")
        check_exchange(round_, step)
        epsilon = body["epsilon"]
        if type(epsilon) is not float or not epsilon >= 0:
            raise WireError("epsilon must be a non-negative float")
        tensors = get_codec(codec).decode(
            body["tensors"], expected=normalise_schema(expected_schema)
        )
        update = Update(
            sender=sender,
            recipient=recipient,
            round=round_,
            step=step,
            codec=codec,
            tensors=tensors,
            epsilon=epsilon,
        )
        if admit is not None:
            admit(update)
        return update
