"""The envelope's bytes: outer map, header, and what the signature covers.

    {"h": header bytes, "c": ciphertext, "s": Ed25519 signature}
    header = msgpack {"v", "sender", "recipient", "round", "step", "ts", "codec", "size",
                      "roster"}
    signature over DOMAIN || header bytes || BLAKE2b-256(ciphertext)

Signing the digest rather than the ciphertext keeps Ed25519 (slow over MiBs) off the bulk
bytes; the header is signed as the exact bytes received, so no canonical re-encoding is
needed. Version 2 carries the exchange as `(round, step)` and dropped the payload's batch
size; a version-1 envelope is refused by its version before anything else is read from it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from nacl.public import Box

from gossipmed.consortium.roster import ROSTER_HASH_BYTES
from gossipmed.wire.tensors import (
    EnvelopeTooLarge,
    MalformedEnvelope,
    UnsupportedVersion,
    require_int,
    require_map,
    unpack_bounded,
)
from gossipmed.wire.update import MAX_ROUND, MAX_STEPS_PER_ROUND

PROTOCOL_VERSION = 2
SIGNATURE_BYTES = 64
BOX_OVERHEAD = Box.NONCE_SIZE + 16  # nonce + Poly1305 tag
MAX_HEADER_BYTES = 1024
DOMAIN = b"gossipmed/envelope/v2\x00"
_CT_PERSON = b"gossipmed-ct"
OUTER_KEYS = frozenset({"h", "c", "s"})
HEADER_KEYS = frozenset(
    {"v", "sender", "recipient", "round", "step", "ts", "codec", "size", "roster"}
)


def ciphertext_digest(ct: bytes) -> bytes:
    return hashlib.blake2b(ct, digest_size=32, person=_CT_PERSON).digest()


def signed_message(header: bytes, ct: bytes) -> bytes:
    return DOMAIN + header + ciphertext_digest(ct)


@dataclass(frozen=True)
class Header:
    sender: str
    recipient: str
    round: int
    step: int
    ts: float
    codec: str
    size: int
    roster: bytes


@dataclass(frozen=True)
class Parsed:
    header: Header
    header_bytes: bytes
    ciphertext: bytes
    signature: bytes


def parse(data: bytes, *, max_bytes: int, claimed: dict[str, Any]) -> Parsed:
    """Size, then structure and types of the outer map and the header. `claimed` collects
    sender and round as soon as they are read, for the audit line of a rejection."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEnvelope("envelope must be bytes")
    if len(data) > max_bytes:
        raise EnvelopeTooLarge(f"envelope of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    outer = unpack_bounded(
        bytes(data),
        max_bin=max_bytes,
        max_str=8,
        max_array=0,
        max_map=len(OUTER_KEYS),
        max_items=8,
        what="envelope",
    )
    outer = require_map(outer, keys=OUTER_KEYS, what="envelope")
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
        max_map=len(HEADER_KEYS),
        max_items=16,
        what="header",
    )
    if not isinstance(raw, dict):
        raise MalformedEnvelope("header must be a map")
    version = raw.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise UnsupportedVersion(
            f"protocol version {str(version)[:12]}, this site speaks {PROTOCOL_VERSION} "
            "(every site of a consortium must run a gossipmed that speaks the same version)"
        )
    h = require_map(raw, keys=HEADER_KEYS, what="header")
    for key in ("sender", "recipient", "codec"):
        if not isinstance(h[key], str):
            raise MalformedEnvelope(f"header {key} must be a string")
    claimed["sender"] = h["sender"]
    rnd = require_int(h["round"], what="header round", hi=MAX_ROUND)
    claimed["round"] = rnd
    step = require_int(h["step"], what="header step", hi=MAX_STEPS_PER_ROUND - 1)
    size = require_int(h["size"], what="header size", hi=max_bytes)
    if type(h["ts"]) is not float or not math.isfinite(h["ts"]):
        raise MalformedEnvelope("header ts must be a finite float")
    if not isinstance(h["roster"], bytes) or len(h["roster"]) != ROSTER_HASH_BYTES:
        raise MalformedEnvelope(f"header roster must be a {ROSTER_HASH_BYTES}-byte hash")
    if len(ct) != size + BOX_OVERHEAD:
        raise MalformedEnvelope(
            f"ciphertext is {len(ct)} bytes but the header promises {size} + {BOX_OVERHEAD}"
        )
    header = Header(
        sender=h["sender"],
        recipient=h["recipient"],
        round=rnd,
        step=step,
        ts=h["ts"],
        codec=h["codec"],
        size=size,
        roster=h["roster"],
    )
    return Parsed(header=header, header_bytes=hbytes, ciphertext=ct, signature=sig)
