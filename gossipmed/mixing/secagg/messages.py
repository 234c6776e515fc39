"""The nine protocol messages and their wire format.

Each is a msgpack map {"v": 1, "kind": ..., "inst": instance, ...fields}. Parsing is bounded
by `MessageLimits`, which follow from the public instance parameters: the total length is
checked before msgpack runs, every container is capped at the neighbourhood size, every key,
signature, share and ciphertext must have its exact length, and a masked vector must be
exactly as long as the schema says (its length is never taken from the message).

Client -> receiver: AdvertiseKeys, SharedKeys, MaskedInput, ListSignature, UnmaskShares.
Receiver -> client: KeyRoster, ForwardedShares, SurvivorList, SignedSurvivors.
The transport (signed, encrypted, replay-guarded envelopes between graph neighbours) wraps
these bytes; relayed content that the receiver must not forge carries its own signature or
end-to-end authenticated encryption.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import msgpack

from gossipmed.errors import ConfigError, WireError
from gossipmed.mixing.secagg.errors import MalformedMessage
from gossipmed.mixing.secagg.params import MAX_NAME_LEN, InstanceConfig, InstanceId, valid_name
from gossipmed.mixing.secagg.primitives import KEY_BYTES, NONCE_BYTES, SIG_BYTES, TAG_BYTES
from gossipmed.mixing.secagg.shamir import SHARE_BYTES, share_from_bytes
from gossipmed.wire.tensors import require_int, require_map, unpack_bounded

VERSION = 1
COMMIT_BYTES = 32
PLAINTEXT_BYTES = 2 * SHARE_BYTES
CIPHERTEXT_BYTES = NONCE_BYTES + PLAINTEXT_BYTES + TAG_BYTES
_HEAD = frozenset({"v", "kind", "inst"})
_INST = frozenset({"roster", "receiver", "round", "step"})
_ENTRY = frozenset({"sender", "c_pk", "s_pk", "sig"})


@dataclass(frozen=True)
class MessageLimits:
    """Hard limits for parsing, from the public parameters of the exchanges a site runs."""

    max_contributors: int
    masked_bytes: int

    @classmethod
    def of(cls, config: InstanceConfig) -> MessageLimits:
        return cls(max_contributors=len(config.contributors), masked_bytes=config.masked_bytes)

    @property
    def max_bytes(self) -> int:
        per_party = 2 * SHARE_BYTES + CIPHERTEXT_BYTES + 2 * MAX_NAME_LEN + 64
        return self.masked_bytes + 1024 + self.max_contributors * per_party


# --- field parsers -------------------------------------------------------------------------


def _bin(value: object, size: int, *, what: str) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise MalformedMessage(f"{what} must be {size} bytes")
    return value


def _name(value: object, *, what: str) -> str:
    if not valid_name(value):
        raise MalformedMessage(f"{what} is not a valid site name")
    return str(value)


def _names(value: object, limits: MessageLimits, *, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > limits.max_contributors:
        raise MalformedMessage(f"{what} must be a list of at most {limits.max_contributors}")
    names = tuple(_name(v, what=what) for v in value)
    if list(names) != sorted(set(names)):
        raise MalformedMessage(f"{what} must be sorted and without repeats")
    return names


def _bin_map(value: object, size: int, limits: MessageLimits, *, what: str) -> dict[str, bytes]:
    if not isinstance(value, dict) or len(value) > limits.max_contributors:
        raise MalformedMessage(f"{what} must be a map of at most {limits.max_contributors}")
    return {_name(k, what=f"{what} key"): _bin(v, size, what=what) for k, v in value.items()}


def _instance(value: object) -> InstanceId:
    fields = require_map(value, keys=_INST, what="instance")
    try:
        return InstanceId(
            roster_hash=_bin(fields["roster"], 32, what="roster hash"),
            receiver=_name(fields["receiver"], what="receiver"),
            round=require_int(fields["round"], what="round"),
            step=require_int(fields["step"], what="step", hi=2**32 - 1),
        )
    except ConfigError as exc:
        raise MalformedMessage(f"bad instance id: {exc}") from exc


# --- messages ------------------------------------------------------------------------------


class _Message:
    KIND: ClassVar[str]
    FIELDS: ClassVar[frozenset[str]]
    instance: InstanceId

    def _fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        body = {"v": VERSION, "kind": self.KIND, "inst": self.instance.to_wire()}
        body.update(self._fields())
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed

    @classmethod
    def from_bytes(cls: type[_M], data: bytes, *, limits: MessageLimits) -> _M:
        message = decode_message(data, limits=limits)
        if not isinstance(message, cls):
            raise MalformedMessage(f"expected a {cls.KIND} message, got {message.KIND}")
        return message


_M = TypeVar("_M", bound=_Message)


@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """Phase 0, client -> receiver: two fresh X25519 keys, signed with the identity key."""

    KIND: ClassVar[str] = "advertise"
    FIELDS: ClassVar[frozenset[str]] = _ENTRY
    instance: InstanceId
    sender: str
    c_pk: bytes
    s_pk: bytes
    signature: bytes

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "c_pk": self.c_pk, "s_pk": self.s_pk, "sig": self.signature}

    @classmethod
    def _parse(cls, inst: InstanceId, m: dict[str, Any], lim: MessageLimits) -> AdvertiseKeys:
        return cls(
            instance=inst,
            sender=_name(m["sender"], what="sender"),
            c_pk=_bin(m["c_pk"], KEY_BYTES, what="c_pk"),
            s_pk=_bin(m["s_pk"], KEY_BYTES, what="s_pk"),
            signature=_bin(m["sig"], SIG_BYTES, what="signature"),
        )


@dataclass(frozen=True)
class KeyRoster(_Message):
    """Phase 0, receiver -> clients: every signed key advertisement it collected (U1)."""

    KIND: ClassVar[str] = "keys"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"entries"})
    instance: InstanceId
    entries: tuple[AdvertiseKeys, ...]

    def _fields(self) -> dict[str, Any]:
        return {"entries": [e._fields() for e in self.entries]}

    @classmethod
    def _parse(cls, inst: InstanceId, m: dict[str, Any], lim: MessageLimits) -> KeyRoster:
        raw = m["entries"]
        if not isinstance(raw, list) or len(raw) > lim.max_contributors:
            raise MalformedMessage(f"entries must be a list of at most {lim.max_contributors}")
        entries = tuple(
            AdvertiseKeys._parse(inst, require_map(e, keys=_ENTRY, what="entry"), lim) for e in raw
        )
        if len({e.sender for e in entries}) != len(entries):
            raise MalformedMessage("a party appears twice in the key roster")
        return cls(instance=inst, entries=entries)


@dataclass(frozen=True)
class SharedKeys(_Message):
    """Phase 1, client -> receiver: shares encrypted to each co-neighbour in U1, and a
    commitment to the self-mask seed."""

    KIND: ClassVar[str] = "shares"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"sender", "commit", "cts"})
    instance: InstanceId
    sender: str
    commitment: bytes
    ciphertexts: Mapping[str, bytes]  # recipient -> ciphertext

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "commit": self.commitment, "cts": dict(self.ciphertexts)}

    @classmethod
    def _parse(cls, inst: InstanceId, m: dict[str, Any], lim: MessageLimits) -> SharedKeys:
        return cls(
            instance=inst,
            sender=_name(m["sender"], what="sender"),
            commitment=_bin(m["commit"], COMMIT_BYTES, what="commitment"),
            ciphertexts=_bin_map(m["cts"], CIPHERTEXT_BYTES, lim, what="ciphertexts"),
        )


@dataclass(frozen=True)
class ForwardedShares(_Message):
    """Phase 1, receiver -> client k: the ciphertexts addressed to k, keyed by their author
    (U2 = the authors and k)."""

    KIND: ClassVar[str] = "forward"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"cts"})
    instance: InstanceId
    ciphertexts: Mapping[str, bytes]  # author -> ciphertext

    def _fields(self) -> dict[str, Any]:
        return {"cts": dict(self.ciphertexts)}

    @classmethod
    def _parse(cls, inst: InstanceId, m: dict[str, Any], lim: MessageLimits) -> ForwardedShares:
        return cls(inst, _bin_map(m["cts"], CIPHERTEXT_BYTES, lim, what="ciphertexts"))


@dataclass(frozen=True)
class MaskedInput(_Message):
    """Phase 2, client -> receiver: the masked fixed-point vector."""

    KIND: ClassVar[str] = "masked"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"sender", "y"})
    instance: InstanceId
    sender: str
    masked: bytes

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "y": self.masked}

    @classmethod
    def _parse(cls, inst: InstanceId, m: dict[str, Any], lim: MessageLimits) -> MaskedInput:
        return cls(
            instance=inst,
            sender=_name(m["sender"], what="sender"),
            masked=_bin(m["y"], lim.masked_bytes, what="masked vector"),
        )


@dataclass(frozen=True)
class SurvivorList(_Message):
    """Phase 3, receiver -> clients: who sent a masked input in time (U3), sorted."""

    KIND: ClassVar[str] = "survivors"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"names"})
    instance: InstanceId
    survivors: tuple[str, ...]

    def _fields(self) -> dict[str, Any]:
        return {"names": list(self.survivors)}

    @classmethod
    def _parse(cls, inst: InstanceId, m: dict[str, Any], lim: MessageLimits) -> SurvivorList:
        return cls(inst, _names(m["names"], lim, what="survivors"))


@dataclass(frozen=True)
class ListSignature(_Message):
    """Phase 3, client -> receiver: its Ed25519 signature over (instance, U3)."""

    KIND: ClassVar[str] = "listsig"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"sender", "sig"})
    instance: InstanceId
    sender: str
    signature: bytes

    def _fields(self) -> dict[str, Any]:
        return {"sender": self.sender, "sig": self.signature}

    @classmethod
    def _parse(cls, inst: InstanceId, m: dict[str, Any], lim: MessageLimits) -> ListSignature:
        return cls(
            instance=inst,
            sender=_name(m["sender"], what="sender"),
            signature=_bin(m["sig"], SIG_BYTES, what="signature"),
        )


@dataclass(frozen=True)
class SignedSurvivors(_Message):
    """Phase 3, receiver -> clients: U3 and the signatures it collected over it."""

    KIND: ClassVar[str] = "signed"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"names", "sigs"})
    instance: InstanceId
    survivors: tuple[str, ...]
    signatures: Mapping[str, bytes]

    def _fields(self) -> dict[str, Any]:
        return {"names": list(self.survivors), "sigs": dict(self.signatures)}

    @classmethod
    def _parse(cls, inst: InstanceId, m: dict[str, Any], lim: MessageLimits) -> SignedSurvivors:
        return cls(
            instance=inst,
            survivors=_names(m["names"], lim, what="survivors"),
            signatures=_bin_map(m["sigs"], SIG_BYTES, lim, what="signatures"),
        )


@dataclass(frozen=True)
class UnmaskShares(_Message):
    """Phase 4, client -> receiver: shares of the mask keys of the dropped (U2 minus U3) and
    of the self-mask seeds of the survivors (U3) -- never both kinds for one party."""

    KIND: ClassVar[str] = "unmask"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"sender", "pair", "self"})
    instance: InstanceId
    sender: str
    pair_shares: Mapping[str, bytes]  # dropped party -> share of its s secret key
    self_shares: Mapping[str, bytes]  # survivor -> share of its self-mask seed

    def _fields(self) -> dict[str, Any]:
        return {
            "sender": self.sender,
            "pair": dict(self.pair_shares),
            "self": dict(self.self_shares),
        }

    @classmethod
    def _parse(cls, inst: InstanceId, m: dict[str, Any], lim: MessageLimits) -> UnmaskShares:
        pair = _bin_map(m["pair"], SHARE_BYTES, lim, what="pair shares")
        own = _bin_map(m["self"], SHARE_BYTES, lim, what="self shares")
        if set(pair) & set(own):
            raise MalformedMessage("both kinds of share for one party")
        for party, share in [*pair.items(), *own.items()]:
            share_from_bytes(share, what=f"share of {party!r}")
        return cls(inst, _name(m["sender"], what="sender"), pair, own)


Message = (
    AdvertiseKeys
    | KeyRoster
    | SharedKeys
    | ForwardedShares
    | MaskedInput
    | SurvivorList
    | ListSignature
    | SignedSurvivors
    | UnmaskShares
)
_KINDS: dict[str, Any] = {
    c.KIND: c
    for c in (
        AdvertiseKeys,
        KeyRoster,
        SharedKeys,
        ForwardedShares,
        MaskedInput,
        SurvivorList,
        ListSignature,
        SignedSurvivors,
        UnmaskShares,
    )
}


def decode_message(data: bytes, *, limits: MessageLimits) -> Message:
    """Parse one message under hard limits; every failure is a MalformedMessage."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage("a secure-aggregation message must be bytes")
    if len(data) > limits.max_bytes:
        raise MalformedMessage(f"message of {len(data)} bytes exceeds {limits.max_bytes}")
    n = limits.max_contributors
    try:
        obj = unpack_bounded(
            bytes(data),
            max_bin=max(limits.masked_bytes, CIPHERTEXT_BYTES),
            max_str=max(MAX_NAME_LEN, 16),
            max_array=n,
            max_map=max(n, 8),
            max_items=64 + 16 * n,
            what="secure-aggregation message",
        )
        if not isinstance(obj, dict) or not set(obj) >= _HEAD:
            raise MalformedMessage("a secure-aggregation message is a map with v, kind, inst")
        if obj["v"] != VERSION or type(obj["v"]) is not int:
            raise MalformedMessage(f"unsupported secure-aggregation version {obj['v']!r:.20}")
        cls = _KINDS.get(obj["kind"]) if isinstance(obj["kind"], str) else None
        if cls is None:
            raise MalformedMessage(f"unknown message kind {str(obj['kind'])[:20]!r}")
        require_map(obj, keys=_HEAD | cls.FIELDS, what=f"{cls.KIND} message")
        message: Message = cls._parse(_instance(obj["inst"]), obj, limits)
        return message
    except MalformedMessage:
        raise
    except WireError as exc:  # unpack_bounded / require_* speak the envelope's errors
        raise MalformedMessage(str(exc)) from exc
