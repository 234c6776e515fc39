"""Signed, encrypted, replay-proof update envelopes: the only thing sites send each other.

Wire format (msgpack map, never pickle):
    {"h": header bytes, "c": ciphertext, "s": Ed25519 signature}
    header = msgpack {"v", "sender", "recipient", "round", "ts", "codec", "size", "roster"}
The payload (wire.encode_payload) is encrypted to the recipient with a NaCl Box; the sender
signs DOMAIN || header bytes || BLAKE2b-256(ciphertext). Signing the digest rather than the
ciphertext keeps Ed25519 (slow over MiBs) off the bulk bytes; the header is signed as the
exact bytes received, so no canonical re-encoding is needed.

Opening checks run cheapest-and-least-trusting first; each failure has its own error type
(see gossipmed.wire and gossipmed.roster) and the replay state moves only on success.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import torch
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import Box, PublicKey
from nacl.signing import VerifyKey

import gossipmed.codecs  # noqa: F401  (registers the fp16/bf16/int8/topk codecs by name)
from gossipmed.audit import ACCEPTED, REJECTED, AuditLog, payload_hash
from gossipmed.crypto import Identity
from gossipmed.errors import GossipmedError, WireError
from gossipmed.roster import (
    ROSTER_HASH_BYTES,
    NotAMember,
    RevokedMember,
    Roster,
    RosterError,
    RosterMismatch,
)
from gossipmed.wire import (
    BadSignature,
    DecryptionFailed,
    EnvelopeTooLarge,
    MalformedEnvelope,
    ReplayedRound,
    StaleRound,
    TensorSpec,
    TimestampOutOfWindow,
    UnknownCodec,
    UnsupportedVersion,
    WrongRecipient,
    decode_payload,
    encode_payload,
    get_codec,
    normalise_schema,
    require_int,
    require_map,
    unpack_bounded,
)

PROTOCOL_VERSION = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_SKEW_S = 600.0
SIGNATURE_BYTES = 64
BOX_OVERHEAD = Box.NONCE_SIZE + 16  # nonce + Poly1305 tag
MAX_HEADER_BYTES = 1024
DOMAIN = b"gossipmed/envelope/v1\x00"
_CT_PERSON = b"gossipmed-ct"
_OUTER_KEYS = frozenset({"h", "c", "s"})
_HEADER_KEYS = frozenset({"v", "sender", "recipient", "round", "ts", "codec", "size", "roster"})

__all__ = [
    "BadSignature",
    "DecryptionFailed",
    "EnvelopeSealer",
    "EnvelopeTooLarge",
    "MalformedEnvelope",
    "NotAMember",
    "ReplayGuard",
    "ReplayedRound",
    "RevokedMember",
    "RosterMismatch",
    "StaleRound",
    "TimestampOutOfWindow",
    "UnknownCodec",
    "UnsupportedVersion",
    "Update",
    "WrongRecipient",
]


@dataclass(frozen=True)
class Update:
    """An authenticated, decrypted, schema-checked adapter update from one neighbour."""

    sender: str
    recipient: str
    round: int
    tensors: dict[str, torch.Tensor]
    n_examples: int
    epsilon: float
    sent_at: float = 0.0


class ReplayGuard:
    """Highest round accepted per sender; exactly one envelope per (sender, round) gets in."""

    def __init__(self, last_round: Mapping[str, int] | None = None) -> None:
        self._last: dict[str, int] = dict(last_round or {})

    def check(self, sender: str, round: int) -> None:
        last = self._last.get(sender)
        if last is None:
            return
        if round == last:
            raise ReplayedRound(f"round {round} from {sender!r} was already accepted")
        if round < last:
            raise StaleRound(f"round {round} from {sender!r} is older than accepted round {last}")

    def accept(self, sender: str, round: int) -> None:
        self.check(sender, round)
        self._last[sender] = round

    def last_round(self, sender: str) -> int | None:
        return self._last.get(sender)

    def to_dict(self) -> dict[str, Any]:
        return {"v": 1, "last_round": dict(sorted(self._last.items()))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplayGuard:
        last = data.get("last_round") if isinstance(data, Mapping) else None
        if data.get("v") != 1 or not isinstance(last, dict):
            raise WireError("replay-guard state must be {'v': 1, 'last_round': {name: round}}")
        for k, v in last.items():
            if not isinstance(k, str) or type(v) is not int or v < 0:
                raise WireError(f"replay-guard state: bad entry {k!r}: {v!r}")
        return cls(last)


def _ciphertext_digest(ct: bytes) -> bytes:
    return hashlib.blake2b(ct, digest_size=32, person=_CT_PERSON).digest()


def _signed_message(header: bytes, ct: bytes) -> bytes:
    return DOMAIN + header + _ciphertext_digest(ct)


@dataclass(frozen=True)
class _Header:
    sender: str
    recipient: str
    round: int
    ts: float
    codec: str
    size: int
    roster: bytes
    version: int


def _parse(
    data: bytes, *, max_bytes: int, claimed: dict[str, Any]
) -> tuple[_Header, bytes, bytes, bytes]:
    """Steps 1-2: size, then structure and types of the outer map and the header."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEnvelope("envelope must be bytes")
    if len(data) > max_bytes:
        raise EnvelopeTooLarge(f"envelope of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    outer = unpack_bounded(
        bytes(data),
        max_bin=max_bytes,
        max_str=8,
        max_array=0,
        max_map=len(_OUTER_KEYS),
        max_items=8,
        what="envelope",
    )
    outer = require_map(outer, keys=_OUTER_KEYS, what="envelope")
    hbytes, ct, sig = outer["h"], outer["c"], outer["s"]
    if not isinstance(hbytes, bytes) or len(hbytes) > MAX_HEADER_BYTES:
        raise MalformedEnvelope(f"header must be at most {MAX_HEADER_BYTES} bytes")
    if not isinstance(ct, bytes) or not isinstance(sig, bytes) or len(sig) != SIGNATURE_BYTES:
        raise MalformedEnvelope("ciphertext must be bytes and signature 64 bytes")
    raw = unpack_bounded(
        hbytes,
        max_bin=ROSTER_HASH_BYTES,
        max_str=128,
        max_array=0,
        max_map=len(_HEADER_KEYS),
        max_items=16,
        what="header",
    )
    h = require_map(raw, keys=_HEADER_KEYS, what="header")
    for key in ("sender", "recipient", "codec"):
        if not isinstance(h[key], str):
            raise MalformedEnvelope(f"header {key} must be a string")
    claimed["sender"] = h["sender"]
    version = require_int(h["v"], what="header v")
    rnd = require_int(h["round"], what="header round")
    claimed["round"] = rnd
    size = require_int(h["size"], what="header size", hi=max_bytes)
    if type(h["ts"]) is not float or not math.isfinite(h["ts"]):
        raise MalformedEnvelope("header ts must be a finite float")
    if not isinstance(h["roster"], bytes) or len(h["roster"]) != ROSTER_HASH_BYTES:
        raise MalformedEnvelope(f"header roster must be a {ROSTER_HASH_BYTES}-byte hash")
    if len(ct) != size + BOX_OVERHEAD:
        raise MalformedEnvelope(
            f"ciphertext is {len(ct)} bytes but the header promises {size} + {BOX_OVERHEAD}"
        )
    header = _Header(
        sender=h["sender"],
        recipient=h["recipient"],
        round=rnd,
        ts=h["ts"],
        codec=h["codec"],
        size=size,
        roster=h["roster"],
        version=version,
    )
    return header, hbytes, ct, sig


