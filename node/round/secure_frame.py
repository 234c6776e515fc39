"""Secure-aggregation messages on a site's transport: one signed frame per message.

    frame = MAGIC | len(sender) (1 byte) | sender | Ed25519 signature (64) | body

The body is one gossipmed.mixing.secagg message (msgpack, never pickle). The signature is the
sender's long-term roster key over a domain tag, the roster hash, sender, recipient and the
body, so a frame is useless to anyone but its recipient and under any other consortium file.
Replays are refused by the protocol itself: every message is bound to its instance (roster,
receiver, round, exchange), the state machines accept one message per party and phase, and
an instance is never run twice (ContributionGuard).

The frame is checked in order of cost: total length (before anything is parsed), the
sender's name and membership, the signature, then the body under the bounded parser.
"""

from __future__ import annotations

from collections.abc import Mapping

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gossipmed.mixing.secagg import MalformedMessage, Message, MessageLimits, decode_message
from gossipmed.mixing.secagg.params import MAX_NAME_LEN, valid_name

MAGIC = b"GMSA"
SIGNATURE_BYTES = 64
_DOMAIN = b"gossipmed/secagg/frame/v1"
FRAME_OVERHEAD = len(MAGIC) + 1 + MAX_NAME_LEN + SIGNATURE_BYTES


def is_frame(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def _transcript(roster_hash: bytes, sender: str, recipient: str, body: bytes) -> bytes:
    s, r = sender.encode(), recipient.encode()
    return b"".join(
        (_DOMAIN, roster_hash, len(s).to_bytes(1, "big"), s, len(r).to_bytes(1, "big"), r, body)
    )


def seal_frame(
    message: Message, *, sender: str, recipient: str, roster_hash: bytes, key: SigningKey
) -> bytes:
    body = message.to_bytes()
    name = sender.encode()
    signature = key.sign(_transcript(roster_hash, sender, recipient, body)).signature
    return b"".join((MAGIC, len(name).to_bytes(1, "big"), name, signature, body))


def open_frame(
    data: bytes,
    *,
    recipient: str,
    roster_hash: bytes,
    sign_keys: Mapping[str, bytes],
    limits: MessageLimits,
) -> tuple[str, Message]:
    """(authenticated sender, message), or MalformedMessage with the reason."""
    if len(data) > limits.max_bytes + FRAME_OVERHEAD:
        raise MalformedMessage(f"frame of {len(data)} bytes exceeds the secure-aggregation limit")
    if not is_frame(data) or len(data) < len(MAGIC) + 1:
        raise MalformedMessage("not a secure-aggregation frame")
    at = len(MAGIC)
    size = data[at]
    try:
        sender = data[at + 1 : at + 1 + size].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedMessage("frame sender is not a site name") from None
    if not valid_name(sender) or sender not in sign_keys:
        raise MalformedMessage(f"frame from {sender[:64]!r}, not a member")
    at += 1 + size
    signature, body = data[at : at + SIGNATURE_BYTES], data[at + SIGNATURE_BYTES :]
    if len(signature) != SIGNATURE_BYTES:
        raise MalformedMessage("frame is truncated")
    try:
        VerifyKey(sign_keys[sender]).verify(
            _transcript(roster_hash, sender, recipient, body), signature
        )
    except BadSignatureError:
        raise MalformedMessage(f"bad frame signature (claimed sender {sender!r})") from None
    return sender, decode_message(body, limits=limits)
