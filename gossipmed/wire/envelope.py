"""Signed, encrypted, replay-proof update envelopes: the only thing sites send each other.

The payload (wire.encode_payload, in the codec the caller chose) is encrypted to the
recipient with a NaCl Box and signed by the sender (format: gossipmed.wire.envelope_format).
Opening checks run cheapest-and-least-trusting first; each failure has its own error type
(see gossipmed.wire.tensors and gossipmed.consortium.roster) and the replay state moves only
when the update is accepted -- by this sealer, and by the caller's `admit` check when it
passes one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack
import torch
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import Box, PublicKey
from nacl.signing import VerifyKey

import gossipmed.wire.codecs  # noqa: F401  (registers the fp16/bf16/int8/topk codecs by name)
from gossipmed.consortium.audit import ACCEPTED, REJECTED, AuditLog, payload_hash
from gossipmed.consortium.crypto import Identity
from gossipmed.consortium.roster import (
    NotAMember,
    RevokedMember,
    Roster,
    RosterError,
    RosterMismatch,
)
from gossipmed.errors import GossipmedError, WireError
from gossipmed.wire.envelope_format import (
    BOX_OVERHEAD,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    SIGNATURE_BYTES,
    Parsed,
    parse,
    signed_message,
)
from gossipmed.wire.replay import ReplayGuard
from gossipmed.wire.tensors import (
    BadSignature,
    DecryptionFailed,
    EnvelopeTooLarge,
    TimestampOutOfWindow,
    WrongRecipient,
    decode_payload,
    encode_payload,
    get_codec,
    normalise_schema,
)
from gossipmed.wire.update import Admit, SealOne, Update, check_exchange

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_SKEW_S = 600.0


def _decrypt(box: Box, ct: bytes, *, size: int, sender: str) -> bytes:
    try:
        plaintext = bytes(box.decrypt(ct))
    except CryptoError as exc:
        raise DecryptionFailed(f"ciphertext from {sender!r} does not decrypt") from exc
    if len(plaintext) != size:  # only a sender running other code could cause this
        raise DecryptionFailed("decrypted payload size differs from the header")
    return plaintext


class EnvelopeSealer(SealOne):
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
    ) -> None:
        if max_bytes <= 0 or skew_s < 0:
            raise WireError("max_bytes must be positive and skew_s non-negative")
        self.identity = identity
        self.clock = clock
        self.max_bytes = max_bytes
        self.skew_s = skew_s
        self.replay_guard = replay_guard if replay_guard is not None else ReplayGuard()
        # derived once: a key derivation per envelope cost more than the signature itself
        self._signing_key = identity.signing_key
        self._box_private_key = identity.box_private_key
        self._roster = roster
        self.name = self._my_name(roster)
        self._boxes: dict[tuple[str, bytes], Box] = {}
        self._verify_keys: dict[tuple[str, bytes], VerifyKey] = {}

    def _my_name(self, roster: Roster) -> str:
        peer_id = self.identity.peer_id
        m = roster.member_by_peer_id(peer_id)
        if m is None:
            raise NotAMember(f"this site's peer ID {peer_id} is not in the roster")
        if m.revoked:
            raise RevokedMember(f"this site ({m.name}) is revoked in the roster")
        if m.box_key != bytes(self._box_private_key.public_key):
            raise RosterError(f"roster box_key for {m.name} is not this site's key")
        return m.name

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
            box = Box(self._box_private_key, PublicKey(box_key))
            self._boxes[key] = box
        return box

    def _verify_key(self, name: str, sign_key: bytes) -> VerifyKey:
        key = (name, sign_key)
        vk = self._verify_keys.get(key)
        if vk is None:
            vk = VerifyKey(sign_key)
            self._verify_keys[key] = vk
        return vk

    def state_dict(self) -> dict[str, Any] | None:
        return self.replay_guard.state_dict()

    def load_state_dict(self, state: Mapping[str, Any], *, schema: Any = None) -> None:
        self.replay_guard.load_state_dict(state)

    # --- sealing -------------------------------------------------------------------------

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
        """Encode once, encrypt and sign per recipient (the usual case: all neighbours)."""
        check_exchange(round, step)
        payload = encode_payload(update_tensors, epsilon=epsilon, codec=codec)
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
                    "step": step,
                    "ts": float(self.clock()),
                    "codec": codec,
                    "size": len(payload),
                    "roster": self._roster.hash,
                },
                use_bin_type=True,
            )
            sig = self._signing_key.sign(signed_message(header, ct)).signature
            out[recipient] = msgpack.packb({"h": header, "c": ct, "s": sig}, use_bin_type=True)
        return out

    # --- opening -------------------------------------------------------------------------

    def open(
        self,
        data: bytes,
        *,
        expected_schema: Mapping[str, tuple[Any, Any]],
        admit: Admit | None = None,
        audit: AuditLog | None = None,
    ) -> Update:
        """Verify, decrypt and decode; raises a typed GossipmedError on any problem. With
        `audit`, the outcome (accept or the rejection reason) is logged either way."""
        claimed: dict[str, Any] = {}
        try:
            update = self._open(data, expected_schema=expected_schema, admit=admit, claimed=claimed)
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
        admit: Admit | None,
        claimed: dict[str, Any],
    ) -> Update:
        expected = normalise_schema(expected_schema)
        # 1-3. size, structure and types, protocol version
        env = parse(data, max_bytes=self.max_bytes, claimed=claimed)
        header = env.header
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
        self._verify(env, member.name, member.sign_key)
        # 8. freshness
        self.replay_guard.check(header.sender, header.round, header.step)
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
            _decrypt(box, env.ciphertext, size=header.size, sender=member.name),
            codec=header.codec,
            expected=expected,
            max_bytes=self.max_bytes,
        )
        update = Update(
            sender=header.sender,
            recipient=header.recipient,
            round=header.round,
            step=header.step,
            codec=header.codec,
            tensors=payload.tensors,
            epsilon=payload.epsilon,
            sent_at=header.ts,
        )
        # 11. the caller's own admission (neighbour, round window, ...), then replay state
        if admit is not None:
            admit(update)
        self.replay_guard.accept(header.sender, header.round, header.step)
        return update

    def _verify(self, env: Parsed, name: str, sign_key: bytes) -> None:
        try:
            self._verify_key(name, sign_key).verify(
                signed_message(env.header_bytes, env.ciphertext), env.signature
            )
        except BadSignatureError as exc:
            raise BadSignature(f"signature from {name!r} does not verify") from exc


__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_SKEW_S", "EnvelopeSealer", "ReplayGuard", "Update"]