def _decrypt(box: Box, ct: bytes, *, size: int, sender: str) -> bytes:
    try:
        plaintext = bytes(box.decrypt(ct))
    except CryptoError as exc:
        raise DecryptionFailed(f"ciphertext from {sender!r} does not decrypt") from exc
    if len(plaintext) != size:  # only a sender running other code could cause this
        raise DecryptionFailed("decrypted payload size differs from the header")
    return plaintext


class EnvelopeSealer:
    """One site's sealing and opening state: its keys, the roster, and the replay guard."""

    def __init__(
        self,
        *,
        identity: Identity,
        roster: Roster,
        clock: Callable[[], float] = time.time,
        max_bytes: int = DEFAULT_MAX_BYTES,
        skew_s: float = DEFAULT_SKEW_S,
        replay_guard: ReplayGuard | None = None,
        codec: str = "raw",
    ) -> None:
        if max_bytes <= 0 or skew_s < 0:
            raise WireError("max_bytes must be positive and skew_s non-negative")
        self.identity = identity
        self.clock = clock
        self.max_bytes = max_bytes
        self.skew_s = skew_s
        self.replay_guard = replay_guard if replay_guard is not None else ReplayGuard()
        get_codec(codec)
        self.codec = codec
        self._roster = roster
        self.name = self._my_name(roster)
        self._boxes: dict[tuple[str, bytes], Box] = {}
        self._verify_keys: dict[tuple[str, bytes], VerifyKey] = {}

    def _my_name(self, roster: Roster) -> str:
        peer_id = self.identity.peer_id
        for m in roster.members:
            if m.peer_id == peer_id:
                if m.revoked:
                    raise RevokedMember(f"this site ({m.name}) is revoked in the roster")
                if m.box_key != self.identity.box_key:
                    raise RosterError(f"roster box_key for {m.name} is not this site's key")
                return m.name
        raise NotAMember(f"this site's peer ID {peer_id} is not in the roster")

    @property
    def roster(self) -> Roster:
        return self._roster

    def set_roster(self, roster: Roster) -> None:
        """Adopt a new roster (e.g. after a revocation); replay state carries over."""
        self.name = self._my_name(roster)
        self._roster = roster
        self._boxes.clear()
        self._verify_keys.clear()

    def _box(self, name: str, box_key: bytes) -> Box:
        key = (name, box_key)
        box = self._boxes.get(key)
        if box is None:
            box = Box(self.identity.box_private_key, PublicKey(box_key))
            self._boxes[key] = box
        return box

    def _verify_key(self, name: str, sign_key: bytes) -> VerifyKey:
        key = (name, sign_key)
        vk = self._verify_keys.get(key)
        if vk is None:
            vk = VerifyKey(sign_key)
            self._verify_keys[key] = vk
        return vk

    # --- sealing -------------------------------------------------------------------------

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

    def seal_many(
        self,
        *,
        update_tensors: Mapping[str, torch.Tensor],
        round: int,
        recipients: Sequence[str],
        n_examples: int,
        epsilon: float,
    ) -> dict[str, bytes]:
        """Encode once, encrypt and sign per recipient (the usual case: all neighbours)."""
        require_int(round, what="round")
        payload = encode_payload(
            update_tensors, n_examples=n_examples, epsilon=epsilon, codec=self.codec
        )
        if len(payload) + BOX_OVERHEAD + MAX_HEADER_BYTES + 16 + SIGNATURE_BYTES > self.max_bytes:
            raise EnvelopeTooLarge(
                f"payload of {len(payload)} bytes does not fit the {self.max_bytes}-byte limit"
            )
        out = {}
        for recipient in recipients:
            if recipient == self.name:
                raise WireError("a site does not send updates to itself")
            member = self._roster.active_member(recipient)
            ct = bytes(self._box(recipient, member.box_key).encrypt(payload))
            header = msgpack.packb(
                {
                    "v": PROTOCOL_VERSION,
                    "sender": self.name,
                    "recipient": recipient,
                    "round": round,
                    "ts": float(self.clock()),
                    "codec": self.codec,
                    "size": len(payload),
                    "roster": self._roster.hash,
                },
                use_bin_type=True,
            )
            sig = self.identity.sign(_signed_message(header, ct))
            out[recipient] = msgpack.packb({"h": header, "c": ct, "s": sig}, use_bin_type=True)
        return out

    # --- opening -------------------------------------------------------------------------

    def open(
        self,
        data: bytes,
        *,
        expected_schema: Mapping[str, tuple[Any, Any]],
        audit: AuditLog | None = None,
    ) -> Update:
        """Verify, decrypt and decode; raises a typed GossipmedError on any problem. With
        `audit`, the outcome (accept or the rejection reason) is logged either way."""
        claimed: dict[str, Any] = {}
        try:
            update = self._open(data, expected_schema=expected_schema, claimed=claimed)
        except GossipmedError as exc:
            if audit is not None:
                audit.record(
                    outcome=REJECTED,
                    reason=str(exc),
                    error=type(exc).__name__,
                    sender=claimed.get("sender"),
                    round=claimed.get("round"),
                    payload_hash=payload_hash(bytes(data)) if isinstance(data, bytes) else "",
                    size=len(data) if isinstance(data, bytes) else None,
                )
            raise
        if audit is not None:
            audit.record(
                outcome=ACCEPTED,
                reason="ok",
                sender=update.sender,
                round=update.round,
                payload_hash=payload_hash(data),
                size=len(data),
            )
        return update

    def _open(
        self,
        data: bytes,
        *,
        expected_schema: Mapping[str, tuple[Any, Any]],
        claimed: dict[str, Any],
    ) -> Update:
        expected: dict[str, TensorSpec] = normalise_schema(expected_schema)
        # 1-2. size, structure and types
        header, hbytes, ct, sig = _parse(data, max_bytes=self.max_bytes, claimed=claimed)
        # 3. protocol version (and a codec we know)
        if header.version != PROTOCOL_VERSION:
            raise UnsupportedVersion(
                f"protocol version {header.version}, this site speaks {PROTOCOL_VERSION}"
            )
        get_codec(header.codec)  # UnknownCodec
        # 4. same roster
        if header.roster != self._roster.hash:
            raise RosterMismatch(
                f"envelope was made under roster {header.roster.hex()[:16]}..., this site uses "
                f"{self._roster.hash_hex[:16]}...; both sites need the same consortium file"
            )
        # 5. membership and revocation
        member = self._roster.active_member(header.sender)
        # 6. addressed to me
        if header.recipient != self.name:
            raise WrongRecipient(f"envelope is for {header.recipient[:64]!r}, not {self.name!r}")
        # 7. signature
        try:
            self._verify_key(member.name, member.sign_key).verify(_signed_message(hbytes, ct), sig)
        except BadSignatureError as exc:
            raise BadSignature(f"signature from {member.name!r} does not verify") from exc
        # 8. freshness
        self.replay_guard.check(header.sender, header.round)
        now = float(self.clock())
        if abs(now - header.ts) > self.skew_s:
            raise TimestampOutOfWindow(
                f"timestamp is {header.ts - now:+.0f} s from this site's clock "
                f"(window +-{self.skew_s:.0f} s)"
            )
        # 9-10. decryption, then the payload schema. The plaintext is passed without keeping
        # a name for it here, so decode_payload can free it once parsed.
        box = self._box(member.name, member.box_key)
        payload = decode_payload(
            _decrypt(box, ct, size=header.size, sender=member.name),
            codec=header.codec,
            expected=expected,
            max_bytes=self.max_bytes,
        )
        self.replay_guard.accept(header.sender, header.round)
        return Update(
            sender=header.sender,
            recipient=header.recipient,
            round=header.round,
            tensors=payload.tensors,
            n_examples=payload.n_examples,
            epsilon=payload.epsilon,
            sent_at=header.ts,
        )
